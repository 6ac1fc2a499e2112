"""Operations interleaved at their worst moments, forced deterministically: a snapshot while a dataset is
deleted and vacuumed or versions are cleaned up, two ``add_layer`` calls, a deletion that stops between its
commits, a live read while uncommitted rows exist. Each ends with every returned call's effect readable
exactly, or with nothing visible of a failed one."""

from __future__ import annotations

import threading
from datetime import timedelta

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import lancell.snapshots as snapshots
from lancell.atlas import RaggedAtlas
from lancell.errors import CommitConflictError
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

GENES = [f"g{i}" for i in range(40)]


class Gene(FeatureBaseSchema):
    pass


class Cell(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def _adata(seed: int, n: int = 30) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = sp.random(n, len(GENES), density=0.3, format="csr", random_state=rng, dtype=np.float64)
    x.data = rng.integers(1, 50, x.nnz).astype(np.int32)
    return ad.AnnData(
        x.astype(np.int32),
        obs=pd.DataFrame(index=[f"c{seed}_{i}" for i in range(n)]),
        var=pd.DataFrame(index=GENES),
    )


def _ingest(atlas: RaggedAtlas, uid: str, seed: int) -> ad.AnnData:
    adata = _adata(seed)
    add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid=uid),
        progress=False,
    )
    return adata


@pytest.fixture
def db(tmp_path) -> str:
    db = str(tmp_path / "db")
    atlas = RaggedAtlas.create(db, "cells", Cell, registry_schemas={"gene_expression": Gene})
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    return db


def _values(atlas: RaggedAtlas, uid: str, layer: str = "counts") -> np.ndarray:
    """Dataset ``uid``'s ``layer`` as the atlas answers it: rows in obs-name order, columns ``GENES``."""
    out = atlas.query().where(f"dataset_uid = '{uid}'").layers("gene_expression", layer).to_anndata()
    frame = pd.DataFrame(out.X.toarray(), index=out.obs["obs_name"].to_numpy(), columns=out.var_names)
    return frame.sort_index().reindex(columns=GENES, fill_value=0).to_numpy()


def _expected(adata: ad.AnnData, factor: int = 1) -> np.ndarray:
    frame = pd.DataFrame(adata.X.toarray() * factor, index=adata.obs_names, columns=adata.var_names)
    return frame.sort_index().to_numpy()


def _during_snapshot(monkeypatch, other) -> list[threading.Thread]:
    """Run ``other`` on a thread once the snapshot has read its table versions, and give it 2 s before
    the snapshot tags and records them."""
    threads = []
    tag = snapshots.tag_tables

    def tag_after_other(*args, **kwargs):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(2.0)  # what other could do before the snapshot is recorded, it does now
        threads.append(thread)
        return tag(*args, **kwargs)

    monkeypatch.setattr(snapshots, "tag_tables", tag_after_other)
    return threads


def test_a_dataset_deleted_and_vacuumed_during_a_snapshot_stays_readable_from_it(db, monkeypatch):
    atlas = RaggedAtlas.open(db)
    gone = _ingest(atlas, "d0", 0)
    _ingest(atlas, "d1", 1)

    def delete_and_vacuum():
        other = RaggedAtlas.open(db)
        other.delete_dataset("d0")
        other.vacuum(grace=timedelta(0))

    threads = _during_snapshot(monkeypatch, delete_and_vacuum)
    version = atlas.snapshot()
    threads[0].join(60)
    pinned = RaggedAtlas.checkout(db, version)
    np.testing.assert_array_equal(_values(pinned, "d0"), _expected(gone))
    assert "d0" not in RaggedAtlas.open(db).list_datasets()["uid"].tolist()


def test_versions_cleaned_up_during_a_snapshot_stay_readable_from_it(db, monkeypatch):
    atlas = RaggedAtlas.open(db)
    first = _ingest(atlas, "d0", 0)

    def ingest_and_clean_up():
        other = RaggedAtlas.open(db)
        _ingest(other, "d1", 1)  # the snapshot's versions are no longer the newest
        other.optimize(cleanup_older_than=timedelta(0))

    threads = _during_snapshot(monkeypatch, ingest_and_clean_up)
    version = atlas.snapshot()
    threads[0].join(60)
    pinned = RaggedAtlas.checkout(db, version)
    assert pinned.list_datasets()["uid"].tolist() == ["d0"]
    np.testing.assert_array_equal(_values(pinned, "d0"), _expected(first))


def test_two_add_layer_calls_both_kept(db, monkeypatch):
    """The second call read the record before the first committed: the first's layer was overwritten."""
    atlas = RaggedAtlas.open(db)
    adata = _ingest(atlas, "d0", 0)
    core_lock = type(atlas.core).lock
    done = []

    def lock_after_another_add_layer(core, name, about=None):
        if not done:
            done.append(name)
            add_layer(RaggedAtlas.open(db), "d0", "normalized", adata.X * 2)
        return core_lock(core, name, about)

    monkeypatch.setattr(type(atlas.core), "lock", lock_after_another_add_layer)
    layers = add_layer(atlas, "d0", "log_normalized", adata.X * 3)
    assert layers == ["counts", "normalized", "log_normalized"]
    fresh = RaggedAtlas.open(db)
    assert list(fresh.list_datasets()["layers"].iloc[0]) == layers
    np.testing.assert_array_equal(_values(fresh, "d0", "normalized"), _expected(adata, 2))
    np.testing.assert_array_equal(_values(fresh, "d0", "log_normalized"), _expected(adata, 3))


@pytest.mark.parametrize("stop_at", [1, 2])
def test_a_deletion_stopped_between_its_commits_leaves_the_dataset_whole_or_gone(db, stop_at):
    atlas = RaggedAtlas.open(db)
    kept = _ingest(atlas, "d0", 0)
    other = _ingest(atlas, "d1", 1)
    calls = []
    for table in ("datasets", "cells"):
        handle = getattr(atlas.core.tables, table)

        def delete_or_stop(where, real=handle.delete):  # the process dies at its stop_at-th table commit
            calls.append(where)
            if len(calls) == stop_at:
                raise KeyboardInterrupt
            return real(where)

        handle.delete = delete_or_stop
    with pytest.raises(KeyboardInterrupt):
        atlas.delete_dataset("d0")
    fresh = RaggedAtlas.open(db)
    listed = "d0" in fresh.list_datasets()["uid"].tolist()
    if listed:
        np.testing.assert_array_equal(_values(fresh, "d0"), _expected(kept))
    else:
        assert fresh.query().count() == 30
    np.testing.assert_array_equal(_values(fresh, "d1"), _expected(other))
    assert fresh.validate() == []
    fresh.vacuum(grace=timedelta(0))
    if not listed:  # the rows left by the stopped deletion are gone, and the uid can be ingested again
        again = _ingest(fresh, "d0", 7)
        np.testing.assert_array_equal(_values(fresh, "d0"), _expected(again))
    assert fresh.query().count() == 60 and fresh.validate() == []


def test_a_live_handle_never_reads_rows_no_record_owns(db, monkeypatch):
    """Rows written after a live handle counted the table (another ingestion's, not yet committed) used to
    be read whenever the count matched the committed records."""
    atlas = RaggedAtlas.open(db)
    _ingest(atlas, "d0", 0)
    cells = atlas.core.tables.cells
    writer = RaggedAtlas.open(db)
    # an ingestion that has written its rows and not yet its record: its commit and its roll-back fail
    writer.core.tables.datasets.add = _fail
    writer.core.tables.cells.delete = _fail
    with pytest.raises(RuntimeError):
        _ingest(writer, "pending", 1)
    assert cells.count_rows() == 60
    monkeypatch.setattr(type(cells), "count_rows", lambda self, *a, **k: 30)  # counted before the rows
    assert atlas.query().count() == 30
    assert set(atlas.query().to_pandas()["dataset_uid"]) == {"d0"}
    assert atlas.query().layers("gene_expression", "counts").to_anndata().n_obs == 30


def _fail(*args, **kwargs):
    raise RuntimeError("this process stops here")


@pytest.mark.parametrize("conflicts", [2, 100])
def test_optimize_retries_a_compaction_another_commit_preempted(db, monkeypatch, conflicts):
    """LanceDB refuses a compaction's commit when a concurrent delete or write won (a bare RuntimeError)."""
    atlas = RaggedAtlas.open(db)
    kept = _ingest(atlas, "d0", 0)
    table_type = type(atlas.core.tables.cells)
    compact = table_type.optimize
    raised = []

    def preempted(self, *args, **kwargs):
        if len(raised) < conflicts:
            raised.append(self.name)
            raise RuntimeError("Retryable commit conflict for version 9: preempted by concurrent Delete")
        return compact(self, *args, **kwargs)

    monkeypatch.setattr(table_type, "optimize", preempted)
    if conflicts > 5:
        with pytest.raises(CommitConflictError, match="lost 6 commits in a row"):
            atlas.optimize()
    else:
        atlas.optimize()
    np.testing.assert_array_equal(_values(RaggedAtlas.open(db), "d0"), _expected(kept))


@pytest.mark.parametrize("scope", [None, "victim"])
def test_validate_on_a_live_handle_sees_a_deletion_or_an_ingestion_whole(db, monkeypatch, scope):
    """validate() read the dataset records, then the cell rows a moment later: a deletion or an ingestion
    committed in between was reported as damage ("record says 30 cells, 0 cells point into ...", "cells of
    unknown datasets")."""
    import lancell.validation as validation

    writer = RaggedAtlas.open(db)
    _ingest(writer, "keep", 0)
    _ingest(writer, "victim", 1)
    reader = RaggedAtlas.open(db, read_only=True)
    tallies, between = validation.cell_tallies, []

    def commit_then_tally(*args, **kwargs):
        if between:
            between.pop()()
        return tallies(*args, **kwargs)

    monkeypatch.setattr(validation, "cell_tallies", commit_then_tally)
    between.append(lambda: writer.delete_dataset("victim"))
    assert reader.validate(scope) == []
    if scope is None:
        between.append(lambda: _ingest(writer, "late", 2))
        assert reader.validate() == []
    monkeypatch.undo()
    assert reader.validate() == []


def test_a_reader_of_a_deleted_snapshot_whose_group_was_vacuumed_gets_group_not_found(db):
    """A group only a deleted snapshot kept, vacuumed with no grace: a handle (or a loader's dataset) that had
    read it got ShardFormatError, "the shard object is gone", as if the atlas were damaged; one that had not
    got GroupNotFoundError. Both get GroupNotFoundError, naming the group."""
    from lancell.errors import GroupNotFoundError

    writer = RaggedAtlas.open(db)
    _ingest(writer, "keep", 0)
    _ingest(writer, "victim", 1)
    first = writer.snapshot()
    writer.delete_dataset("victim")
    writer.snapshot()
    read_before, never_read = RaggedAtlas.checkout(db, first), RaggedAtlas.checkout(db, first)
    read_before.query().to_anndata()
    loader = read_before.query().to_cell_dataset("gene_expression", "counts")
    everyone = np.arange(len(loader))
    batch = loader.__getitems__(everyone)
    writer.delete_snapshot(first)
    assert writer.vacuum(grace=timedelta(0))["groups"] == 1
    for read in (
        lambda: read_before.query().to_anndata(),
        lambda: never_read.query().to_anndata(),
        lambda: read_before.query().features(["g1"], "gene_expression").to_anndata(),
    ):
        with pytest.raises(GroupNotFoundError, match="'victim-"):
            read()
    again = loader.__getitems__(everyone)  # its shards mapped before: still the snapshot's bytes, or an error
    for field in ("offsets", "indices", "values"):
        assert np.array_equal(getattr(again, field), getattr(batch, field))


def test_validate_reads_again_when_its_versions_are_pruned_under_it(db, monkeypatch):
    """Another process's optimize(cleanup_older_than=0) removed the data files of the versions validate()
    had pinned: it reported "a data file ... is missing" on a healthy atlas (snapshot() then failed)."""
    import lancell.validation as validation

    writer = RaggedAtlas.open(db)
    _ingest(writer, "a", 0)
    _ingest(writer, "b", 1)
    reader = RaggedAtlas.open(db, read_only=True)
    tallies, prunes = validation.cell_tallies, [lambda: writer.optimize(cleanup_older_than=timedelta(0))]

    def pruned_then_tally(*args, **kwargs):
        if prunes:
            prunes.pop()()
        return tallies(*args, **kwargs)

    monkeypatch.setattr(validation, "cell_tallies", pruned_then_tally)
    assert reader.validate() == []
    assert not prunes  # (the versions were pruned during the first read)
