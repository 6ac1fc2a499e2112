"""Several modalities per cell: attach, reconstruct with to_mudata, delete, roll back."""

from __future__ import annotations

import warnings
from datetime import timedelta

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import visible_state
from mudata import MuData

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED
from lancell.errors import DroppedColumnsWarning, IngestError, LancellWarning, QueryError, UnmeasuredDataError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.ingest.modalities import add_from_mudata, attach_modality
from lancell.query.reconstruct import presence_matrix
from lancell.tables.schema import (
    DatasetRecord,
    DenseZarrPointer,
    FeatureBaseSchema,
    LancellBaseSchema,
    SparseZarrPointer,
)
from lancell.tables.visibility import recorded_cells


class Feature(FeatureBaseSchema):
    pass


class TwoModalities(LancellBaseSchema):
    cell_type: str | None = None
    gene_expression: SparseZarrPointer | None = None
    programs: DenseZarrPointer | None = None


def _programs(pbmc: ad.AnnData) -> ad.AnnData:
    """A dense second modality derived from the real data: mean expression of 8 gene blocks per cell."""
    x = pbmc.X.toarray()
    blocks = np.array_split(np.arange(pbmc.n_vars), 8)
    scores = np.stack([x[:, b].mean(axis=1) for b in blocks], axis=1).astype(np.float32)
    return ad.AnnData(
        X=scores, obs=pd.DataFrame(index=pbmc.obs_names), var=pd.DataFrame(index=[f"p{i}" for i in range(8)])
    )


@pytest.fixture
def two(tmp_path):
    pbmc = BUNDLED[0].read()
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        TwoModalities,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Feature, "programs": Feature},
        layers={"gene_expression": ["log_normalized"], "programs": ["scores"]},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": pbmc.var_names}))
    atlas.register_features("programs", pd.DataFrame({"uid": [f"p{i}" for i in range(8)]}))
    return atlas, pbmc


def _ingest_pbmc(atlas, mdata, **kwargs):
    """``add_from_mudata`` of ``rna`` (gene expression) and ``prog`` (programs) as dataset ``pbmc``."""
    return add_from_mudata(
        atlas,
        mdata,
        {"rna": ("gene_expression", "log_normalized"), "prog": ("programs", "scores")},
        dataset_record=DatasetRecord(uid="pbmc"),
        progress=False,
        **kwargs,
    )


def test_mudata_round_trip_aligned_by_uid(two):
    atlas, pbmc = two
    programs = _programs(pbmc)
    subset = programs[::3].copy()  # only every third cell has the second modality
    mdata = MuData({"rna": pbmc, "prog": subset})
    records = _ingest_pbmc(atlas, mdata)
    assert [r.uid for r in records] == ["pbmc", "pbmc/programs"]
    assert atlas.validate() == []
    # the Dagster snapshot check summed every record's n_cells: an attached modality counted its cells twice
    assert recorded_cells(atlas.list_datasets()) == atlas.query().count() == pbmc.n_obs
    # the layers per dataset are those of the query's feature space (the host's were shown for every space)
    per_dataset = atlas.query().feature_space("programs").count(group_by="dataset_uid")
    assert per_dataset.to_dict("index") == {"pbmc": {"cells": pbmc.n_obs, "layers": ["scores"]}}
    per_dataset = atlas.query().count(group_by="dataset_uid")
    assert per_dataset.to_dict("index") == {"pbmc": {"cells": pbmc.n_obs, "layers": ["log_normalized"]}}
    # the cells of an attached modality keep their dataset_uid: naming the modality's uid matched nothing
    with pytest.raises(QueryError, match=r"attached to the cells of 'pbmc'.*where\('programs IS NOT NULL'\)"):
        atlas.query().where(dataset_uid=["other", "pbmc/programs"])
    with pytest.raises(QueryError, match="attached to the cells of 'pbmc'"):
        atlas.query().where(dataset_uid=np.array(["pbmc/programs"]))
    assert atlas.query().where("dataset_uid >= 'a' AND dataset_uid <= 'z'").count() == pbmc.n_obs  # a range
    # a tuple of labels was a range of text: every label sorting between the two (a list was meant)
    with pytest.raises(QueryError, match=r"a tuple is a range \(low, high\), for numbers and times; for "):
        atlas.query().where(dataset_uid=("a", "z"))
    atlas.snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mudata's notice of its next default was passed on to every caller
        out = atlas.query().to_mudata()
    assert set(out.mod) == {"gene_expression", "programs"}
    rna, prog = out["gene_expression"], out["programs"]
    assert rna.n_obs == pbmc.n_obs and prog.n_obs == subset.n_obs
    assert set(prog.obs_names) <= set(rna.obs_names)
    order = [n.split(":", 1)[1] for n in prog.obs_names]
    np.testing.assert_array_equal(prog[:, subset.var_names].X, subset[order].X)
    aligned = rna[[f"pbmc:{n}" for n in pbmc.obs_names], pbmc.var_names]  # attaching rewrote row order
    np.testing.assert_array_equal(aligned.X.toarray(), pbmc.X.toarray())
    assert out.n_obs == pbmc.n_obs
    assert atlas.query().where("programs IS NOT NULL").count() == subset.n_obs
    # the attached modality's features are marked measured for its cells (obs names the cells' dataset)
    assert set(prog.obs["dataset_uid"]) == {"pbmc"} and presence_matrix(prog).toarray().all()
    # kept as empty rows, the cells without it are never marked measured (presence is per dataset: the
    # partly covered dataset is marked unmeasured throughout)
    kept = atlas.query().feature_space("programs").on_unmeasured("keep").to_anndata()
    assert kept.n_obs == pbmc.n_obs and not presence_matrix(kept).toarray().any()


def test_a_mudatas_modality_stores_the_layers_named(tmp_path):
    """Only a modality's X could be stored: counts in rna.layers["counts"] had no way in."""
    pbmc = BUNDLED[0].read()
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        TwoModalities,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Feature, "programs": Feature},
        layers={"gene_expression": ["counts", "log_normalized"], "programs": ["scores"]},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": pbmc.var_names}))
    atlas.register_features("programs", pd.DataFrame({"uid": [f"p{i}" for i in range(8)]}))
    counts = pbmc.X.copy()
    counts.data = np.arange(1, counts.nnz + 1, dtype=np.float32) % 9 + 1
    pbmc.layers["counts"] = counts
    mdata = MuData({"rna": pbmc, "prog": _programs(pbmc)})
    layers = {"counts": "counts", "log_normalized": "X"}
    with pytest.raises(IngestError, match=r"each is \(feature_space, zarr_layer\)"):
        add_from_mudata(atlas, mdata, {"rna": "gene_expression"}, progress=False)
    add_from_mudata(
        atlas,
        mdata,
        {"rna": ("gene_expression", layers), "prog": ("programs", "scores")},
        dataset_record=DatasetRecord(uid="pbmc"),
        progress=False,
    )
    out = atlas.query().layers("gene_expression", ["counts", "log_normalized"]).to_anndata()
    aligned = out[[f"pbmc:{n}" for n in pbmc.obs_names], pbmc.var_names]
    np.testing.assert_array_equal(aligned.X.toarray(), counts.toarray())  # (the first layer asked for)
    np.testing.assert_array_equal(aligned.layers["log_normalized"].toarray(), pbmc.X.toarray())


def test_a_mudata_file_is_read_from_its_path_and_refused_by_the_command_line(two, tmp_path, capsys):
    """add_from_mudata(atlas, "x.h5mu") was an AttributeError; lancell ingest read an .h5mu as an .h5ad."""
    from lancell import cli

    atlas, pbmc = two
    path = tmp_path / "cite.h5mu"
    MuData({"rna": pbmc, "prog": _programs(pbmc)}).write(path)
    with pytest.raises(IngestError, match=r"takes a MuData or the path of an \.h5mu file, got a int"):
        add_from_mudata(atlas, 3, {"rna": ("gene_expression", "log_normalized")})
    with pytest.raises(IngestError, match=r"an \.h5ad or a 10x output is ingested with add_from_anndata"):
        add_from_mudata(atlas, BUNDLED[0].path, {"rna": ("gene_expression", "log_normalized")})  # (TypeError)
    assert cli.main(["ingest", atlas.db_uri, str(path)]) == 1
    assert "a MuData file, which ingest does not read: ingest it from Python" in capsys.readouterr().err
    _ingest_pbmc(atlas, str(path))
    assert atlas.query().count() == pbmc.n_obs and atlas.validate() == []


def test_a_vacuum_dry_run_counts_a_killed_runs_rows_once(two):
    """Rows pointing into both groups of a MuData run killed before its commit were counted for each group
    by the dry run; the real run deletes them with the first."""
    atlas, pbmc = two
    _ingest_pbmc(atlas, MuData({"rna": pbmc, "prog": _programs(pbmc)}))
    atlas.core.tables.datasets.delete("true")  # what a kill before the records' commit leaves
    planned = atlas.vacuum(grace=timedelta(0), dry_run=True)
    assert planned == atlas.vacuum(grace=timedelta(0)) == {
        "groups": 2, "cells": pbmc.n_obs, "unclaimed": 0, "foreign": 0
    }  # fmt: skip


def test_a_mudatas_modalities_are_committed_together(two, monkeypatch):
    """The first modality was committed before the others were written, then deleted again when one failed:
    meanwhile readers saw it, and another ingestion of its content was told it was in the atlas."""
    from lancell.ingest.write_transaction import WriteTransaction

    atlas, pbmc = two
    committed_before_ready = []
    ready_record = WriteTransaction.ready_record

    def counted(transaction):
        committed_before_ready.append(len(RaggedAtlas.open(atlas.core.db_uri).list_datasets()))
        return ready_record(transaction)

    monkeypatch.setattr(WriteTransaction, "ready_record", counted)
    mdata = MuData({"rna": pbmc, "prog": _programs(pbmc)})
    spaces = {"rna": ("gene_expression", "log_normalized"), "prog": ("programs", "scores")}
    add_from_mudata(atlas, mdata, spaces, dataset_record=DatasetRecord(uid="pbmc"), progress=False)
    assert committed_before_ready == [0, 0]
    strangers = _programs(pbmc)[:5].copy()
    strangers.obs_names = [f"x{i}" for i in range(5)]
    before = visible_state(atlas)
    with pytest.raises(IngestError, match=r"5 obs names of modality 'prog' are not cells of its first"):
        add_from_mudata(
            atlas, MuData({"rna": pbmc, "prog": strangers}), spaces, dataset_record=DatasetRecord(uid="b")
        )
    assert visible_state(atlas) == before
    twice = {
        "rna": ("gene_expression", "log_normalized"),
        "p1": ("programs", "scores"),
        "p2": ("programs", "s"),
    }
    mdata = MuData({"rna": pbmc, "p1": _programs(pbmc), "p2": _programs(pbmc)})
    with pytest.raises(IngestError, match=r"modalities \{'p1': 'programs', 'p2': 'programs'\} share"):
        add_from_mudata(atlas, mdata, twice, dataset_record=DatasetRecord(uid="c"))  # waited on its own lock
    assert visible_state(atlas) == before


def test_a_global_obs_column_that_disagrees_with_the_first_modalitys_is_refused(two):
    """The cells keep one column of each name: a curated ``mdata.obs["cell_type"]`` was dropped silently
    when the first modality had its own ``cell_type``; the same values in both are fine."""
    atlas, pbmc = two
    rna = pbmc[:30].copy()
    rna.obs = pd.DataFrame({"cell_type": ["from rna"] * 30}, index=rna.obs_names)
    mdata = MuData({"rna": rna, "prog": _programs(rna)})
    mdata.obs["cell_type"] = ["curated"] * 30
    modalities = {"rna": ("gene_expression", "log_normalized"), "prog": ("programs", "scores")}
    before = visible_state(atlas)
    with pytest.raises(IngestError, match=r"mdata.obs columns \['cell_type'\] differ .*mdata\['rna'\]"):
        add_from_mudata(atlas, mdata, modalities, dataset_record=DatasetRecord(uid="m"), progress=False)
    assert visible_state(atlas) == before
    mdata.obs["cell_type"] = ["from rna"] * 30
    # missing values agree whatever their kind (pd.NA of an Int64 column, NaN of a float one)
    mdata.mod["rna"].obs["size"] = pd.array([1, None] * 15, dtype="Int64")
    mdata.obs["size"] = [1.0, np.nan] * 15
    add_from_mudata(atlas, mdata, modalities, dataset_record=DatasetRecord(uid="m"), progress=False)
    assert set(atlas.query().to_pandas()["cell_type"]) == {"from rna"}


def test_a_mudata_and_an_attached_modality_take_the_csc_choice(two):
    """``add_from_mudata`` and ``attach_modality`` had no ``csc``: a sparse modality got the copy by size
    only. A MuData's ``csc=True`` is the sparse modalities' (no warning for the dense one); an attached dense
    modality asked for one is warned about."""
    atlas, pbmc = two
    programs = _programs(pbmc)
    mdata = MuData({"rna": pbmc, "prog": programs[::2].copy()})  # 174,400 values: no copy by default
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = _ingest_pbmc(atlas, mdata, csc=True)
    assert not [w for w in caught if "csc" in str(w.message)]
    copied = [atlas.core.zarr_root[r.zarr_group].attrs.get("csc_layers") for r in records]
    assert copied == [["log_normalized"], None]
    with pytest.warns(LancellWarning, match=r"csc=True is ignored: feature spaces \['programs'\] are dense"):
        add_from_mudata(
            atlas,
            MuData({"prog": _programs(pbmc)}),
            {"prog": ("programs", "scores")},
            dataset_record=DatasetRecord(uid="scores_only"),
            csc=True,
            progress=False,
        )
    with pytest.warns(LancellWarning, match=r"csc=True is ignored: feature spaces \['programs'\] are dense"):
        attach_modality(
            atlas,
            programs[1::2].copy(),  # the cells the MuData's modality left out
            cells_of="pbmc",
            feature_space="programs",
            zarr_layer="scores",
            dataset_record=DatasetRecord(uid="pbmc/again"),
            csc=True,
            progress=False,
        )


@pytest.fixture
def ingested(two):
    """``two`` with the bundled PBMC data ingested as dataset ``pbmc`` (its first modality)."""
    atlas, pbmc = two
    add_from_anndata(
        atlas,
        pbmc,
        feature_space="gene_expression",
        zarr_layer="log_normalized",
        dataset_record=DatasetRecord(uid="pbmc"),
        progress=False,
    )
    return atlas, pbmc


def test_attach_errors_leave_atlas_unchanged(ingested):
    atlas, pbmc = ingested
    before = visible_state(atlas)
    programs = _programs(pbmc)
    strangers = programs.copy()
    strangers.obs_names = [f"x{i}" for i in range(strangers.n_obs)]
    with pytest.raises(IngestError, match="not cells of"):
        attach_modality(atlas, strangers, cells_of="pbmc", feature_space="programs", zarr_layer="scores")
    with pytest.raises(IngestError, match="no dataset"):
        attach_modality(atlas, programs, cells_of="nope", feature_space="programs", zarr_layer="scores")
    assert visible_state(atlas) == before
    attach_modality(
        atlas, programs, cells_of="pbmc", feature_space="programs", zarr_layer="scores", progress=False
    )
    with pytest.raises(IngestError, match="already carry"):
        attach_modality(
            atlas,
            programs,
            cells_of="pbmc",
            feature_space="programs",
            zarr_layer="scores",
            dataset_record=DatasetRecord(uid="again"),
        )
    with pytest.raises(IngestError, match="'pbmc/programs' is a modality attached to the cells of 'pbmc'"):
        attach_modality(
            atlas, programs, cells_of="pbmc/programs", feature_space="programs", zarr_layer="scores"
        )
    atlas.delete_dataset("pbmc/programs")
    assert atlas.query().where("programs IS NOT NULL").count() == 0
    assert atlas.query().count() == pbmc.n_obs
    assert atlas.validate() == []
    attach_modality(
        atlas, programs, cells_of="pbmc", feature_space="programs", zarr_layer="scores", progress=False
    )
    atlas.delete_dataset("pbmc")
    assert atlas.query().count() == 0 and atlas.list_datasets().empty
    assert atlas.validate() == []


def test_attached_obs_columns_are_listed_as_dropped_and_warned(ingested):
    atlas, pbmc = ingested
    programs = _programs(pbmc)
    # the cells keep their own cell_type: this one is not stored (nor converted: a NUL in it was refused)
    programs.obs["cell_type"] = "T cell\0"
    # the schema declares cell_type: the warning said it was not in the cell schema
    attached = r"obs columns \['cell_type'\] belong to a modality attached to the cells of 'pbmc', which keep"
    with pytest.warns(DroppedColumnsWarning, match=attached):
        record = attach_modality(
            atlas, programs, cells_of="pbmc", feature_space="programs", zarr_layer="scores", progress=False
        )
    assert record.dropped_obs_columns == ["cell_type"]
    stored = atlas.list_datasets().set_index("uid").loc["pbmc/programs"]
    assert list(stored["dropped_obs_columns"]) == ["cell_type"]
    assert len(stored["content_fingerprint"]) == 32
    # a live modality's group (pbmc_programs-<random>): vacuum keeps it
    assert atlas.vacuum(grace=timedelta(0))["groups"] == 0
    assert atlas.validate() == []


def test_vacuum_detaches_a_stopped_modality_deletion_in_a_snapshot_group(ingested):
    """A modality's deletion stopped after its record: a snapshot pinning its group kept vacuum from
    detaching the cells' pointers into it, for good."""
    atlas, pbmc = ingested
    attach_modality(
        atlas, _programs(pbmc), cells_of="pbmc", feature_space="programs", zarr_layer="scores", progress=False
    )
    version = atlas.snapshot()
    atlas.core.tables.datasets.delete("uid = 'pbmc/programs'")  # where the stopped deletion left it
    assert atlas.core.tables.cells.count_rows("programs IS NOT NULL") == pbmc.n_obs
    assert atlas.vacuum(grace=timedelta(0)) == {"groups": 0, "cells": 0, "unclaimed": 0, "foreign": 0}
    assert atlas.core.tables.cells.count_rows("programs IS NOT NULL") == 0
    assert atlas.query().count() == pbmc.n_obs and atlas.validate() == []
    pinned = RaggedAtlas.checkout(atlas.db_uri, version).query().layers("programs", "scores").to_anndata()
    assert np.allclose(pinned.X, _programs(pbmc).X)  # the snapshot reads the group it kept


class Study(DatasetRecord):
    """A dataset schema with a required field."""

    tissue: str


def _small_mudata(pbmc: ad.AnnData) -> MuData:
    rna = pbmc[:20].copy()
    rna.obs = rna.obs[[]]
    return MuData({"rna": rna, "prog": _programs(rna)})


def test_attached_modalities_keep_the_records_provenance(two):
    """add_from_mudata stored the attached modality's record without the name, source and accession given."""
    atlas, pbmc = two
    given = DatasetRecord(uid="pbmc", name="CITE run", source="s3://lab/run.h5mu", accession="GSE1")
    records = add_from_mudata(
        atlas,
        _small_mudata(pbmc),
        {"rna": ("gene_expression", "log_normalized"), "prog": ("programs", "scores")},
        dataset_record=given,
        progress=False,
    )
    stored = atlas.list_datasets().set_index("uid")
    for uid in ("pbmc", "pbmc/programs"):
        assert tuple(stored.loc[uid, ["name", "source", "accession"]]) == (
            "CITE run",
            "s3://lab/run.h5mu",
            "GSE1",
        )
    assert [r.uid for r in records] == ["pbmc", "pbmc/programs"]


def test_a_dataset_schema_with_a_required_field_needs_a_record_typed(tmp_path):
    """Without dataset_record, such a schema raised pydantic's ValidationError, not an IngestError."""
    pbmc = BUNDLED[0].read()[:20].copy()
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        TwoModalities,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Feature, "programs": Feature},
        layers={"gene_expression": ["log_normalized"], "programs": ["scores"]},
        dataset_schema=Study,
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": pbmc.var_names}))
    atlas.register_features("programs", pd.DataFrame({"uid": [f"p{i}" for i in range(8)]}))
    pbmc.obs = pbmc.obs[[]]
    with pytest.raises(
        IngestError, match=r"dataset schema Study requires \['tissue'\].*pass dataset_record=Study"
    ):
        add_from_anndata(
            atlas, pbmc, feature_space="gene_expression", zarr_layer="log_normalized", progress=False
        )
    spaces = {"rna": ("gene_expression", "log_normalized"), "prog": ("programs", "scores")}
    record = Study(uid="m", tissue="blood")
    add_from_mudata(atlas, _small_mudata(pbmc), spaces, dataset_record=record, progress=False)
    assert atlas.list_datasets().set_index("uid").loc["m/programs", "tissue"] == "blood"


def test_mudata_inputs_it_cannot_read_as_given_are_refused_typed(two, tmp_path):
    """A backed MuData and repeated obs names beside an mdata.obs column raised anndata's and pandas'
    ValueErrors; a later modality's raw was dropped without a word, and a global 'qc:pass' column too."""
    import mudata

    atlas, pbmc = two
    spaces = {"rna": ("gene_expression", "log_normalized"), "prog": ("programs", "scores")}
    mdata = _small_mudata(pbmc)
    mdata.write(tmp_path / "m.h5mu")
    with pytest.raises(IngestError, match=r"modalities \['rna', 'prog'\] are backed: add_from_mudata reads"):
        add_from_mudata(atlas, mudata.read_h5mu(tmp_path / "m.h5mu", backed=True), spaces, progress=False)
    repeated = _small_mudata(pbmc)
    names = repeated.mod["prog"].obs_names.tolist()
    repeated.mod["prog"].obs_names = [names[0], *names[:-1]]
    repeated.update()
    repeated.obs["batch"] = "b1"
    with pytest.raises(IngestError, match="obs names repeat"):
        add_from_mudata(atlas, repeated, spaces, progress=False)
    assert atlas.list_datasets().empty
    kept = _small_mudata(pbmc)
    kept.mod["prog"].raw = kept.mod["prog"].copy()
    kept.obs["qc:pass"] = True  # not a modality's copy ("<modality>:<column>")
    with pytest.warns(LancellWarning) as caught:
        records = add_from_mudata(atlas, kept, spaces, dataset_record=DatasetRecord(uid="k"), progress=False)
    messages = [str(w.message) for w in caught]
    assert any("dataset 'k/programs': adata.raw" in m and "is not stored" in m for m in messages)
    assert "qc:pass" in records[0].dropped_obs_columns


def test_pointers_into_a_modality_without_a_record_are_not_carried_by_to_mudata(two):
    """An attachment between its pointers' commit and its record's (or killed there), or a deletion stopped
    between its record and its pointers: to_mudata raised UnmeasuredDataError ("their group has no any
    layer") until the attachment was run again or vacuum's grace passed."""
    atlas, pbmc = two
    programs = _programs(pbmc)[::3].copy()
    _ingest_pbmc(atlas, MuData({"rna": pbmc, "prog": programs}))
    atlas.core.tables.datasets.delete("uid = 'pbmc/programs'")  # the record gone, its pointers left
    out = atlas.query().to_mudata()
    assert out["gene_expression"].n_obs == pbmc.n_obs and out["programs"].n_obs == 0
    with pytest.raises(UnmeasuredDataError, match=r"their group has no dataset record"):
        atlas.query().feature_space("programs").where("programs IS NOT NULL").to_anndata()
