"""A live handle's terminal reads one state of the atlas, whatever another writer commits during the call.

Each case lets a second handle (another process, as far as the reader can tell) commit in the middle of a
read: between the reads of the cell rows and of the dataset records they are planned with. Before the
terminals pinned the live tables (``AtlasCore.read_view``), ``to_batches()`` streamed a dataset committed
meanwhile as zero rows with no error, and ``to_anndata()`` called a deleted dataset's committed cells
unmeasured (zero rows under ``"keep"``, a false ``UnmeasuredDataError`` under ``"error"``).
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

import lancell.query.plan as plan_module
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, build_bundled_atlas, gene_features, ingest_bundled
from lancell.core import AtlasCore
from lancell.errors import AtlasNotFoundError, CommitConflictError, StoreError
from lancell.query.cell_selection import CellSelection
from lancell.tables.atlas_tables import AtlasTables

COUNTS = ("gene_expression", "counts")


def _during(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, write) -> None:
    """Run ``write()`` once, the first time ``owner.name`` is called, before it reads."""
    original = getattr(owner, name)
    done = []

    def first_call_writes(*args, **kwargs):
        if not done:
            done.append(True)
            write()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, first_call_writes)


def _expected(atlas: RaggedAtlas, uid: str):
    return atlas.query().where(dataset_uid=uid).layers(*COUNTS).to_anndata()


def test_to_batches_streams_the_rows_it_planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = build_bundled_atlas(tmp_path, BUNDLED[1:2])
    reader = RaggedAtlas.open(str(tmp_path / "db"))

    def commit_mouse() -> None:
        writer.register_features("gene_expression", gene_features(BUNDLED[2:3]))
        ingest_bundled(writer, BUNDLED[2])

    _during(monkeypatch, CellSelection, "batches", commit_mouse)
    batches = list(reader.query().layers(*COUNTS).to_batches(batch_size=100_000))
    assert [b.obs["dataset_uid"].unique().tolist() for b in batches] == [["celltypist_sample"]]
    monkeypatch.undo()
    mouse = reader.query().where(dataset_uid="mouse_10k").layers(*COUNTS).to_batches(batch_size=100_000)
    assert next(mouse).X.nnz == _expected(writer, "mouse_10k").X.nnz > 0  # the next call sees it whole


@pytest.mark.parametrize("policy", ["error", "keep"])
def test_a_dataset_deleted_during_a_read_is_read_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    writer = build_bundled_atlas(tmp_path, BUNDLED[1:3])
    reader = RaggedAtlas.open(str(tmp_path / "db"))
    before = _expected(reader, "mouse_10k")
    _during(monkeypatch, plan_module, "_group_records", lambda: writer.delete_dataset("mouse_10k"))
    adata = reader.query().layers(*COUNTS).on_unmeasured(policy).to_anndata()
    mouse = adata[(adata.obs["dataset_uid"] == "mouse_10k").to_numpy()]
    assert mouse.n_obs == before.n_obs and adata.uns["lancell"]["unmeasured_datasets"] == []
    columns = adata.var_names.get_indexer(before.var_names)
    np.testing.assert_array_equal(mouse.X[:, columns].toarray(), before.X.toarray())
    assert mouse.X.nnz == before.X.nnz
    monkeypatch.undo()
    assert reader.query().where(dataset_uid="mouse_10k").count() == 0  # the next call: deleted


def test_a_loader_dataset_plans_the_rows_it_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = build_bundled_atlas(tmp_path, BUNDLED[1:3])
    reader = RaggedAtlas.open(str(tmp_path / "db"))
    expected = _expected(reader, "mouse_10k")
    _during(monkeypatch, plan_module, "_group_records", lambda: writer.delete_dataset("mouse_10k"))
    dataset = reader.query().where(dataset_uid="mouse_10k").to_cell_dataset(*COUNTS)
    batch = dataset.__getitems__(np.arange(len(dataset)))
    assert len(dataset) == expected.n_obs and int(batch.offsets[-1]) == expected.X.nnz


@pytest.mark.parametrize("reingest", [False, True])
def test_table_versions_are_read_at_one_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reingest: bool
) -> None:
    """The versions of the tables are read one after another: a deletion (and a re-ingestion of the uid, or
    another dataset's commit) between the cell table's and the dataset table's paired rows and records of two
    states, so the deleted dataset's cells read as unmeasured, or were counted without a record."""
    writer = build_bundled_atlas(tmp_path, BUNDLED[1:3])
    reader = RaggedAtlas.open(str(tmp_path / "db"))
    original = AtlasTables.versions

    def between_two_tables(tables: AtlasTables) -> dict[str, int]:
        cells = tables.cells.version
        monkeypatch.setattr(AtlasTables, "versions", original)
        writer.delete_dataset("mouse_10k")
        if reingest:
            ingest_bundled(writer, BUNDLED[2])
        return {**original(tables), tables.cell_table_name: cells}

    monkeypatch.setattr(AtlasTables, "versions", between_two_tables)
    adata = reader.query().layers(*COUNTS).on_unmeasured("keep").to_anndata()
    expected = {"celltypist_sample": 559, **({"mouse_10k": 10_000} if reingest else {})}
    assert adata.obs["dataset_uid"].value_counts().to_dict() == expected
    assert adata.uns["lancell"]["unmeasured_datasets"] == []


def test_versions_removed_during_a_read_are_read_again_or_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """optimize(cleanup_older_than=...) in another process removed a live read's pinned versions: Lance's
    untyped "Version N no longer exists" (14 times in a two-process run) or "Not found" escaped."""
    build_bundled_atlas(tmp_path, BUNDLED[1:2])
    query = RaggedAtlas.open(str(tmp_path / "db")).query().layers(*COUNTS)
    removed = ValueError("Version 7 no longer exists. Was it cleaned up?")

    def removing(name: str, times: int) -> None:
        """``CellSelection.<name>`` raises Lance's error ``times`` times, then reads."""
        original, left = getattr(CellSelection, name), [times]

        def read(self, *args, **kwargs):
            if left[0]:
                left[0] -= 1
                raise removed
            return original(self, *args, **kwargs)

        monkeypatch.setattr(CellSelection, name, read)

    removing("read", 1)
    assert query.to_anndata().n_obs == 559  # read again at the current versions
    removing("read", 2)
    with pytest.raises(CommitConflictError, match="were removed while it read them"):
        query.to_anndata()
    monkeypatch.undo()
    removing("batches", 1)  # before the first batch: read again
    assert sum(batch.n_obs for batch in query.to_batches(100)) == 559
    removing("batches", 2)
    with pytest.raises(CommitConflictError, match="were removed while it read them"):
        next(query.to_batches(100))


def _new_versions_pruned(writer: RaggedAtlas) -> None:
    """A commit to every table, then a cleanup of every version but the latest (another process's
    ``delete_dataset``, re-ingestion and ``optimize(cleanup_older_than=timedelta(0))``)."""
    writer.delete_dataset("mouse_10k")
    ingest_bundled(writer, BUNDLED[2])
    writer.optimize(cleanup_older_than=timedelta(0))


def test_versions_pruned_before_a_read_opens_them_are_read_at_the_current_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The versions a live read pinned were pruned before it opened them: every terminal and validate()
    raised AtlasNotFoundError ("table 'cells' at version N is not in the atlas database") about a healthy
    atlas."""
    writer = build_bundled_atlas(tmp_path, BUNDLED[1:3])
    reader = RaggedAtlas.open(str(tmp_path / "db"), read_only=True)
    calls = {
        "to_anndata": lambda: reader.query().layers(*COUNTS).to_anndata().n_obs,
        "count": lambda: reader.query().count(),
        "to_batches": lambda: sum(b.n_obs for b in reader.query().layers(*COUNTS).to_batches(4_000)),
        "validate": lambda: len(reader.validate()) + 10_559,
    }
    for name, call in calls.items():
        _after(monkeypatch, AtlasTables, "consistent_versions", lambda: _new_versions_pruned(writer))
        assert call() == 10_559, name
        monkeypatch.undo()


def test_versions_pruned_during_a_read_are_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The versions a live read pinned were pruned while it read them: the pruned data file's "Not found",
    said as a StoreError, escaped instead of the read being done again at the current versions."""
    writer = build_bundled_atlas(tmp_path, BUNDLED[1:2])  # (snapshot: its versions are tagged, kept)
    writer.register_features("gene_expression", gene_features(BUNDLED[2:3]))
    ingest_bundled(writer, BUNDLED[2])
    reader = RaggedAtlas.open(str(tmp_path / "db"), read_only=True)
    # compaction: the files only the versions the read pinned (the manifests it opened) hold are removed
    _after(monkeypatch, AtlasCore, "read_view", lambda: writer.optimize(cleanup_older_than=timedelta(0)))
    adata = reader.query().layers(*COUNTS).to_anndata()
    counts = adata.obs["dataset_uid"].value_counts().to_dict()
    assert counts == {"mouse_10k": 10_000, "celltypist_sample": 559}


def _after(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, write) -> None:
    """Run ``write()`` once, the first time ``owner.name`` returns."""
    original = getattr(owner, name)
    done = []

    def first_call_then_writes(*args, **kwargs):
        result = original(*args, **kwargs)
        if not done:
            done.append(True)
            write()
        return result

    monkeypatch.setattr(owner, name, first_call_then_writes)


def test_a_damaged_table_of_the_current_versions_stays_a_store_error(tmp_path: Path) -> None:
    """A data file of the cells table lost, no cleanup anywhere: the read was done again at the same
    versions and raised CommitConflictError blaming a cleanup in another process."""
    build_bundled_atlas(tmp_path, BUNDLED[1:2])
    next((tmp_path / "db" / "cells.lance" / "data").glob("*.lance")).unlink()
    reader = RaggedAtlas.open(str(tmp_path / "db"), read_only=True)
    for read in (
        lambda: reader.query().layers(*COUNTS).to_anndata(),
        lambda: next(reader.query().layers(*COUNTS).to_batches(100)),
        lambda: reader.query().to_arrow(),
    ):
        with pytest.raises(StoreError, match="Not found"):
            read()


def test_versions_pruned_before_every_open_are_given_up_on_after_five_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_view gave up after five views, and the terminal then started its five views over (ten views,
    twenty version reads) before raising the same error."""
    build_bundled_atlas(tmp_path, BUNDLED[1:2])
    reader = RaggedAtlas.open(str(tmp_path / "db"), read_only=True)
    versions, views = itertools.count(100), []
    original = AtlasTables.consistent_versions

    def moving(self, attempts=20):  # another commit and cleanup elsewhere before every open
        return {**original(self, attempts), "cells": next(versions)}

    def pruned(self, pinned, *, shared=False):
        views.append(pinned["cells"])
        removed = ValueError(f"Version {pinned['cells']} no longer exists. Was it cleaned up?")
        raise AtlasNotFoundError(f"table 'cells' at version {pinned['cells']} is not there") from removed

    monkeypatch.setattr(AtlasTables, "consistent_versions", moving)
    monkeypatch.setattr(AtlasCore, "pinned_view", pruned)
    with pytest.raises(CommitConflictError, match="removed before they could be read, 5 times"):
        reader.query().count()
    assert len(views) == len(set(views)) == 5
