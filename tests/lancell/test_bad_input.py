"""Bad input: a typed error that names what and where, and an atlas exactly as it was (then a retry works)."""

from __future__ import annotations

from collections.abc import Callable

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import visible_state

from lancell import errors
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, ingest_bundled
from lancell.ingestion import add_from_anndata
from lancell.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class StrictCells(LancellBaseSchema):
    donor: str
    age: int | None = None
    cell_type: str | None = None
    gene_expression: SparseZarrPointer | None = None


GENES = [f"G{i}" for i in range(40)]


def _good(n_cells: int = 30, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, len(GENES), density=0.3, format="csr", random_state=rng)
    x.data = rng.integers(1, 20, size=x.nnz).astype(np.float64)
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical(rng.choice(["d1", "d2"], n_cells)),
            "age": rng.integers(20, 80, n_cells),
            "cell_type": pd.Categorical(rng.choice(["T", "B", None], n_cells)),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    return ad.AnnData(X=x.astype(np.int32), obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture
def strict_atlas(tmp_path) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        StrictCells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    add_from_anndata(
        atlas,
        _good(seed=1),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="existing"),
        progress=False,
    )
    atlas.snapshot()
    return atlas


def _with(mutate: Callable[[ad.AnnData], ad.AnnData | None]) -> ad.AnnData:
    adata = _good()
    out = mutate(adata)
    return adata if out is None else out


def _set_obs(column, values):
    def mutate(a):
        a.obs[column] = values

    return mutate


def _nan_in_categorical(a):
    a.obs["donor"] = pd.Categorical(["d1"] * (a.n_obs - 1) + [np.nan])


def _x(transform):
    def mutate(a):
        a.X = transform(a.X)

    return mutate


def _negative(x):
    x = x.copy()
    x.data[3] = -2
    return x


def _dup_var(a):
    a.var_names = [*GENES[:-1], GENES[0]]


def _unknown_var(a):
    a.var_names = [*GENES[:-2], "NOT_A_GENE", "ALSO_NOT"]


CASES = {
    "nan in non-nullable categorical": (_with(_nan_in_categorical), {}, errors.ObsConversionError, "donor"),
    "nan in integer column": (
        _with(_set_obs("age", [1.0] * 29 + [np.nan])),
        {},
        None,
        None,
    ),
    "fractional value in integer column": (
        _with(_set_obs("age", [1.5] * 30)),
        {},
        errors.ObsConversionError,
        "age",
    ),
    "text in integer column": (_with(_set_obs("age", ["old"] * 30)), {}, errors.ObsConversionError, "age"),
    "required obs column missing": (
        _with(lambda a: a.obs.drop(columns=["donor"], inplace=True)),
        {},
        errors.ObsConversionError,
        "donor",
    ),
    "duplicate feature ids": (_with(_dup_var), {}, errors.DuplicateFeaturesError, "G0"),
    "unknown feature ids": (_with(_unknown_var), {}, errors.UnknownFeaturesError, "NOT_A_GENE"),
    "negative counts": (_with(_x(_negative)), {}, errors.DataValueError, "negative"),
    "non-integer counts": (
        _with(_x(lambda x: x.astype(np.float32) * 0.5)),
        {},
        errors.DataValueError,
        "non-integer",
    ),
    "nan in float layer": (
        _with(_x(lambda x: sp.csr_matrix(np.where(x.toarray() > 5, np.nan, x.toarray())))),
        {"zarr_layer": "log_normalized"},
        errors.DataValueError,
        "non-finite",
    ),
    "float16 values": (
        _with(_x(lambda x: x.toarray().astype(np.float16))),
        {},
        errors.DataValueError,
        "float16",
    ),
    "complex values": (
        _with(_x(lambda x: x.toarray().astype(np.complex64))),
        {},
        errors.DataValueError,
        "complex",
    ),
    "bool values": (_with(_x(lambda x: x.toarray() > 0)), {}, errors.DataValueError, "bool"),
    "empty dataset": (_with(lambda a: a[:0].copy()), {}, errors.IngestError, "no cells"),
    "zero-gene dataset": (_with(lambda a: a[:, :0].copy()), {}, errors.IngestError, "no features"),
    "unknown feature space": (_good(), {"feature_space": "atac"}, errors.FeatureSpaceError, "atac"),
    "layer not allowed": (_good(), {"zarr_layer": "spliced"}, errors.FeatureSpaceError, "spliced"),
    "missing input layer": (_good(), {"layer": "raw_counts"}, errors.IngestError, "raw_counts"),
    "missing var uid column": (_good(), {"var_uid_column": "ensembl"}, errors.IngestError, "ensembl"),
    "duplicate dataset uid": (_good(), {"uid": "existing"}, errors.DuplicateDatasetError, "existing"),
    "duplicate obs names": (
        _with(lambda a: setattr(a, "obs_names", ["same"] * a.n_obs)),
        {},
        errors.IngestError,
        "same",
    ),
    "sql metacharacters in obs values": (
        _with(_set_obs("donor", ["d'; DROP TABLE cells; --"] * 30)),
        {},
        None,
        None,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_rejected_and_atlas_unchanged(strict_atlas, case):
    adata, overrides, error, needle = CASES[case]
    overrides = dict(overrides)
    uid = overrides.pop("uid", "new")
    kwargs = {"feature_space": "gene_expression", "zarr_layer": "counts", **overrides}
    before = visible_state(strict_atlas)
    if error is None:  # accepted input: stored exactly, no error
        add_from_anndata(strict_atlas, adata, dataset_record=DatasetRecord(uid=uid), progress=False, **kwargs)
        out = strict_atlas.query().where("dataset_uid = 'new'").to_anndata()
        assert list(out.obs["donor"]) == list(adata.obs["donor"].astype(str))
        assert strict_atlas.validate() == []
        return
    with pytest.raises(error) as raised:
        add_from_anndata(strict_atlas, adata, dataset_record=DatasetRecord(uid=uid), progress=False, **kwargs)
    assert needle in str(raised.value)
    assert isinstance(raised.value, errors.LancellError)
    assert visible_state(strict_atlas) == before
    strict_atlas.snapshot()
    add_from_anndata(
        strict_atlas,
        _good(),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="retry"),
        progress=False,
    )
    assert strict_atlas.validate() == []


def test_nan_in_integer_column_is_stored_as_null(strict_atlas):
    adata = _with(_set_obs("age", [1.0] * 29 + [np.nan]))
    add_from_anndata(
        strict_atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="ages"),
        progress=False,
    )
    ages = strict_atlas.query().where("dataset_uid = 'ages'").to_anndata().obs["age"]
    assert ages.isna().sum() == 1 and ages.dropna().eq(1).all()


def test_truncated_h5ad_and_backed_csc(strict_atlas, tmp_path):
    before = visible_state(strict_atlas)
    path = tmp_path / "good.h5ad"
    _good().write_h5ad(path)
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(errors.IngestError, match=r"truncated\.h5ad"):
        add_from_anndata(strict_atlas, truncated, feature_space="gene_expression", zarr_layer="counts")
    csc = _good()
    csc.X = sp.csc_matrix(csc.X)
    csc.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(errors.IngestError, match="CSC"):
        add_from_anndata(
            strict_atlas, tmp_path / "csc.h5ad", feature_space="gene_expression", zarr_layer="counts"
        )
    with pytest.raises(errors.IngestError, match="no such file"):
        add_from_anndata(
            strict_atlas, tmp_path / "missing.h5ad", feature_space="gene_expression", zarr_layer="counts"
        )
    assert visible_state(strict_atlas) == before


def test_shape_mismatch_in_backed_file(strict_atlas, tmp_path):
    path = tmp_path / "short.h5ad"
    _good().write_h5ad(path)
    with h5py.File(path, "r+") as f:
        f["X"].attrs["shape"] = np.array([29, len(GENES)])
        indptr = f["X/indptr"][:-1]
        del f["X/indptr"]
        f["X/indptr"] = indptr
    before = visible_state(strict_atlas)
    with pytest.raises(errors.IngestError):
        add_from_anndata(strict_atlas, path, feature_space="gene_expression", zarr_layer="counts")
    assert visible_state(strict_atlas) == before


def test_failure_after_zarr_write_rolls_back(strict_atlas, monkeypatch):
    before = visible_state(strict_atlas)
    table = strict_atlas._tables.datasets

    def broken_add(*args, **kwargs):
        raise OSError("disk full while writing the dataset row")

    monkeypatch.setattr(table, "add", broken_add)
    with pytest.raises(OSError, match="disk full"):
        add_from_anndata(
            strict_atlas,
            _good(),
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid="doomed"),
            progress=False,
        )
    monkeypatch.undo()
    assert visible_state(strict_atlas) == before
    strict_atlas.snapshot()


def test_schema_errors(tmp_path):
    with pytest.raises(errors.SchemaError, match="atac"):
        RaggedAtlas.create(
            str(tmp_path / "a"),
            "cells",
            StrictCells,
            registry_schemas={"gene_expression": Gene, "atac": Gene},
        )
    with pytest.raises(errors.SchemaError, match="gene_expression"):
        RaggedAtlas.create(str(tmp_path / "b"), "cells", StrictCells, registry_schemas={})
    RaggedAtlas.create(str(tmp_path / "c"), "cells", StrictCells, registry_schemas={"gene_expression": Gene})
    with pytest.raises(errors.AtlasExistsError):
        RaggedAtlas.create(
            str(tmp_path / "c"), "cells", StrictCells, registry_schemas={"gene_expression": Gene}
        )
    with pytest.raises(errors.AtlasNotFoundError):
        RaggedAtlas.open(str(tmp_path / "nowhere"))


def test_register_features_is_idempotent_and_checked(atlas, all_genes):
    registry = atlas.feature_registry("gene_expression")
    assert atlas.register_features("gene_expression", all_genes) == 0
    assert atlas.feature_registry("gene_expression").equals(registry)
    assert registry["global_index"].tolist() == list(range(len(registry)))
    with pytest.raises(errors.FeatureRegistryError, match="duplicate"):
        atlas.register_features(
            "gene_expression", pd.DataFrame({"uid": ["x", "x"], "gene_symbol": ["a", "a"]})
        )
    with pytest.raises(errors.FeatureRegistryError, match="not in the registry schema"):
        atlas.register_features("gene_expression", pd.DataFrame({"uid": ["x"], "colour": ["red"]}))
    assert atlas.register_features("gene_expression", pd.DataFrame({"uid": ["x"], "gene_symbol": ["X"]})) == 1
    assert atlas.feature_registry("gene_expression")["global_index"].iloc[-1] == len(registry)


def test_bundled_ingest_is_valid(atlas):
    for dataset in BUNDLED:
        ingest_bundled(atlas, dataset)
    assert atlas.validate() == []
