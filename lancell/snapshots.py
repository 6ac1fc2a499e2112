"""Taking and deleting snapshots: validate the tables at their current versions, tag them, record the
version row; or mark the row deleted and remove its tags.

See ``docs/architecture.md`` ("Versioning"): a snapshot is a row of ``atlas_versions`` naming each table's
Lance version, and a tag on each of those versions so that no cleanup can remove them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from lancell.errors import (
    ArgumentValueError,
    DuplicateNoteError,
    LancellWarning,
    ValidationError,
    VersionNotFoundError,
    caller_outside_lancell,
    require_text,
    require_type,
)
from lancell.storage.groups import FORMAT_VERSION
from lancell.storage.stores import describe_store, public_store_config
from lancell.tables.atlas_meta import db_options, read_meta
from lancell.tables.atlas_tables import connect
from lancell.tables.table_schemas import VERSIONS_TABLE
from lancell.tables.versions import (
    DELETED,
    SNAPSHOT_LOCK,
    list_snapshots,
    mark_deleted,
    next_version,
    noted_version,
    number_runs,
    record_snapshot,
    snapshot_number,
    tag_tables,
    untag_tables,
    version_of_tables,
)
from lancell.tables.visibility import committed_cells
from lancell.validation import find_problems

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["delete_snapshot", "snapshot_listing", "take_snapshot"]


def snapshot_listing(
    db_uri: str,
    storage_options: Mapping[str, str] | None,
    store_kwargs: dict[str, Any] | None,
    *,
    deleted: bool = False,
) -> pd.DataFrame:
    """The snapshots of the atlas at ``db_uri`` (:func:`~lancell.tables.versions.list_snapshots`), read
    without opening the atlas.

    Raises
    ------
    AtlasNotFoundError
        No atlas at ``db_uri`` (nothing is created there).
    """
    options = db_options(db_uri, store_kwargs, storage_options)
    read_meta(db_uri, store_kwargs)
    return list_snapshots(connect(db_uri, options), deleted=deleted)


def take_snapshot(core: AtlasCore, note: str | None = None) -> int:
    """Validate and record the current version of every table of ``core``; return the new snapshot number.

    Validation reads the tables pinned at the versions being recorded, under the ``snapshot`` lock, so what
    is validated is exactly what the snapshot names.

    ``note`` labels the snapshot (:meth:`~lancell.atlas.RaggedAtlas.find_snapshot`; the Dagster snapshot
    partitions are notes), so one note names one snapshot forever: a note another snapshot has is refused.
    Snapshots without a note are not limited.

    Raises
    ------
    ArgumentError
        ``note`` is neither a str nor None (nothing is recorded).
    ArgumentValueError
        ``note`` is blank (nothing is recorded).
    DuplicateNoteError
        Snapshot ``v`` already has ``note`` (the message names ``v``; nothing is recorded).
    ValidationError
        The atlas is inconsistent (nothing is recorded).
    LockLostError
        Another process took the snapshot lock over while this one validated (nothing is recorded).
    ReadOnlyAtlasError
        ``core`` is read-only.
    """
    core.require_writable()
    if note is not None:
        require_type("note", note, str, "a str or None")
        require_text("note", note)
        if not note.strip():  # it read as no note, yet named this snapshot (a second one was refused)
            raise ArgumentValueError(f"note must be a label or None, got {note!r}")
    with core.lock(SNAPSHOT_LOCK) as lease:  # snapshots are recorded under it: no other takes the note now
        every = list_snapshots(core.tables.db, deleted=True)
        snapshots = every[every[DELETED].isna()]
        if note is not None:
            taken = noted_version(every, note)
            if taken is not None:
                gone = " (deleted since)" if taken not in set(snapshots["version"]) else ""
                raise DuplicateNoteError(
                    f"snapshot {taken}{gone} already has the note {note!r}, and a note labels one snapshot "
                    "only (RaggedAtlas.find_snapshot, the Dagster snapshot partitions): choose another note"
                )
        pinned = core.tables.consistent_versions()
        view = core.pinned_view(pinned)
        problems = find_problems(view)
        if problems:
            raise ValidationError(problems)
        versions = core.tables.db.open_table(VERSIONS_TABLE)
        version = next_version(versions)
        lease.check()  # a process that took the lock over may be taking this same version
        tag_tables(core.tables.handles, pinned, version)
        record_snapshot(
            versions,
            version,
            pinned,
            total_cells=committed_cells(view)[1],
            n_datasets=view.tables.datasets.count_rows(),
            store_url=describe_store(core.store),
            store_config=public_store_config(core.store),
            lancell_format=FORMAT_VERSION,
            note=note,
        )
    same = version_of_tables(snapshots, pinned)
    if same is not None:  # recorded all the same: a note may name this release for a pipeline
        warnings.warn(
            f"nothing changed since snapshot {same}: snapshot {version} records the same table versions "
            "(the same cells and data under another number)",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    return version


def delete_snapshot(core: AtlasCore, version: int) -> None:
    """Delete snapshot ``version``: it can no longer be checked out, and its tags go, so that
    ``optimize(cleanup_older_than=...)`` may remove table versions and ``vacuum()`` zarr groups that only it
    kept. Its number and its note are never given to another snapshot.

    The row is marked first and the tags removed after it, so a deletion cut short leaves the snapshot
    deleted: calling this again removes the tags left (with a warning that it was deleted already).

    Raises
    ------
    ArgumentError
        ``version`` is not an int.
    VersionNotFoundError
        There is no snapshot ``version`` (nothing is changed).
    LockLostError
        Another process took the snapshot lock over (nothing is changed).
    ReadOnlyAtlasError
        ``core`` is read-only.
    """
    core.require_writable()
    version = snapshot_number(version, "delete_snapshot(version=...)")
    with core.lock(SNAPSHOT_LOCK) as lease:  # what removes table versions or groups holds it too
        every = list_snapshots(core.tables.db, deleted=True)
        match = every[every["version"] == version]
        if match.empty:
            live = every.loc[every[DELETED].isna(), "version"].tolist()
            raise VersionNotFoundError(
                f"no snapshot {version}; snapshots: {number_runs(live)}: nothing deleted"
            )
        row = match.iloc[0]
        lease.check()
        if pd.isna(row[DELETED]):
            mark_deleted(core.tables.db.open_table(VERSIONS_TABLE), version)
        else:
            warnings.warn(
                f"snapshot {version} was deleted already (at {row[DELETED]:%Y-%m-%d %H:%M:%S} UTC); "
                "any of its tags left are removed",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )
        untag_tables(core.tables.handles, json.loads(row["tables"]), version)
