"""No input silently ignored, no content ingested twice, read errors named.

A record that sets a field lancell assigns is refused; obs columns the schema does not declare are warned and
listed on the record; ``register_features`` reports attributes that differ from the registered ones; the same
content under another dataset uid is refused, skipped or allowed; a read error while streaming a backed
``.h5ad`` names the dataset and the file. Every refusal leaves the atlas as it was.
"""

from __future__ import annotations

import json
import shutil
import warnings
from datetime import timedelta
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import table_calls, visible_state

import lancell.ingest.landing as landing
from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.errors import (
    DataValueError,
    DroppedColumnsWarning,
    DuplicateContentError,
    DuplicateContentWarning,
    FeatureConflictError,
    FeatureConflictWarning,
    FeatureRegistryError,
    IngestError,
    LancellWarning,
    TenxFormatError,
    UnknownFeaturesError,
)
from lancell.ingest.from_anndata import add_from_anndata
from lancell.ingest.landing import ingest_landing_file, read_landing_spec
from lancell.ingest.modalities import attach_modality
from lancell.ingest.sources import MatrixSource
from lancell.ingest.tenx import add_from_10x
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

DATA = Path(__file__).resolve().parents[2] / "data"
GENES = [f"G{i}" for i in range(60)]


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None
    organism: str | None = None


class Cells(LancellBaseSchema):
    cell_type: str | None = None
    gene_expression: SparseZarrPointer | None = None


@pytest.fixture
def atlas(tmp_path: Path) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        Cells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES, "gene_symbol": GENES}))
    return atlas


def _adata(n_cells: int = 200, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, len(GENES), density=0.3, format="csr", random_state=rng)
    x.data = rng.integers(1, 50, size=x.nnz).astype(np.float64)
    obs = pd.DataFrame(
        {"cell_type": rng.choice(["T", "B"], n_cells)}, index=[f"cell{i}" for i in range(n_cells)]
    )
    return ad.AnnData(X=x.astype(np.int32), obs=obs, var=pd.DataFrame(index=GENES))


def _ingest(atlas: RaggedAtlas, data: object, uid: str, **kwargs: object) -> DatasetRecord:
    return add_from_anndata(
        atlas,
        data,
        feature_space="gene_expression",
        zarr_layer=kwargs.pop("zarr_layer", "counts"),
        dataset_record=kwargs.pop("record", None) or DatasetRecord(uid=uid),
        progress=False,
        **kwargs,
    )


def _cells(atlas: RaggedAtlas) -> int:
    return atlas.query().count()


# ------------------------------------------------------------------------------------ assigned fields


def test_record_with_zarr_group_is_refused_and_nothing_written(atlas):
    before = visible_state(atlas, versions=True)
    with pytest.raises(IngestError) as caught:
        _ingest(atlas, _adata(), "a", record=DatasetRecord(uid="a", zarr_group="my_group"))
    assert type(caught.value) is IngestError
    assert str(caught.value) == (
        "dataset 'a': DatasetRecord fields zarr_group='my_group' are assigned by lancell at ingestion; "
        "leave them unset (pass a fresh DatasetRecord with only uid and provenance)"
    )
    assert visible_state(atlas, versions=True) == before


def test_every_assigned_field_and_cells_of_are_refused(atlas):
    record = DatasetRecord(uid="a", n_cells=5, layout_uid="x", cells_of="other")
    with pytest.raises(IngestError, match=r"fields n_cells=5, layout_uid='x', cells_of='other' are assigned"):
        _ingest(atlas, _adata(), "a", record=record)
    assert atlas.list_datasets().empty


def test_attach_modality_and_10x_refuse_a_zarr_group(atlas):
    _ingest(atlas, _adata(), "a")
    before = visible_state(atlas, versions=True)
    with pytest.raises(IngestError, match=r"dataset 'a/extra': DatasetRecord fields zarr_group='g' are"):
        attach_modality(
            atlas,
            _adata(),
            cells_of="a",
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid="a/extra", zarr_group="g"),
            progress=False,
        )
    with pytest.raises(IngestError, match=r"dataset 'tenx': DatasetRecord fields zarr_group='g' are"):
        add_from_10x(
            atlas,
            DATA / "10x_v3" / "filtered_feature_bc_matrix.h5",
            dataset_record=DatasetRecord(uid="tenx", zarr_group="g"),
            progress=False,
        )
    assert visible_state(atlas, versions=True) == before


# ------------------------------------------------------------------------------------ dropped obs columns


def test_dropped_obs_columns_are_warned_and_recorded(atlas):
    adata = _adata()
    adata.obs["qc_pass"] = True
    adata.obs["batch"] = "b1"
    with pytest.warns(DroppedColumnsWarning) as caught:
        record = _ingest(atlas, adata, "a")
    assert [str(w.message) for w in caught] == [
        "dataset 'a': obs columns ['batch', 'qc_pass'] are not in the cell schema (or are names lancell "
        "reserves) and were not stored (listed on the record as dropped_obs_columns)"
    ]
    assert record.dropped_obs_columns == ["batch", "qc_pass"]
    assert atlas.list_datasets()["dropped_obs_columns"].iloc[0].tolist() == ["batch", "qc_pass"]


def test_no_warning_when_every_obs_column_is_stored(atlas):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = _ingest(atlas, _adata(), "a")
    assert record.dropped_obs_columns == []


# ------------------------------------------------------------------------------------ feature conflicts


@pytest.fixture
def human_c3(atlas: RaggedAtlas) -> RaggedAtlas:
    human = pd.DataFrame({"uid": ["C3", "C4"], "gene_symbol": ["C3", "C4"], "organism": "Homo sapiens"})
    assert atlas.register_features("gene_expression", human) == 2
    return atlas


MOUSE = pd.DataFrame({"uid": ["C3", "Mnew"], "gene_symbol": ["C3", "Mnew"], "organism": "Mus musculus"})


def _registry(atlas: RaggedAtlas) -> list[dict[str, object]]:
    return atlas.feature_registry("gene_expression").to_dict("records")


def test_conflicting_attributes_raise_by_default(human_c3):
    before = _registry(human_c3)
    with pytest.raises(FeatureConflictError) as caught:
        human_c3.register_features("gene_expression", MOUSE)
    assert str(caught.value) == (
        "gene_expression: registered features differ from the given ones: uid 'C3' column 'organism': "
        "registered 'Homo sapiens', given 'Mus musculus'; pass on_conflict='keep' to keep the registered "
        "values or on_conflict='update' to overwrite them"
    )
    assert _registry(human_c3) == before  # not even the new feature


def test_keep_warns_and_keeps_registered_values(human_c3):
    with pytest.warns(
        FeatureConflictWarning, match="uid 'C3' column 'organism': registered 'Homo sapiens'"
    ) as told:
        assert human_c3.register_features("gene_expression", MOUSE, on_conflict="keep") == 1
    assert told[0].filename == __file__
    rows = {r["uid"]: r for r in _registry(human_c3)}
    assert rows["C3"]["organism"] == "Homo sapiens"
    assert rows["Mnew"]["organism"] == "Mus musculus"
    assert rows["Mnew"]["global_index"] == len(GENES) + 2


def test_update_overwrites_values_but_never_the_global_index(human_c3):
    index = {r["uid"]: r["global_index"] for r in _registry(human_c3)}
    assert human_c3.register_features("gene_expression", MOUSE, on_conflict="update") == 1
    rows = {r["uid"]: r for r in _registry(human_c3)}
    assert rows["C3"]["organism"] == "Mus musculus"
    assert rows["C3"]["global_index"] == index["C3"] == len(GENES)
    assert rows["C4"]["organism"] == "Homo sapiens"
    assert {u: rows[u]["global_index"] for u in index} == index


def test_identical_or_partial_re_registration_is_silent(human_c3):
    before = _registry(human_c3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = pd.DataFrame({"uid": ["C3", "C4"], "gene_symbol": ["C3", "C4"], "organism": "Homo sapiens"})
        assert human_c3.register_features("gene_expression", same, on_conflict="error") == 0
        # a column not given is not compared: only uid and symbol
        assert (
            human_c3.register_features(
                "gene_expression", pd.DataFrame({"uid": ["C3"], "gene_symbol": ["C3"]}), on_conflict="error"
            )
            == 0
        )
    assert _registry(human_c3) == before


def test_a_value_given_for_an_unrecorded_one_fills_it_in(atlas):
    """A registered null (no organism given then) is filled, not a conflict; a recorded value is kept."""
    unrecorded = pd.DataFrame({"uid": ["N1", "N2"], "gene_symbol": ["N1", "N2"]})
    atlas.register_features("gene_expression", unrecorded)
    index = {r["uid"]: r["global_index"] for r in _registry(atlas)}
    later = pd.DataFrame({"uid": ["N1", "N2"], "gene_symbol": ["N1", "N2x"], "organism": "Homo sapiens"})
    with pytest.warns(FeatureConflictWarning, match="uid 'N2' column 'gene_symbol'"):
        assert atlas.register_features("gene_expression", later, on_conflict="keep") == 0
    rows = {r["uid"]: r for r in _registry(atlas)}
    assert [rows[u]["organism"] for u in ("N1", "N2")] == ["Homo sapiens", "Homo sapiens"]
    assert rows["N2"]["gene_symbol"] == "N2"
    assert {u: r["global_index"] for u, r in rows.items()} == index
    with pytest.raises(FeatureConflictError, match="uid 'N2' column 'gene_symbol'"):
        atlas.register_features("gene_expression", later)


@pytest.mark.parametrize("on_conflict", ["error", "keep", "update"])
def test_a_missing_given_value_is_no_conflict_and_overwrites_nothing(atlas, on_conflict):
    """A second dataset's var with the column but a gene unannotated: under "update" the recorded value was
    erased unwarned; "error" raised and "keep" warned of a conflict."""
    atlas.register_features(
        "gene_expression",
        pd.DataFrame({"uid": ["A", "B"], "gene_symbol": ["A", "B"], "organism": "Homo sapiens"}),
    )
    later = pd.DataFrame(
        {"uid": ["A", "B", "C"], "gene_symbol": [None, "B", "C"], "organism": [np.nan, None, "x"]}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert atlas.register_features("gene_expression", later, on_conflict=on_conflict) == 1
    rows = {
        r["uid"]: (r["gene_symbol"], r["organism"]) for r in _registry(atlas) if r["uid"] in ("A", "B", "C")
    }
    assert rows == {"A": ("A", "Homo sapiens"), "B": ("B", "Homo sapiens"), "C": ("C", "x")}


def test_a_failed_landing_keeps_features_another_ingestion_uses(atlas, tmp_path, monkeypatch):
    """Features registered by a landing file whose ingestion then fails stay registered: another ingestion,
    landing the same new genes meanwhile, committed a dataset of them (its values were read under other
    genes' names once the failed one took them back and their global indices were given out again)."""
    genes = ["NEW1", "NEW2", "NEW3"]
    for name, offset in (("a", 1), ("b", 5)):
        x = sp.csr_matrix(np.arange(offset, offset + 6, dtype=np.int32).reshape(2, 3))
        obs = pd.DataFrame(index=[f"{name}1", f"{name}2"])
        ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / f"{name}.h5ad")
    real = landing.add_from_anndata

    def another_lands_a_then_this_fails(*args, **kwargs):  # while "b" is written, "a" lands elsewhere
        monkeypatch.setattr(landing, "add_from_anndata", real)
        ingest_landing_file(RaggedAtlas.open(atlas.core.db_uri), read_landing_spec(tmp_path / "a.h5ad"))
        raise IngestError("b: a bad value in its last rows")

    monkeypatch.setattr(landing, "add_from_anndata", another_lands_a_then_this_fails)
    with pytest.raises(IngestError, match="a bad value"):
        ingest_landing_file(atlas, read_landing_spec(tmp_path / "b.h5ad"))
    fresh = RaggedAtlas.open(atlas.core.db_uri)
    assert set(genes) <= set(fresh.feature_registry("gene_expression")["uid"])
    assert fresh.validate() == []
    fresh.register_features("gene_expression", pd.DataFrame({"uid": ["OTHER1", "OTHER2", "OTHER3"]}))
    out = fresh.query().where("dataset_uid = 'a'").layers("gene_expression", "counts").to_anndata()
    assert out.var_names.tolist() == genes
    np.testing.assert_array_equal(out.X.toarray(), [[1, 2, 3], [4, 5, 6]])


def test_a_landing_file_refused_for_its_matrix_registers_nothing(atlas, tmp_path):
    """Files refused for what needs no registry (X stored as CSC, as R converters write it; a float16 X; a
    10x folder whose barcodes repeat) registered their features first: each refusal grew the registry."""
    x = sp.random(4, 3, density=0.6, format="csr", random_state=0, dtype=np.float64)
    x.data[:] = 3
    var = pd.DataFrame(index=["NEW1", "NEW2", "NEW3"])
    obs = pd.DataFrame(index=[f"c{i}" for i in range(4)])
    ad.AnnData(sp.csc_matrix(x), obs=obs, var=var).write_h5ad(tmp_path / "csc.h5ad")
    ad.AnnData(x.toarray().astype(np.float16), obs=obs, var=var).write_h5ad(tmp_path / "f16.h5ad")
    ad.AnnData(sp.csr_matrix((0, 3), dtype=np.int32), obs=obs.iloc[:0], var=var).write_h5ad(
        tmp_path / "e.h5ad"
    )
    folder = tmp_path / "run1" / "outs" / "filtered_feature_bc_matrix"
    folder.mkdir(parents=True)
    (folder / "matrix.mtx").write_text(
        "%%MatrixMarket matrix coordinate integer general\n3 3 3\n1 1 5\n2 2 6\n3 3 7\n"
    )
    (folder / "features.tsv").write_text("".join(f"NEW{i}\tK{i}\tGene Expression\n" for i in range(4, 7)))
    (folder / "barcodes.tsv").write_text("AAA-1\nCCC-1\nAAA-1\n")
    before = visible_state(atlas, versions=True)
    for path, error, message in (
        (tmp_path / "csc.h5ad", IngestError, "backed CSC matrices cannot be streamed by cell"),
        (tmp_path / "f16.h5ad", DataValueError, "unsupported matrix dtype float16"),
        (tmp_path / "e.h5ad", IngestError, "dataset 'e' has no cells"),
        (folder, TenxFormatError, "1 barcodes occur more than once"),
    ):
        with pytest.raises(error, match=message):
            ingest_landing_file(atlas, read_landing_spec(path))
        assert visible_state(atlas, versions=True) == before, path


def test_a_landing_another_process_ingests_meanwhile_is_present(atlas, tmp_path, monkeypatch):
    """Two `lancell ingest` runs of one file at once: the one that lost the dataset's lock raised
    DuplicateDatasetError (exit 1) where a run after it reports the dataset present."""
    x = sp.csr_matrix(np.arange(1, 7, dtype=np.int32).reshape(2, 3))
    obs, var = pd.DataFrame(index=["c1", "c2"]), pd.DataFrame(index=["G1", "G2", "G3"])
    ad.AnnData(x, obs=obs, var=var).write_h5ad(tmp_path / "a.h5ad")
    spec = read_landing_spec(tmp_path / "a.h5ad")
    real = landing.add_from_anndata

    def the_other_run_commits_first(*args, **kwargs):
        monkeypatch.setattr(landing, "add_from_anndata", real)
        ingest_landing_file(RaggedAtlas.open(atlas.core.db_uri), spec)  # the other process, first
        return real(*args, **kwargs)

    monkeypatch.setattr(landing, "add_from_anndata", the_other_run_commits_first)
    record, outcome = ingest_landing_file(atlas, spec)
    assert (record.uid, outcome) == ("a", "present")
    assert atlas.list_datasets()["uid"].tolist() == ["a"] and atlas.validate() == []


def test_a_conflict_policy_given_for_a_present_dataset_is_warned_as_not_used(atlas, tmp_path, monkeypatch):
    """An update of registered values (on_conflict="update") runs after the dataset commits: a run stopped
    between the two, then run again, found the dataset present and left the registry as it was, without a
    word (the command line warned; the library said nothing)."""
    x = sp.csr_matrix(np.arange(1, 7, dtype=np.int32).reshape(2, 3))
    var = pd.DataFrame({"gene_symbol": ["NEW1", "NEW2", "NEW3"]}, index=["G1", "G2", "G3"])
    ad.AnnData(x, obs=pd.DataFrame(index=["c1", "c2"]), var=var).write_h5ad(tmp_path / "a.h5ad")
    spec = read_landing_spec(tmp_path / "a.h5ad")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # (the run stops once the dataset committed, before the update)

    monkeypatch.setattr(landing, "updated", stopped)
    with pytest.raises(KeyboardInterrupt):
        ingest_landing_file(atlas, spec, on_conflict="update")
    monkeypatch.undo()
    with pytest.warns(LancellWarning, match=r"a: on_conflict='update' not used: the dataset is in the atlas"):
        assert ingest_landing_file(atlas, spec, on_conflict="update")[1] == "present"
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)
        ingest_landing_file(atlas, spec)  # the default policy: nothing to say


def test_landing_var_entries_without_uid_or_symbol_are_never_the_text_nan(tmp_path, atlas):
    """A missing gene symbol was registered as the symbol "nan" (a search for "nan" found it), a missing uid
    as the feature "nan"."""
    x = sp.csr_matrix(np.ones((2, 3), np.int32))
    symbols = pd.Categorical([np.nan, "B", np.nan])
    var = pd.DataFrame({"gene_symbol": symbols, "id": ["N1", None, "N3"]}, index=["N1", "N2", "N3"])
    ad.AnnData(x, obs=pd.DataFrame(index=["a", "b"]), var=var).write_h5ad(tmp_path / "d.h5ad")
    before = visible_state(atlas)
    (tmp_path / "d.json").write_text('{"var_uid_column": "id"}')
    with pytest.raises(IngestError, match=r"1 var entries have no feature uid \(id\), e.g. \['N2'\]"):
        ingest_landing_file(atlas, read_landing_spec(tmp_path / "d.h5ad"))
    assert visible_state(atlas) == before
    (tmp_path / "d.json").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)
        ingest_landing_file(atlas, read_landing_spec(tmp_path / "d.h5ad"))
    registry = atlas.feature_registry("gene_expression").set_index("uid")["gene_symbol"]
    assert registry[["N1", "N2", "N3"]].tolist() == [None, "B", None]
    required = RaggedAtlas.create(  # a registry that requires a symbol gets the uid, warned
        str(tmp_path / "db2"), "cells", CellSchema, registry_schemas={"gene_expression": GeneFeature}
    )
    with pytest.warns(LancellWarning, match=r"2 var entries have no gene symbol, e.g. \['N1', 'N3'\]"):
        ingest_landing_file(required, read_landing_spec(tmp_path / "d.h5ad"))
    registry = required.feature_registry("gene_expression").set_index("uid")["gene_symbol"]
    assert registry[["N1", "N2", "N3"]].tolist() == ["N1", "B", "N3"]
    # a registered feature's symbol is kept: the uid overwrote it under "update" (and "error" refused)
    other = RaggedAtlas.create(
        str(tmp_path / "db3"), "cells", CellSchema, registry_schemas={"gene_expression": GeneFeature}
    )
    other.register_features("gene_expression", pd.DataFrame({"uid": ["N1"], "gene_symbol": ["CD3D"]}))
    with pytest.warns(LancellWarning, match=r"1 var entries have no gene symbol, e.g. \['N3'\]"):
        ingest_landing_file(other, read_landing_spec(tmp_path / "d.h5ad"), on_conflict="update")
    registry = other.feature_registry("gene_expression").set_index("uid")["gene_symbol"]
    assert registry[["N1", "N2", "N3"]].tolist() == ["CD3D", "B", "N3"]


def test_many_conflicts_are_counted(atlas):
    renamed = pd.DataFrame({"uid": GENES[:7], "gene_symbol": [f"new{i}" for i in range(7)]})
    with pytest.raises(FeatureConflictError, match=r"given 'new4' \.\.\. \(7 conflicts in all\); pass"):
        atlas.register_features("gene_expression", renamed)


def test_given_global_indices_are_refused_not_ignored(atlas):
    """The atlas assigns global indices; given ones were silently replaced (C given 0 got 2)."""
    before = atlas.feature_registry("gene_expression")
    given = pd.DataFrame({"uid": ["NEW1", GENES[0]], "gene_symbol": ["N", GENES[0]], "global_index": [0, 5]})
    with pytest.raises(FeatureRegistryError, match="features carry global_index values; the atlas assigns"):
        atlas.register_features("gene_expression", given)
    pd.testing.assert_frame_equal(atlas.feature_registry("gene_expression"), before)
    registry = atlas.feature_registry("gene_expression")  # a registry's own frame, indices dropped, registers
    assert atlas.register_features("gene_expression", registry.drop(columns="global_index")) == 0


def test_empty_uids_are_counted(atlas):
    """Two "" uids were refused as "0 features have an empty uid" (None counted, "" not)."""
    empty = pd.DataFrame({"uid": ["", "", None, "NEW1"], "gene_symbol": ["a", "b", "c", "d"]})
    with pytest.raises(FeatureRegistryError, match="3 features have an empty uid"):
        atlas.register_features("gene_expression", empty)


def test_a_file_naming_registered_genes_by_symbol_is_told_so(atlas):
    """The remedy was "register them": a file of symbols into an id-keyed registry then stored each gene
    twice (ENSG... and its symbol, two columns, each half zeros)."""
    atlas.register_features(
        "gene_expression", pd.DataFrame({"uid": ["ENSG1", "ENSG2"], "gene_symbol": ["CD3D", "LYZ"]})
    )
    x = sp.csr_matrix(np.ones((2, 2), np.int32))
    by_symbol = ad.AnnData(x, obs=pd.DataFrame(index=["c1", "c2"]), var=pd.DataFrame(index=["CD3D", "LYZ"]))
    with pytest.raises(
        UnknownFeaturesError,
        match=r"2 of them are registered genes' symbols \(e\.g\. \('CD3D', 'ENSG1'\)\): pass var_uid_column=",
    ):
        _ingest(atlas, by_symbol, "s")
    unknown = ad.AnnData(x, obs=pd.DataFrame(index=["c1", "c2"]), var=pd.DataFrame(index=["NEW8", "NEW9"]))
    with pytest.raises(
        UnknownFeaturesError, match=r"\['NEW8', 'NEW9'\]; register them with atlas.register_features"
    ):
        _ingest(atlas, unknown, "u")


def test_uids_with_white_space_at_either_end_are_refused(atlas):
    """ " GENEF" and "GENEF " were registered as two more features, which no `lancell query --features`
    (it strips the names it is given) could select."""
    before = atlas.feature_registry("gene_expression")
    padded = pd.DataFrame({"uid": ["NEW1", " GENEF", "GENEF "], "gene_symbol": ["a", "b", "c"]})
    with pytest.raises(
        FeatureRegistryError, match=r"2 feature uids begin or end with white space, e\.g\. ' GENEF'"
    ):
        atlas.register_features("gene_expression", padded)
    pd.testing.assert_frame_equal(atlas.feature_registry("gene_expression"), before)


def test_registry_values_of_another_type_are_refused(tmp_path):
    """1.7 was stored as 1 in an int column, 2 as True in a bool one, True as 1 in an int one."""
    from lancell.tables.schema import FeatureBaseSchema

    class Gene(FeatureBaseSchema):
        length: int | None = None
        is_mito: bool | None = None

    atlas = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", CellSchema, registry_schemas={"gene_expression": Gene}
    )
    for column, values, match in (
        (
            "length",
            pd.Series([1.7, None], dtype=object),
            r"non-integer value at row 0 \(uid 'A', value 1\.7\)",
        ),
        ("length", pd.Series([True, False], dtype=object), "bool"),
        ("is_mito", pd.Series([2, 0], dtype="int64"), "cannot be stored as bool"),
    ):
        frame = pd.DataFrame({"uid": ["A", "B"], column: values})
        with pytest.raises(FeatureRegistryError, match=rf"gene_expression: column '{column}': .*{match}"):
            atlas.register_features("gene_expression", frame)
    assert atlas.feature_registry("gene_expression").empty
    atlas.register_features("gene_expression", pd.DataFrame({"uid": ["A"], "length": [3], "is_mito": [True]}))
    assert atlas.feature_registry("gene_expression")[["length", "is_mito"]].values.tolist() == [[3, True]]


def test_unknown_on_conflict_is_refused(human_c3):
    with pytest.raises(ValueError, match="on_conflict must be 'error', 'keep' or 'update', got 'replace'"):
        human_c3.register_features("gene_expression", MOUSE, on_conflict="replace")


# ------------------------------------------------------------------------------------ duplicate content


def test_identical_content_under_another_uid_is_refused(atlas):
    first = _ingest(atlas, _adata(), "a")
    assert len(first.content_fingerprint) == 32  # format 2: XXH3-128
    before = visible_state(atlas)
    with pytest.raises(DuplicateContentError) as caught:
        _ingest(atlas, _adata(), "b")
    assert str(caught.value) == (
        "dataset 'b': the same content (matrix, obs names, layer 'counts', feature panel) is already in the "
        "atlas as dataset 'a'; pass on_duplicate='skip' to get that dataset's record or on_duplicate='allow' "
        "to store it again"
    )
    assert visible_state(atlas) == before
    assert _cells(atlas) == 200


def test_skip_returns_the_existing_record(atlas):
    first = _ingest(atlas, _adata(), "a")
    before = visible_state(atlas)
    with pytest.warns(
        DuplicateContentWarning, match="dataset 'b': the same content is already in the atlas as dataset 'a'"
    ):
        skipped = _ingest(atlas, _adata(), "b", on_duplicate="skip")
    assert skipped.uid == "a"
    assert skipped.zarr_group == first.zarr_group
    assert skipped.content_fingerprint == first.content_fingerprint
    assert visible_state(atlas) == before


def test_a_duplicate_writes_no_rows_and_no_table_version(atlas, monkeypatch):
    """A duplicate was found only at the commit: its CSC copy, layout and cell rows were written, then
    removed (four new versions of the cell table per refused file). It is found once the group's content is
    fingerprinted; and when the dataset holding that content is deleted before the commit, the record is
    refused (its rows were never written) rather than committed without them."""
    from lancell.errors import CommitConflictError
    from lancell.ingest import write_transaction

    _ingest(atlas, _adata(), "a")
    versions = atlas.table_versions()
    with pytest.raises(DuplicateContentError):
        _ingest(atlas, _adata(), "b")
    with pytest.warns(DuplicateContentWarning):
        _ingest(atlas, _adata(), "b", on_duplicate="skip")
    assert atlas.table_versions() == versions
    staged = write_transaction.WriteTransaction.stage

    def then_deleted(transaction):
        staged(transaction)
        atlas.delete_dataset("a")

    monkeypatch.setattr(write_transaction.WriteTransaction, "stage", then_deleted)
    with pytest.raises(
        CommitConflictError, match="dataset 'b': the dataset holding the same content was deleted"
    ):
        _ingest(atlas, _adata(), "b")
    assert atlas.list_datasets().empty and _cells(atlas) == 0  # 'a' deleted, 'b' not committed


def test_allow_ingests_again(atlas):
    first = _ingest(atlas, _adata(), "a")
    second = _ingest(atlas, _adata(), "b", on_duplicate="allow")
    assert second.content_fingerprint == first.content_fingerprint
    assert atlas.list_datasets()["uid"].tolist() == ["a", "b"]
    assert _cells(atlas) == 400


def test_one_changed_value_obs_name_or_layer_is_new_content(atlas):
    first = _ingest(atlas, _adata(), "a")
    changed = _adata()
    changed.X.data[17] += 1
    renamed = _adata()
    renamed.obs_names = [*renamed.obs_names[:-1], "another"]
    fingerprints = {
        _ingest(atlas, changed, "value").content_fingerprint,
        _ingest(atlas, renamed, "obs_name").content_fingerprint,
        _ingest(atlas, _adata(), "layer", zarr_layer="normalized").content_fingerprint,
        first.content_fingerprint,
    }
    assert len(fingerprints) == 4
    assert _cells(atlas) == 800


def test_same_content_in_another_form_is_a_duplicate(atlas, tmp_path, monkeypatch):
    """Var order, backed file and row blocking do not change what is stored, so not the fingerprint."""
    _ingest(atlas, _adata(), "a")
    shuffled = _adata()[:, GENES[::-1]].copy()
    with pytest.raises(DuplicateContentError, match="as dataset 'a'"):
        _ingest(atlas, shuffled, "shuffled")
    path = tmp_path / "a.h5ad"
    _adata().write_h5ad(path)
    monkeypatch.setattr(MatrixSource.csr_blocks, "__defaults__", (500,))  # many small blocks
    with pytest.raises(DuplicateContentError, match="as dataset 'a'"):
        _ingest(atlas, path, "from_file")
    assert atlas.list_datasets()["uid"].tolist() == ["a"]


def test_unknown_on_duplicate_is_refused_before_writing(atlas):
    before = visible_state(atlas, versions=True)
    with pytest.raises(IngestError, match="on_duplicate must be 'error', 'skip' or 'allow', got 'ignore'"):
        _ingest(atlas, _adata(), "a", on_duplicate="ignore")
    assert visible_state(atlas, versions=True) == before


def test_landing_the_same_file_twice_is_skipped(atlas, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    _adata().write_h5ad(landing / "first.h5ad")
    shutil.copyfile(landing / "first.h5ad", landing / "again.h5ad")
    record, outcome = ingest_landing_file(atlas, read_landing_spec(landing / "first.h5ad"))
    assert (record.uid, outcome) == ("first", "ingested")
    with pytest.warns(DuplicateContentWarning):
        record, outcome = ingest_landing_file(atlas, read_landing_spec(landing / "again.h5ad"))
    assert (record.uid, outcome) == ("first", "duplicate")
    assert ingest_landing_file(atlas, read_landing_spec(landing / "first.h5ad"))[1] == "present"
    assert atlas.list_datasets()["uid"].tolist() == ["first"]
    assert _cells(atlas) == 200


def test_the_sidecar_chooses_whether_the_csc_copy_is_written(atlas, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    for seed, csc in [(0, True), (1, False)]:  # 3,600 values: below the default's threshold, so no CSC
        _adata(seed=seed).write_h5ad(landing / f"{csc}.h5ad")
        (landing / f"{csc}.json").write_text(json.dumps({"csc": csc}))
        record, outcome = ingest_landing_file(atlas, read_landing_spec(landing / f"{csc}.h5ad"))
        assert outcome == "ingested"
        assert (tmp_path / "arrays" / record.zarr_group / "csc").exists() == csc
    (landing / "bad.json").write_text(json.dumps({"csc": "no"}))
    with pytest.raises(IngestError, match=r"bad\.json: csc must be true or false, got 'no'"):
        read_landing_spec(landing / "bad.h5ad")


# ------------------------------------------------------------------------------------ streaming read errors


def _corrupt_last_chunk(path: Path, dataset: str) -> None:
    """Overwrite the middle of the last stored chunk of ``dataset`` (gzip) with garbage."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(f[dataset].id.get_num_chunks() - 1)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + info.size // 4)
        raw.write(b"\xff" * (info.size // 2))


def test_a_corrupted_chunk_raises_ingest_error_naming_dataset_and_file(atlas, tmp_path, monkeypatch):
    _ingest(atlas, _adata(seed=1), "kept")
    path = tmp_path / "broken.h5ad"
    big = _adata(n_cells=4_000)
    big.write_h5ad(path, compression="gzip", compression_opts=1)
    with h5py.File(path, "r") as f:
        assert f["X/data"].id.get_num_chunks() > 1
    _corrupt_last_chunk(path, "X/data")
    monkeypatch.setattr(MatrixSource.csr_blocks, "__defaults__", (5_000,))  # good blocks are written first
    before = visible_state(atlas, versions=True)
    with pytest.raises(IngestError) as caught:
        _ingest(atlas, path, "broken")
    message = str(caught.value)
    assert message.startswith("dataset 'broken': cannot read rows ")
    assert f"from {path} (/X): OSError: " in message
    assert isinstance(caught.value.__cause__, OSError)
    assert visible_state(atlas, versions=True) == before


def test_a_roll_back_the_store_refuses_keeps_the_callers_error(atlas, monkeypatch, caplog):
    """LanceDB raises a bare RuntimeError when the store goes away; during a roll-back it replaced the
    ingestion's own error."""
    from lancell.ingest import write_transaction

    def store_gone(*args, **kwargs):
        raise RuntimeError("lance error: the object store is unreachable")

    def own_failure(self):
        raise IngestError("the ingestion's own failure")

    monkeypatch.setattr(write_transaction, "remove_group", store_gone)
    monkeypatch.setattr(write_transaction.WriteTransaction, "ready_record", own_failure)
    adata = ad.AnnData(
        sp.csr_matrix(np.ones((2, 2), np.int32)),
        obs=pd.DataFrame(index=["a", "b"]),
        var=pd.DataFrame(index=GENES[:2]),
    )
    with pytest.raises(IngestError, match="the ingestion's own failure"):
        add_from_anndata(atlas, adata, feature_space="gene_expression", zarr_layer="counts", progress=False)
    assert "roll-back of dataset" in caplog.text and "unreachable" in caplog.text


def test_a_store_failing_mid_write_is_a_store_error_naming_the_dataset(atlas, monkeypatch):
    """obstore's own errors (a frozen or unreachable server: ``GenericError``) are neither lancell's nor
    ``OSError``s; ingestion raised them as they came."""
    import obstore.exceptions

    from lancell.errors import StoreError
    from lancell.ingest import write_transaction

    def frozen(*args, **kwargs):
        raise obstore.exceptions.GenericError("the PUT failed after 10 retries")

    monkeypatch.setattr(write_transaction, "write_group", frozen)
    before = visible_state(atlas)
    adata = ad.AnnData(
        sp.csr_matrix(np.ones((2, 2), np.int32)),
        obs=pd.DataFrame(index=["a", "b"]),
        var=pd.DataFrame(index=GENES[:2]),
    )
    with pytest.raises(StoreError, match="dataset 'frozen': not ingested"):
        add_from_anndata(
            atlas,
            adata,
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid="frozen"),
            progress=False,
        )
    assert visible_state(atlas) == before


# ------------------------------------------------------------------------------------ the commit point


def test_an_interrupt_right_after_the_add_is_rolled_back_whole(atlas, monkeypatch):
    """A Ctrl-C after the records' add but before the transactions noted it: the roll-back deleted the cells
    and kept the records (validate(): "record says 200 cells, 0 cells point into" the group)."""
    from lancell.ingest.write_transaction import WriteTransaction

    def interrupted(transaction):
        raise KeyboardInterrupt

    _ingest(atlas, _adata(seed=1), "kept")
    monkeypatch.setattr(WriteTransaction, "record_added", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _ingest(atlas, _adata(seed=2), "interrupted")
    monkeypatch.undo()
    assert atlas.list_datasets()["uid"].tolist() == ["kept"]
    assert atlas.validate() == [] and _cells(atlas) == 200
    assert _ingest(atlas, _adata(seed=2), "interrupted").n_cells == 200


def test_an_interrupt_after_the_commit_keeps_the_dataset(atlas, monkeypatch):
    """A Ctrl-C while the content lock was released, after the record's commit: the roll-back deleted the
    dataset, which another ingestion of the same content (on_duplicate="skip"), taking the lock in that
    instant, had been told held its content: the content was in the atlas nowhere."""
    from lancell.tables.locks import Lease

    release = Lease.release
    told, started = [], []

    def interrupted(lease):
        release(lease)
        if lease.name.startswith("content-") and not started:
            started.append(lease.name)
            other = RaggedAtlas.open(atlas.core.db_uri)
            with pytest.warns(DuplicateContentWarning):
                told.append(_ingest(other, _adata(seed=2), "b", on_duplicate="skip"))
            raise KeyboardInterrupt

    _ingest(atlas, _adata(seed=1), "kept")
    monkeypatch.setattr(Lease, "release", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _ingest(atlas, _adata(seed=2), "a")
    monkeypatch.undo()
    assert [record.uid for record in told] == ["a"]
    assert sorted(atlas.list_datasets()["uid"]) == ["a", "kept"]
    assert atlas.validate() == [] and _cells(atlas) == 400


@pytest.mark.parametrize("when", ["after the commit", "before the commit"])
def test_an_interrupt_inside_the_records_commit_rolls_back_whole(atlas, monkeypatch, when):
    """A Ctrl-C arriving after the record's commit but before the transaction noted it: the roll-back
    deleted the cells and kept the record (700 cells recorded, 0 read; a re-run said "already there")."""

    def add(table, *args, **kwargs):
        if when == "after the commit":
            table.add(*args, **kwargs)
        raise KeyboardInterrupt

    _ingest(atlas, _adata(seed=1), "kept")
    with table_calls("datasets", add=add), pytest.raises(KeyboardInterrupt):
        _ingest(atlas, _adata(seed=2), "interrupted")
    assert atlas.list_datasets()["uid"].tolist() == ["kept"]
    assert atlas.validate() == [] and _cells(atlas) == 200
    assert _ingest(atlas, _adata(seed=2), "interrupted").n_cells == 200  # a re-run ingests it


def test_a_bad_value_in_a_new_panel_leaves_no_table_version(atlas):
    """The layout of a new feature panel is stored only once its group is written: a value refused while
    the matrix streams leaves every table at its version."""
    _ingest(atlas, _adata(), "first")
    before = visible_state(atlas, versions=True)
    x = _adata(50).X[:, :30].tocsr()
    x.data[-1] = -2
    bad = ad.AnnData(
        X=x, obs=pd.DataFrame(index=[f"c{i}" for i in range(50)]), var=pd.DataFrame(index=GENES[:30])
    )
    with pytest.raises(DataValueError, match="'bad'"):
        _ingest(atlas, bad, "bad")
    assert visible_state(atlas, versions=True) == before


@pytest.mark.parametrize("when", ["after the commit", "before the commit"])
def test_a_records_commit_whose_undo_fails_too_keeps_what_the_record_owns(atlas, monkeypatch, caplog, when):
    """The records' add failed (the disk full) and so did their deletion: the deletion's error replaced the
    add's, and the roll-back went on to delete the cell rows and group of a record that may have been
    committed (it was, "after the commit": the dataset lost its cells)."""
    from lancell.errors import StoreError

    def add(table, *args, **kwargs):
        if when == "after the commit":
            table.add(*args, **kwargs)
        raise RuntimeError("lance error: LanceError(IO): No space left on device (os error 28)")

    def delete(table, *args, **kwargs):
        raise RuntimeError("lance error: LanceError(IO): No space left on device (os error 28)")

    _ingest(atlas, _adata(seed=1), "kept")
    with table_calls("datasets", add=add, delete=delete):
        with pytest.raises(StoreError, match=r"'full': may be in the atlas .*No space left") as raised:
            _ingest(atlas, _adata(seed=2), "full")
    assert raised.value.errno == 28
    assert "so did their deletion" in caplog.text
    committed = when == "after the commit"
    assert sorted(atlas.list_datasets()["uid"]) == (["full", "kept"] if committed else ["kept"])
    assert atlas.validate() == [] and _cells(atlas) == (400 if committed else 200)  # (its debris hidden)
    assert atlas.vacuum(grace=timedelta(0))["cells"] == (0 if committed else 200)
    assert _cells(atlas) == (400 if committed else 200) and atlas.validate() == []
