"""Bad-input corpus: every case is a real input (an AnnData, an ``.h5ad`` written to disk, a schema class, a
query) and must raise the most specific :mod:`lancell.errors` class with a message naming what and where,
leaving the atlas exactly as readers saw it (rows, table versions, snapshots, zarr groups), still valid and
still able to snapshot; a failed ingestion must not poison its dataset uid (a retry succeeds).

The inputs that look hostile but are legitimate (NaN in nullable columns, unicode and SQL metacharacters in
obs values, names and dataset uids, explicitly stored zeros) are stored and round-trip exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import visible_state
from lancedb.pydantic import Vector

from lancell import errors
from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import (
    DatasetRecord,
    FeatureBaseSchema,
    LancellBaseSchema,
    SparseZarrPointer,
)

GENES = [f"G{i}" for i in range(40)]
N_CELLS = 30


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class StrictCells(LancellBaseSchema):
    donor: str  # required: a missing donor is an error, not a null
    age: int | None = None
    cell_type: str | None = None
    score: float | None = None
    embedding: Vector(4) | None = None
    gene_expression: SparseZarrPointer | None = None


def good(seed: int = 0) -> ad.AnnData:
    """A valid 30-cell, 40-gene dataset (int32 counts, categorical obs, a 4-wide embedding)."""
    rng = np.random.default_rng(seed)
    x = sp.random(N_CELLS, len(GENES), density=0.3, format="csr", random_state=rng)
    x.data = rng.integers(1, 20, size=x.nnz).astype(np.float64)
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical(rng.choice(["d1", "d2"], N_CELLS)),
            "age": rng.integers(20, 80, N_CELLS),
            "cell_type": pd.Categorical(rng.choice(["T", "B", None], N_CELLS)),
        },
        index=[f"cell{i}" for i in range(N_CELLS)],
    )
    var = pd.DataFrame({"gene_symbol": [g.lower() for g in GENES]}, index=GENES)
    adata = ad.AnnData(X=x.astype(np.int32), obs=obs, var=var)
    adata.obsm["emb"] = rng.normal(size=(N_CELLS, 4)).astype(np.float32)
    return adata


def ingest(atlas: RaggedAtlas, data: ad.AnnData | Path, uid: str, **kwargs: object) -> DatasetRecord:
    kwargs = {"feature_space": "gene_expression", "zarr_layer": "counts", **kwargs}
    return add_from_anndata(atlas, data, dataset_record=DatasetRecord(uid=uid), progress=False, **kwargs)


def new_atlas(path: Path) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(path / "db"),
        "cells",
        StrictCells,
        store=str(path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES, "gene_symbol": GENES}))
    return atlas


@pytest.fixture(scope="module")
def corpus_atlas(tmp_path_factory: pytest.TempPathFactory) -> RaggedAtlas:
    """One dataset ("existing") and a snapshot; shared by every case, since no case may change it."""
    atlas = new_atlas(tmp_path_factory.mktemp("corpus"))
    ingest(atlas, good(seed=1), "existing", obsm_columns={"emb": "embedding"})
    atlas.snapshot()
    return atlas


# ------------------------------------------------------------------------------------------ case plumbing
@dataclass(frozen=True)
class Ctx:
    """What a case acts on: the shared atlas, a fresh folder, and a dataset uid no other case uses."""

    atlas: RaggedAtlas
    tmp: Path
    uid: str


@dataclass(frozen=True)
class Bad:
    """A bad input: ``act`` must raise exactly ``error`` whose message holds every needle (``{uid}``
    becomes the case's dataset uid). ``retry`` (for failures found while the matrix streams into a zarr
    group, i.e. after the first write) ingests a good dataset under the same uid afterwards."""

    act: Callable[[Ctx], object]
    error: type[errors.LancellError]
    needles: tuple[str, ...]
    retry: bool = False


Make = Callable[[Ctx], ad.AnnData | Path]


def bad_ingest(
    make: Make, error: type[errors.LancellError], *needles: str, retry: bool = False, **kwargs: object
) -> Bad:
    """An ingestion case; ``uid=`` in ``kwargs`` replaces the case's own dataset uid."""
    uid = kwargs.pop("uid", None)

    def act(ctx: Ctx) -> object:
        return ingest(ctx.atlas, make(ctx), ctx.uid if uid is None else uid, **kwargs)

    return Bad(act, error, needles, retry)


def streamed(make: Make, *needles: str, **kwargs: object) -> Bad:
    """A bad value found while the matrix streams into its zarr group: a :class:`DataValueError`, and a
    retry under the same uid must succeed."""
    return bad_ingest(make, errors.DataValueError, *needles, retry=True, **kwargs)


def mutated(mutate: Callable[[ad.AnnData], ad.AnnData | None]) -> Make:
    """A good dataset changed by ``mutate`` (in place, or returning a replacement)."""

    def make(ctx: Ctx) -> ad.AnnData:
        adata = good()
        out = mutate(adata)
        return adata if out is None else out

    return make


def set_obs(column: str, values: object) -> Make:
    return mutated(lambda a: a.obs.__setitem__(column, values))


def set_x(transform: Callable[[sp.csr_matrix], object]) -> Make:
    return mutated(lambda a: setattr(a, "X", transform(a.X)))


def h5ad(edit: Callable[[h5py.File], None] | None = None, *, csc: bool = False) -> Make:
    """A good dataset written to ``input.h5ad`` (X as CSC if asked), then edited with h5py."""

    def make(ctx: Ctx) -> Path:
        adata = good()
        if csc:
            adata.X = sp.csc_matrix(adata.X)
        path = ctx.tmp / "input.h5ad"
        adata.write_h5ad(path)
        if edit is not None:
            with h5py.File(path, "r+") as f:
                edit(f)
        return path

    return make


def raw_file(name: str, content: bytes | None) -> Make:
    """A file of ``content`` named ``name`` (a directory when ``content`` is None)."""

    def make(ctx: Ctx) -> Path:
        path = ctx.tmp / name
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        return path

    return make


def truncated(ctx: Ctx) -> Path:
    path = h5ad()(ctx)
    cut = ctx.tmp / "truncated.h5ad"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cut


def replace(f: h5py.File, name: str, values: np.ndarray) -> None:
    attrs = dict(f[name].attrs)
    del f[name]
    f[name] = values
    f[name].attrs.update(attrs)


def drop_last_row(f: h5py.File) -> None:
    """X keeps 30 rows while obs says 29 is impossible in h5ad; so X loses its last row instead."""
    f["X"].attrs["shape"] = np.array([N_CELLS - 1, len(GENES)])
    replace(f, "X/indptr", f["X/indptr"][:-1])
    for name in ("X/indices", "X/data"):  # the 29 rows' values, no more
        replace(f, name, f[name][: f["X/indptr"][-1]])


def drop_last_var(f: h5py.File) -> None:
    for column in ("_index", "gene_symbol"):
        replace(f, f"var/{column}", f[f"var/{column}"][:-1])


def column_index_999(f: h5py.File) -> None:
    indices = f["X/indices"][:]
    indices[5] = 999
    f["X/indices"][:] = indices


def falling_indptr(indptr: np.ndarray) -> np.ndarray:
    """Row 3's offsets run backwards (row 3 would hold a negative number of values)."""
    indptr = indptr.copy()
    indptr[4] = indptr[3] - 1
    return indptr


def short_indptr_end(f: h5py.File) -> None:
    indptr = f["X/indptr"][:]
    indptr[-1] -= 1  # the last stored value belongs to no row
    f["X/indptr"][:] = indptr


def repeat_first_index(x: sp.csr_matrix) -> sp.csr_matrix:
    x = x.copy()
    x.indices[1] = x.indices[0]  # row 0 names one gene twice
    return sp.csr_matrix((x.data, x.indices, x.indptr), shape=x.shape)


def with_value(x: sp.csr_matrix, value: float, dtype: type = np.float64) -> sp.csr_matrix:
    x = x.astype(dtype)
    x.data[3] = value
    return x


def checkout(ctx: Ctx) -> RaggedAtlas:
    return RaggedAtlas.checkout_latest(ctx.atlas.db_uri)


def create(cell_schema: type[LancellBaseSchema], **kwargs: object) -> Callable[[Ctx], object]:
    """Create a second atlas next to the shared one (``registry_schemas`` defaults to gene_expression)."""

    def act(ctx: Ctx) -> object:
        registries = kwargs.get("registry_schemas", {"gene_expression": Gene})
        return RaggedAtlas.create(str(ctx.tmp / "other"), "cells", cell_schema, registry_schemas=registries)

    return act


def register(features: object, space: str = "gene_expression") -> Callable[[Ctx], object]:
    return lambda ctx: ctx.atlas.register_features(space, features)


def query(build: Callable[[RaggedAtlas], object]) -> Callable[[Ctx], object]:
    return lambda ctx: build(ctx.atlas)


class DictCells(LancellBaseSchema):
    meta: dict
    gene_expression: SparseZarrPointer | None = None


class RequiredPointerCells(LancellBaseSchema):
    gene_expression: SparseZarrPointer


class IntUidCells(LancellBaseSchema):
    uid: int
    gene_expression: SparseZarrPointer | None = None


OE = errors.ObsConversionError
DV = errors.DataValueError
IE = errors.IngestError
QE = errors.QueryError

CASES: dict[str, Bad] = {
    # obs -> Arrow
    "nan in a required categorical obs column": bad_ingest(
        set_obs("donor", pd.Categorical(["d1"] * (N_CELLS - 1) + [np.nan])),
        OE,
        "{uid}",
        "'donor'",
        "'cell29'",
        "not nullable",
    ),
    "fractional value in an integer obs column": bad_ingest(
        set_obs("age", [1.5] * N_CELLS), OE, "{uid}", "'age'", "non-integer", "1.5"
    ),
    "text in an integer obs column": bad_ingest(set_obs("age", ["old"] * N_CELLS), OE, "'age'", "'old'"),
    "integer obs value beyond int64": bad_ingest(
        set_obs(
            "age", pd.Series([2**70] * N_CELLS, dtype=object, index=[f"cell{i}" for i in range(N_CELLS)])
        ),
        OE,
        "'age'",
        "range",
        "'cell0'",
    ),
    "datetimes in an integer obs column": bad_ingest(
        set_obs("age", pd.date_range("2020-01-01", periods=N_CELLS).to_numpy()), OE, "'age'", "datetime"
    ),
    "booleans in an integer obs column": bad_ingest(set_obs("age", [True] * N_CELLS), OE, "'age'", "boolean"),
    "text in a float obs column": bad_ingest(set_obs("score", ["high"] * N_CELLS), OE, "'score'", "'high'"),
    "required obs column missing": bad_ingest(
        mutated(lambda a: a.obs.drop(columns=["donor"], inplace=True)), OE, "{uid}", "'donor'", "absent"
    ),
    "obs column appearing twice": bad_ingest(
        mutated(lambda a: ad.AnnData(X=a.X, obs=pd.concat([a.obs, a.obs[["donor"]]], axis=1), var=a.var)),
        OE,
        "'donor'",
        "2 columns",
    ),
    "duplicate obs names": bad_ingest(
        mutated(lambda a: setattr(a, "obs_names", ["same"] * N_CELLS)), IE, "{uid}", "'same'"
    ),
    # names equal only as text became two cells of one uid: validate() and snapshot() then failed
    "obs names equal as text": bad_ingest(
        mutated(lambda a: a.obs.set_index(pd.Index([1, "1", *a.obs_names[2:]], dtype=object), inplace=True)),
        IE,
        "{uid}",
        "duplicate obs names ['1']",
    ),
    "a missing obs name": bad_ingest(
        mutated(lambda a: a.obs.set_index(pd.Index([None, *a.obs_names[1:]], dtype=object), inplace=True)),
        IE,
        "{uid}",
        "1 cells have no obs name",
        "row 0",
    ),
    # the content fingerprint digests the names NUL-separated: ["a\0b", "c"] and ["a", "b\0c"] collided
    "an obs name holding NUL": bad_ingest(
        mutated(lambda a: setattr(a, "obs_names", ["a\0b", *a.obs_names[1:]])), IE, "{uid}", "NUL", "row 0"
    ),
    # bytes that are not UTF-8 decoded with surrogateescape: a bare UnicodeEncodeError after the matrix write
    "an obs name UTF-8 cannot write": bad_ingest(
        mutated(lambda a: setattr(a, "obs_names", [*a.obs_names[:2], "AC\udcff-1", *a.obs_names[3:]])),
        IE,
        "{uid}",
        "UTF-8 cannot write",
        "row 2",
    ),
    # features
    "duplicate gene ids": bad_ingest(
        mutated(lambda a: setattr(a, "var_names", [*GENES[:-1], GENES[0]])),
        errors.DuplicateFeaturesError,
        "{uid}",
        "'G0'",
    ),
    "genes missing from the registry": bad_ingest(
        mutated(lambda a: setattr(a, "var_names", [*GENES[:-2], "NOT_A_GENE", "ALSO_NOT"])),
        errors.UnknownFeaturesError,
        "{uid}",
        "'gene_expression'",
        "'NOT_A_GENE'",
    ),
    "var uid column missing": bad_ingest(
        mutated(lambda a: None), IE, "{uid}", "'ensembl'", var_uid_column="ensembl"
    ),
    "var uid column holding NaN": bad_ingest(
        mutated(lambda a: a.var.__setitem__("ensembl", [None] * len(GENES))),
        IE,
        "{uid}",
        "'ensembl'",
        "NaN",
        var_uid_column="ensembl",
    ),
    "zero-gene dataset": bad_ingest(mutated(lambda a: a[:, :0].copy()), IE, "{uid}", "no features"),
    "wrong feature space": bad_ingest(
        mutated(lambda a: None), errors.FeatureSpaceError, "'atac'", "gene_expression", feature_space="atac"
    ),
    "layer name the feature space does not allow": bad_ingest(
        mutated(lambda a: None),
        errors.FeatureSpaceError,
        "'spliced'",
        "'gene_expression'",
        zarr_layer="spliced",
    ),
    "input layer not in adata.layers": bad_ingest(
        mutated(lambda a: None), IE, "{uid}", "'raw_counts'", source_layer="raw_counts"
    ),
    # shapes
    "empty dataset (0 cells)": bad_ingest(mutated(lambda a: a[:0].copy()), IE, "{uid}", "no cells"),
    "X rows disagree with obs (backed file)": bad_ingest(
        h5ad(drop_last_row), errors.ShapeMismatchError, "{uid}", "(29, 40)", "(30, 40)"
    ),
    "var shorter than X (backed file)": bad_ingest(
        h5ad(drop_last_var), errors.ShapeMismatchError, "{uid}", "(30, 40)", "(30, 39)"
    ),
    "obsm key missing": bad_ingest(
        mutated(lambda a: None), IE, "{uid}", "'pca'", "'emb'", obsm_columns={"pca": "embedding"}
    ),
    "obsm width differs from the vector column": bad_ingest(
        mutated(lambda a: a.obsm.__setitem__("emb", np.zeros((N_CELLS, 5), np.float32))),
        errors.ShapeMismatchError,
        "'emb'",
        "'embedding'",
        "(30, 5)",
        obsm_columns={"emb": "embedding"},
    ),
    "obsm holding NaN": bad_ingest(
        mutated(lambda a: a.obsm.__setitem__("emb", np.full((N_CELLS, 4), np.nan, np.float32))),
        DV,
        "{uid}",
        "'emb'",
        obsm_columns={"emb": "embedding"},
    ),
    "obsm into a column that is not a vector": bad_ingest(
        mutated(lambda a: None), IE, "'donor'", "'embedding'", obsm_columns={"emb": "donor"}
    ),
    # matrix values
    "negative counts": streamed(set_x(lambda x: with_value(x, -2, np.int32)), "{uid}", "'counts'", "-2"),
    "non-integer counts": streamed(set_x(lambda x: with_value(x, 0.5)), "'counts'", "non-integer", "0.5"),
    "NaN in counts": streamed(set_x(lambda x: with_value(x, np.nan)), "'counts'", "non-finite", "nan"),
    "inf in counts": streamed(set_x(lambda x: with_value(x, np.inf)), "'counts'", "non-finite", "inf"),
    "NaN in a float layer": streamed(
        set_x(lambda x: with_value(x, np.nan)), "'log_normalized'", "nan", zarr_layer="log_normalized"
    ),
    "float count above float32's whole numbers": streamed(
        set_x(lambda x: with_value(x, 2**24 + 1)), "{uid}", "'counts'", "16777217", "2**24"
    ),
    "count beyond uint32": streamed(set_x(lambda x: with_value(x, 2**33, np.int64)), "8589934592", "2**32"),
    "float64 value beyond float32": streamed(
        set_x(lambda x: with_value(x, 1e300)), "{uid}", "'scaled'", "1e+300", "float32", zarr_layer="scaled"
    ),
    "gene repeated within a CSR row": streamed(set_x(repeat_first_index), "{uid}", "row 0", "repeated"),
    "column index beyond var (backed file)": streamed(
        h5ad(column_index_999), "{uid}", "999", "outside [0, 40)"
    ),
    "CSR row offsets that decrease (.h5ad)": bad_ingest(
        h5ad(lambda f: f["X/indptr"].write_direct(falling_indptr(f["X/indptr"][:]))),
        DV,
        "{uid}",
        "indptr",
        "decrease at row 3",
    ),
    "CSR row offsets that decrease (in memory)": bad_ingest(
        set_x(lambda x: sp.csr_matrix((x.data, x.indices, falling_indptr(x.indptr)), shape=x.shape)),
        DV,
        "{uid}",
        "decrease at row 3",
    ),
    # truncated, fractional offsets moved values to other cells
    "CSR row offsets stored as floats": bad_ingest(
        h5ad(lambda f: replace(f, "X/indptr", f["X/indptr"][:] + np.r_[0.0, np.full(N_CELLS - 1, 0.5), 0.0])),
        DV,
        "{uid}",
        "indptr",
        "float64 values, not integers",
    ),
    "column indices stored as floats": bad_ingest(
        h5ad(lambda f: replace(f, "X/indices", f["X/indices"][:].astype(np.float64))),
        DV,
        "{uid}",
        "float64, not integers",
    ),
    "column indices stored as a 2-D array": bad_ingest(
        h5ad(lambda f: replace(f, "X/indices", f["X/indices"][:][:, None])), DV, "{uid}", "not a 1-D array"
    ),
    "unknown encoding of X": bad_ingest(
        h5ad(lambda f: f["X"].attrs.__setitem__("encoding-type", "bogus")), IE, "{uid}", "bogus"
    ),
    "unknown encoding of obs": bad_ingest(
        h5ad(lambda f: f["obs"].attrs.__setitem__("encoding-type", "bogus")), IE, "input.h5ad", "bogus"
    ),
    "CSR row offsets ending before the stored values": bad_ingest(
        h5ad(short_indptr_end), DV, "{uid}", "indptr", "but indices holds"
    ),
    "float16 values": bad_ingest(set_x(lambda x: x.toarray().astype(np.float16)), DV, "{uid}", "float16"),
    "complex values": bad_ingest(set_x(lambda x: x.toarray().astype(np.complex64)), DV, "complex64"),
    "object dtype values": bad_ingest(set_x(lambda x: x.toarray().astype(object)), DV, "{uid}", "object"),
    "boolean values": bad_ingest(set_x(lambda x: x.toarray() > 0), DV, "bool"),
    # files
    "non-existent path": bad_ingest(lambda ctx: ctx.tmp / "missing.h5ad", IE, "no such file", "missing.h5ad"),
    "directory instead of a file": bad_ingest(raw_file("a_directory.h5ad", None), IE, "a_directory.h5ad"),
    "text file, not HDF5": bad_ingest(raw_file("notes.h5ad", b"cell,gene\n1,2\n"), IE, "notes.h5ad"),
    "empty file": bad_ingest(raw_file("empty.h5ad", b""), IE, "empty.h5ad"),
    "truncated .h5ad": bad_ingest(truncated, IE, "truncated.h5ad"),
    ".h5ad without X": bad_ingest(h5ad(lambda f: f.__delitem__("X")), IE, "{uid}", "adata.X", "input.h5ad"),
    "backed CSC X": bad_ingest(h5ad(csc=True), IE, "{uid}", "CSC"),
    # dataset uids
    "duplicate dataset uid": bad_ingest(
        mutated(lambda a: None), errors.DuplicateDatasetError, "'existing'", uid="existing"
    ),
    "re-ingesting a stored dataset record": Bad(
        lambda ctx: add_from_anndata(
            ctx.atlas,
            good(seed=1),
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(**ctx.atlas.list_datasets().iloc[0].to_dict()),
            progress=False,
        ),
        errors.DuplicateDatasetError,
        ("'existing'",),
    ),
    "dataset uid '..'": bad_ingest(mutated(lambda a: None), IE, "'..'", "zarr group path", uid=".."),
    "dataset uid with an empty path part": bad_ingest(
        mutated(lambda a: None), IE, "'a//b'", "zarr group path", uid="a//b"
    ),
    "dataset uid with '/' (a result's presence could not be written)": bad_ingest(
        mutated(lambda a: None),
        IE,
        "'study7/sample1'",
        "contains '/'",
        "varm['presence']",
        uid="study7/sample1",
    ),
    "dataset uid with ':' (cell uids could collide)": bad_ingest(
        mutated(lambda a: None), IE, "'existing:cell0'", "contains ':'", "ambiguous", uid="existing:cell0"
    ),
    "dataset uid with a control character": bad_ingest(
        mutated(lambda a: None), IE, "'tab\\tuid'", "U+0009 (control character)", uid="tab\tuid"
    ),
    "empty dataset uid": bad_ingest(mutated(lambda a: None), IE, "''", "non-empty", uid=""),
    # read-only handles
    "ingest into a checked-out atlas": Bad(
        lambda ctx: ingest(checkout(ctx), good(), ctx.uid),
        errors.ReadOnlyAtlasError,
        ("snapshot", "read-only"),
    ),
    "register features on a checked-out atlas": Bad(
        lambda ctx: checkout(ctx).register_features("gene_expression", pd.DataFrame({"uid": ["NEW"]})),
        errors.ReadOnlyAtlasError,
        ("read-only",),
    ),
    # feature registry
    "register duplicate feature uids": Bad(
        register(pd.DataFrame({"uid": ["X1", "X1"]})),
        errors.FeatureRegistryError,
        ("gene_expression", "'X1'"),
    ),
    "register feature uids equal as text": Bad(
        register(pd.DataFrame({"uid": pd.Series([1, "1"], dtype=object)})),
        errors.FeatureRegistryError,
        ("gene_expression", "duplicate feature uids ['1']"),
    ),
    "register a feature uid holding NUL": Bad(
        register(pd.DataFrame({"uid": ["X\0Y"]})), errors.FeatureRegistryError, ("gene_expression", "NUL")
    ),
    "register a gene symbol UTF-8 cannot write": Bad(
        register(pd.DataFrame({"uid": ["X1"], "gene_symbol": ["A\udcffB"]})),
        errors.FeatureRegistryError,
        ("gene_expression", "'gene_symbol'", "surrogates not allowed"),
    ),
    "register a feature uid UTF-8 cannot write": Bad(
        register(pd.DataFrame({"uid": ["X\udcffY"]})),
        errors.FeatureRegistryError,
        ("gene_expression", "UTF-8 cannot write"),
    ),
    "register features without a uid column": Bad(
        register(pd.DataFrame({"gene_symbol": ["x"]})),
        errors.FeatureRegistryError,
        ("gene_expression", "'uid'"),
    ),
    "register a column the registry lacks": Bad(
        register(pd.DataFrame({"uid": ["X1"], "colour": ["red"]})), errors.FeatureRegistryError, ("'colour'",)
    ),
    "register a wrongly typed value": Bad(
        register(pd.DataFrame({"uid": ["X1"], "gene_symbol": [5]})),
        errors.FeatureRegistryError,
        ("'gene_symbol'",),
    ),
    "register dicts instead of schema objects": Bad(
        register([{"uid": "X1"}]), errors.FeatureRegistryError, ("gene_expression", "dict")
    ),
    "register into an unknown feature space": Bad(
        register(pd.DataFrame({"uid": ["X1"]}), "atac"), errors.FeatureSpaceError, ("'atac'",)
    ),
    # schemas and atlas locations
    "registry schema for a feature space without a pointer field": Bad(
        create(StrictCells, registry_schemas={"gene_expression": Gene, "atac": Gene}),
        errors.SchemaError,
        ("'atac'",),
    ),
    "pointer field without a registry schema": Bad(
        create(StrictCells, registry_schemas={}), errors.SchemaError, ("'gene_expression'",)
    ),
    "obs field without an Arrow type": Bad(create(DictCells), errors.SchemaError, ("DictCells", "'meta'")),
    "pointer field that is not optional": Bad(
        create(RequiredPointerCells),
        errors.SchemaError,
        ("RequiredPointerCells", "'gene_expression'", "optional"),
    ),
    "cell uid redeclared as int": Bad(
        create(IntUidCells), errors.SchemaError, ("IntUidCells", "'uid'", "str")
    ),
    "create over an existing atlas": Bad(
        lambda ctx: RaggedAtlas.create(
            ctx.atlas.db_uri, "cells", StrictCells, registry_schemas={"gene_expression": Gene}
        ),
        errors.AtlasExistsError,
        ("already exists",),
    ),
    "open where there is no atlas": Bad(
        lambda ctx: RaggedAtlas.open(str(ctx.tmp / "nowhere")), errors.AtlasNotFoundError, ("nowhere",)
    ),
    "checkout of a snapshot never taken": Bad(
        lambda ctx: RaggedAtlas.checkout(ctx.atlas.db_uri, 10_000), errors.VersionNotFoundError, ("10000",)
    ),
    # queries
    "malformed SQL in where()": Bad(
        query(lambda a: a.query().where("donor = = 'd1'").to_arrow()), QE, ("donor = = 'd1'", "'cells'")
    ),
    "unknown column in where()": Bad(query(lambda a: a.query().where("colour = 'red'")), QE, ("colour",)),
    "stacked SQL statement in where()": Bad(
        query(lambda a: a.query().where("1 = 1; DROP TABLE cells")), QE, ("DROP TABLE cells",)
    ),
    "where() escaping its parentheses": Bad(
        query(lambda a: a.query().where("dataset_uid = 'x'").where("donor = 'd1') OR (1 = 1")),
        QE,
        ("OR (1 = 1", "closes a parenthesis"),
    ),
    "trailing words in where()": Bad(
        query(lambda a: a.query().where("donor = 'd1' AN cell_type = 'T'")), QE, ("AN cell_type", "'cells'")
    ),
    "malformed SQL with count(group_by)": Bad(
        query(lambda a: a.query().where("donor ==== 'd1'").count(group_by="donor")), QE, ("donor ====",)
    ),
    "empty where()": Bad(query(lambda a: a.query().where("  ")), QE, ("non-empty",)),
    "unknown feature names": Bad(
        query(lambda a: a.query().features(["G1", "NOPE"], "gene_expression").to_anndata()),
        QE,
        ("'NOPE'", "'gene_expression'"),
    ),
    "feature_join('outer')": Bad(query(lambda a: a.query().feature_join("outer")), QE, ("'outer'",)),
    "vector search without limit": Bad(
        query(lambda a: a.query().search(np.zeros(4, np.float32)).to_arrow()), QE, ("vector", "limit")
    ),
    "vector search of the wrong width": Bad(
        query(lambda a: a.query().search(np.zeros(3, np.float32)).limit(3).to_arrow()), QE, ("embedding",)
    ),
    "vector search on a non-vector column": Bad(
        query(lambda a: a.query().search(np.zeros(4), vector_column_name="donor")), QE, ("'donor'",)
    ),
    "select an unknown column": Bad(query(lambda a: a.query().select(["colour"])), QE, ("'colour'",)),
    "negative limit": Bad(query(lambda a: a.query().limit(-1)), QE, ("-1",)),
}


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_rejected_and_atlas_unchanged(
    corpus_atlas: RaggedAtlas, tmp_path: Path, name: str
) -> None:
    case = CASES[name]
    ctx = Ctx(corpus_atlas, tmp_path, slug(name))
    before = visible_state(corpus_atlas, versions=True)
    with pytest.raises(errors.LancellError) as raised:
        case.act(ctx)
    assert type(raised.value) is case.error, f"{type(raised.value).__name__}: {raised.value}"
    for needle in case.needles:
        assert needle.format(uid=ctx.uid) in str(raised.value), f"{needle!r} not in {raised.value}"
    after = visible_state(corpus_atlas, versions=True)
    assert after == before
    assert after["validate"] == []
    assert not (tmp_path / "other").exists()  # a refused create() leaves no half-made atlas
    corpus_atlas.snapshot()
    if case.retry:
        ingest(corpus_atlas, good(seed=2), ctx.uid, on_duplicate="allow")  # every retry stores the same data
        assert corpus_atlas.query().where(f"dataset_uid = '{ctx.uid}'").count() == N_CELLS
        assert corpus_atlas.validate() == []


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


# ------------------------------------------------------------------------------------ accepted inputs
def test_nan_in_nullable_columns_is_stored_as_null(corpus_atlas: RaggedAtlas) -> None:
    adata = good()
    adata.obs["age"] = [1.0] * (N_CELLS - 1) + [np.nan]
    ingest(corpus_atlas, adata, "nullable-nan")
    obs = corpus_atlas.query().where("dataset_uid = 'nullable-nan'").to_anndata().obs
    assert obs["age"].isna().sum() == 1 and obs["age"].dropna().eq(1).all()
    assert list(obs["cell_type"].astype(object).where(obs["cell_type"].notna(), None)) == list(
        adata.obs["cell_type"].astype(object).where(adata.obs["cell_type"].notna(), None)
    )
    assert corpus_atlas.validate() == []


HOSTILE = [
    "d'; DROP TABLE cells; --",
    'Zelle "ä" 🧬 细胞',
    "back\\slash % _ ` [x] (y) {z}",
    "line\nbreak\ttab",
    "' OR '1'='1",
    "",
]


def test_unicode_and_sql_metacharacters_round_trip(corpus_atlas: RaggedAtlas) -> None:
    adata = good()
    adata.obs["donor"] = [HOSTILE[i % len(HOSTILE)] for i in range(N_CELLS)]
    adata.obs_names = [f"zellé-{i}-'\"🧬" for i in range(N_CELLS)]
    uid = "o'brien-ü 🧬"
    ingest(corpus_atlas, adata, uid)
    quoted = uid.replace("'", "''")
    out = corpus_atlas.query().where(f"dataset_uid = '{quoted}'").to_anndata()
    assert list(out.obs["donor"].astype(str)) == list(adata.obs["donor"])
    assert list(out.obs_names) == [f"{uid}:{name}" for name in adata.obs_names]
    for value in HOSTILE:
        literal = value.replace("'", "''")
        hits = corpus_atlas.query().where(f"dataset_uid = '{quoted}'").where(f"donor = '{literal}'").count()
        assert hits == sum(v == value for v in adata.obs["donor"])
    assert corpus_atlas.validate() == []
    corpus_atlas.snapshot()


def test_explicitly_stored_zeros_are_accepted(corpus_atlas: RaggedAtlas, tmp_path: Path) -> None:
    adata = good()
    adata.X.data[:5] = 0  # stored, but zero
    assert adata.X.nnz > adata.X.count_nonzero()
    adata.write_h5ad(tmp_path / "zeros.h5ad")
    ingest(corpus_atlas, adata, "stored-zeros")
    ingest(corpus_atlas, tmp_path / "zeros.h5ad", "stored-zeros-backed", on_duplicate="allow")  # same data
    for uid in ("stored-zeros", "stored-zeros-backed"):
        out = corpus_atlas.query().where(f"dataset_uid = '{uid}'").to_anndata()
        np.testing.assert_array_equal(out[:, GENES].X.toarray(), adata.X.toarray())
    assert corpus_atlas.validate() == []


@pytest.mark.parametrize(
    ("uid", "members"),
    [
        ("big-endian-sparse", {"X/data": ">i4", "X/indices": ">i8"}),
        ("big-endian-sparse-gzip", {"X/data": ">i2", "X/indices": ">u4"}),
        ("big-endian-dense", {"X": ">i2"}),
    ],
)
def test_big_endian_integers_are_read_exactly(
    corpus_atlas: RaggedAtlas, tmp_path: Path, uid: str, members: dict[str, str]
) -> None:
    adata = good()
    if "X" in members:
        adata.X = adata.X.toarray()
    path = tmp_path / f"{uid}.h5ad"
    adata.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        for name, dtype in members.items():
            attrs, values = dict(f[name].attrs), f[name][:]
            del f[name]
            compression = "gzip" if uid.endswith("gzip") else None
            f.create_dataset(name, data=values.astype(dtype), compression=compression)
            f[name].attrs.update(attrs)
    ingest(corpus_atlas, path, uid, on_duplicate="allow")
    out = corpus_atlas.query().where(f"dataset_uid = '{uid}'").to_anndata()
    expected = adata.X if isinstance(adata.X, np.ndarray) else adata.X.toarray()
    np.testing.assert_array_equal(out[:, GENES].X.toarray(), expected)


def test_an_atlas_holding_a_cell_owning_uid_with_a_slash_still_reads(tmp_path: Path, monkeypatch) -> None:
    """Such uids are refused now (a result's varm['presence'] could not be written); one stored reads."""
    from lancell.ingest import plan
    from lancell.tables.schema import check_dataset_uid

    monkeypatch.setattr(
        plan, "check_dataset_uid", lambda uid, owns_cells: check_dataset_uid(uid, owns_cells=False)
    )
    atlas = new_atlas(tmp_path)
    adata = good()
    ingest(atlas, adata, "study7/sample1")
    monkeypatch.undo()
    reopened = RaggedAtlas.open(str(tmp_path / "db"))
    out = reopened.query().to_anndata()
    np.testing.assert_array_equal(out[:, GENES].X.toarray(), adata.X.toarray())
    assert list(out.varm["presence"].columns) == ["study7/sample1"]
    assert reopened.validate() == []
