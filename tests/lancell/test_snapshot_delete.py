"""Deleting a snapshot: it can no longer be checked out, its number and note are never given again, and what
only it kept (table versions, zarr groups of deleted datasets) can then be reclaimed; nothing another snapshot
or the live atlas needs goes."""

from __future__ import annotations

import json
import shutil
import time
from datetime import timedelta

import numpy as np
import obstore
import obstore.store
import pytest

import lancell.snapshots
from lancell import cli
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, ingest_bundled
from lancell.errors import (
    ArgumentError,
    DuplicateNoteError,
    GroupNotFoundError,
    LancellWarning,
    ReadOnlyAtlasError,
    VersionNotFoundError,
)
from lancell.tables.versions import number_runs, tag_name
from tests.lancell.test_old_format import ARCHIVE


def _tagged(atlas: RaggedAtlas, version: int) -> list[str]:
    """The tables of ``atlas`` that still carry snapshot ``version``'s tag."""
    handles = atlas.core.tables.handles
    return [name for name, table in handles.items() if tag_name(version) in table.tags.list()]


def _stored(atlas: RaggedAtlas, group: str) -> bool:
    return any(batch for batch in obstore.list(atlas.store, prefix=group + "/"))


def _counts(atlas: RaggedAtlas) -> np.ndarray:
    adata = atlas.query().where("dataset_uid = 'pbmc68k'").to_anndata()
    return adata.X.toarray()


def test_a_deleted_snapshot_is_gone_for_readers_and_its_number_and_note_stay_taken(atlas):
    ingest_bundled(atlas, BUNDLED[0])
    assert atlas.snapshot(note="first") == 0
    ingest_bundled(atlas, BUNDLED[1])
    assert atlas.snapshot(note="second") == 1
    assert _tagged(atlas, 1)

    atlas.delete_snapshot(1)  # the latest: its number must not come back

    db = atlas.db_uri
    assert RaggedAtlas.list_versions(db)["version"].tolist() == [0]
    listed = RaggedAtlas.list_versions(db, deleted=True).set_index("version")["deleted_at"]
    assert listed.index.tolist() == [0, 1] and listed.isna().tolist() == [True, False]
    assert _tagged(atlas, 1) == []
    with pytest.raises(VersionNotFoundError, match=r"snapshot 1 was deleted at .* UTC; snapshots: \[0\]"):
        RaggedAtlas.checkout(db, 1)
    with pytest.raises(VersionNotFoundError, match="snapshot 1 was deleted"):
        RaggedAtlas.find_snapshot(db, "second")
    assert RaggedAtlas.find_snapshot(db, "first") == 0
    with pytest.warns(LancellWarning, match=r"the latest snapshot \(0\) is older than the atlas"):
        assert RaggedAtlas.checkout_latest(db).snapshot_version == 0
    taken = r"snapshot 1 \(deleted since\) already has the note 'second'"
    with pytest.raises(DuplicateNoteError, match=taken):
        atlas.snapshot(note="second")
    assert atlas.snapshot(note="third") == 2
    assert RaggedAtlas.checkout_latest(db).snapshot_version == 2

    atlas.delete_snapshot(0)
    atlas.delete_snapshot(2)
    with pytest.raises(VersionNotFoundError, match="every snapshot was deleted"):
        RaggedAtlas.checkout_latest(db)
    assert atlas.snapshot() == 3


def test_what_only_a_deleted_snapshot_kept_is_reclaimed_and_nothing_else(atlas):
    """A dataset deleted after snapshot 0 keeps its group while snapshot 0 exists (and for vacuum's grace
    after the snapshot is deleted); optimize's cleanup then prunes the table versions only it pinned, and the
    other snapshot and the live atlas read back the same values."""
    for dataset in BUNDLED[:2]:
        ingest_bundled(atlas, dataset)
    assert atlas.snapshot() == 0
    gone = BUNDLED[1].uid
    group = atlas.list_datasets().set_index("uid").loc[gone, "zarr_group"]
    atlas.delete_dataset(gone)
    assert atlas.snapshot() == 1
    before = _counts(RaggedAtlas.checkout(atlas.db_uri, 1))
    time.sleep(2.0)  # the dataset's deletion is then older than the grace below

    assert atlas.vacuum(grace=timedelta(0))["groups"] == 0  # snapshot 0 keeps it
    reader = RaggedAtlas.checkout(atlas.db_uri, 0)
    assert reader.query().count() == 700 + 559
    atlas.delete_snapshot(0)
    assert atlas.vacuum(grace=timedelta(seconds=1.5))["groups"] == 0  # deleted within the grace: kept
    assert _stored(atlas, group)
    assert atlas.vacuum(grace=timedelta(0))["groups"] == 1
    assert not _stored(atlas, group)
    with pytest.raises(
        GroupNotFoundError, match=r"reads snapshot 0: if it was deleted, vacuum\(\) reclaimed"
    ):
        reader.query().where(dataset_uid=gone).to_anndata()  # (it was told to validate() the atlas)

    pinned_by_0 = {name: table.tags.list() for name, table in atlas.core.tables.handles.items()}
    assert all(tag_name(0) not in tags for tags in pinned_by_0.values())
    cells = atlas.core.tables.cells
    pinned = json.loads(RaggedAtlas.list_versions(atlas.db_uri, deleted=True)["tables"].iloc[0])[cells.name]
    assert pinned in [v["version"] for v in cells.list_versions()]
    atlas.optimize(cleanup_older_than=timedelta(0))
    assert pinned not in [v["version"] for v in cells.list_versions()]  # only the deleted snapshot kept it
    np.testing.assert_array_equal(_counts(RaggedAtlas.checkout(atlas.db_uri, 1)), before)
    np.testing.assert_array_equal(_counts(atlas), before)
    assert atlas.validate() == []


def test_vacuum_within_the_grace_of_a_deleted_snapshot_whose_versions_were_pruned(atlas):
    """vacuum read the deleted snapshot's tables for its grace: once optimize had pruned them it raised
    AtlasNotFoundError ("table 'cells' at version 2 is not in the atlas database") for an hour."""
    for dataset in BUNDLED[:2]:
        ingest_bundled(atlas, dataset)
    assert atlas.snapshot() == 0
    atlas.delete_dataset(BUNDLED[1].uid)
    atlas.delete_snapshot(0)
    atlas.optimize(cleanup_older_than=timedelta(0))
    with pytest.warns(LancellWarning, match="kept until"):  # the dataset's own deletion is within the grace
        assert atlas.vacuum(dry_run=True) == {"groups": 0, "cells": 0, "unclaimed": 0, "foreign": 0}
    assert atlas.vacuum(grace=timedelta(0))["groups"] == 1


def test_a_deletion_cut_short_leaves_the_snapshot_deleted_and_a_second_call_removes_its_tags(
    atlas, monkeypatch
):
    ingest_bundled(atlas, BUNDLED[0])
    assert atlas.snapshot() == 0

    def cut(*args, **kwargs):
        raise OSError("killed")

    with monkeypatch.context() as patched:
        patched.setattr(lancell.snapshots, "untag_tables", cut)
        with pytest.raises(OSError, match="killed"):
            atlas.delete_snapshot(0)
    assert RaggedAtlas.list_versions(atlas.db_uri).empty  # marked first: never a live snapshot untagged
    assert _tagged(atlas, 0)
    with pytest.warns(LancellWarning, match="snapshot 0 was deleted already"):
        atlas.delete_snapshot(0)
    assert _tagged(atlas, 0) == []


def test_bad_arguments_and_read_only_handles_are_refused_with_nothing_changed(atlas):
    ingest_bundled(atlas, BUNDLED[0])
    assert atlas.snapshot() == 0
    with pytest.raises(VersionNotFoundError, match=r"no snapshot 7; snapshots: \[0\]: nothing deleted"):
        atlas.delete_snapshot(7)
    for bad in ("0", True, 0.0, None):
        with pytest.raises(ArgumentError, match=r"delete_snapshot\(version=\.\.\.\): a snapshot version is"):
            atlas.delete_snapshot(bad)
    with pytest.raises(ReadOnlyAtlasError):
        RaggedAtlas.checkout(atlas.db_uri, 0).delete_snapshot(0)
    atlas.delete_snapshot(np.int64(0))  # a number read from list_versions
    assert RaggedAtlas.list_versions(atlas.db_uri).empty


def test_an_atlas_whose_versions_table_predates_deletion_gets_the_column(tmp_path):
    shutil.copytree(ARCHIVE / "db", tmp_path / "db")
    db = str(tmp_path / "db")
    atlas = RaggedAtlas.open(db, store=obstore.store.LocalStore(f"{db}/_zarr"))
    assert "deleted_at" not in atlas.core.tables.db.open_table("atlas_versions").schema.names
    old = RaggedAtlas.list_versions(db)["version"].tolist()
    assert RaggedAtlas.list_versions(db, deleted=True)["deleted_at"].isna().all()
    atlas.delete_snapshot(old[0])
    assert RaggedAtlas.list_versions(db)["version"].tolist() == old[1:]
    assert atlas.snapshot(note="after") == max(old) + 1
    assert RaggedAtlas.find_snapshot(db, "after") == max(old) + 1


def test_the_command_line_deletes_a_snapshot_and_lists_deleted_ones(atlas, capsys):
    ingest_bundled(atlas, BUNDLED[0])
    assert atlas.snapshot(note="rel") == 0
    ingest_bundled(atlas, BUNDLED[1])  # the cell table moves on: snapshot 0 alone keeps its version
    assert cli.main(["delete-snapshot", atlas.db_uri, "0"]) == 0
    assert "snapshot 0: deleted" in capsys.readouterr().out
    assert cli.main(["versions", atlas.db_uri]) == 0
    assert "no snapshot (1 deleted: --deleted lists them)" in capsys.readouterr().out
    assert cli.main(["versions", atlas.db_uri, "--deleted"]) == 0
    shown = capsys.readouterr().out
    assert "deleted_at" in shown and "rel" in shown
    assert cli.main(["delete-snapshot", atlas.db_uri, "5"]) == 1
    assert "no snapshot 5" in capsys.readouterr().err
    cells = atlas.core.tables.cells
    pinned = json.loads(RaggedAtlas.list_versions(atlas.db_uri, deleted=True)["tables"].iloc[0])[cells.name]
    assert cli.main(["optimize", atlas.db_uri, "--keep-hours", "0"]) == 0
    assert "table versions now: " in capsys.readouterr().out
    assert pinned not in [v["version"] for v in cells.list_versions()]  # only the deleted snapshot kept it
    assert atlas.query().count() == 700 + 559


def test_vacuum_says_why_it_keeps_a_group_and_a_pruned_snapshots_reader_is_told_why(atlas, capsys):
    """vacuum right after delete_snapshot returned zeros without a word; a reader of the deleted snapshot
    whose versions optimize pruned was told to "read again", which could not work; on_group="print" failed
    after the first deletion; delete-snapshot took one number."""
    from lancell.errors import ArgumentError, CommitConflictError, QueryError

    for dataset in BUNDLED[:2]:
        ingest_bundled(atlas, dataset)
    assert atlas.snapshot() == 0
    atlas.delete_dataset(BUNDLED[1].uid)
    reader = RaggedAtlas.checkout(atlas.db_uri, 0)
    assert reader.query().count() == 700 + 559  # (it has read the snapshot's tables)
    assert atlas.snapshot() == 1
    with pytest.raises(ArgumentError, match="on_group must be None or a function"):
        atlas.vacuum(on_group="print")
    assert cli.main(["delete-snapshot", atlas.db_uri, "0", "7"]) == 1  # every number checked first
    assert "no snapshot 7; snapshots: [0, 1]: nothing deleted" in capsys.readouterr().err
    assert len(RaggedAtlas.list_versions(atlas.db_uri)) == 2
    assert cli.main(["delete-snapshot", atlas.db_uri, "0"]) == 0
    with pytest.warns(LancellWarning, match="or after the deletion of the snapshot that kept them"):
        assert atlas.vacuum(grace=timedelta(hours=1))["groups"] == 0
    atlas.optimize(cleanup_older_than=timedelta(0))
    pruned = r"snapshot 0 .* was deleted .* can no longer be read"
    with pytest.raises(CommitConflictError, match=pruned):
        reader.query().to_anndata()
    # a filter's own error stays one, whatever its text quotes (it read as the snapshot's pruning)
    with pytest.raises(QueryError, match="is not a valid filter"):
        RaggedAtlas.checkout(atlas.db_uri, 1).query().where("cell_type = 'Not found: x.lance' AND")
    # a builder's read, the loader's dataset and the handle's own reads were Lance's untyped errors
    for read in (
        lambda: reader.query().where(dataset_uid=BUNDLED[1].uid),
        lambda: reader.query().to_cell_dataset("gene_expression", "log_normalized"),
        reader.list_datasets,
    ):
        with pytest.raises(CommitConflictError, match=pruned):
            read()


def test_snapshot_numbers_in_messages_are_runs() -> None:
    """An atlas snapshotted nightly for years listed every number in each "no snapshot" message."""
    assert number_runs([]) == "[]"
    assert number_runs([0]) == "[0]"
    assert number_runs([0, 1]) == "[0, 1]"
    assert number_runs([*range(45), 46, 50, 51, *range(60, 1000)]) == "[0-44, 46, 50, 51, 60-999]"
