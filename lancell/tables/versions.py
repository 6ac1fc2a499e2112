"""Snapshots: numbered, tagged, append-only records of every table's Lance version.

See docs/architecture.md, "Versioning".

A snapshot tags each table's current version ``snapshot-<v>`` so that ``optimize()`` and version cleanup can
never delete it, and appends one row to ``atlas_versions``. Numbers are taken under a cross-process lock, so
two concurrent ``snapshot()`` calls get different numbers. A deleted snapshot keeps its row, with
``deleted_at`` set, and loses its tags: its number and note are never given again, and what only it kept
can be reclaimed.
"""

from __future__ import annotations

import json
import numbers
import unicodedata
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from lancell.errors import ArgumentError, VersionNotFoundError, require_type
from lancell.tables.table_schemas import VERSIONS_TABLE

if TYPE_CHECKING:
    from lancedb.db import DBConnection
    from lancedb.table import Table

    from lancell.tables.atlas_tables import Database

__all__ = [
    "DELETED",
    "SNAPSHOT_LOCK",
    "list_snapshots",
    "mark_deleted",
    "next_version",
    "noted_snapshot",
    "noted_version",
    "number_runs",
    "pinned_tables",
    "read_snapshot",
    "read_version",
    "record_snapshot",
    "snapshot_number",
    "tag_name",
    "tag_tables",
    "untag_tables",
    "version_of_tables",
]

# The atlas lock a snapshot holds from reading the tables' versions to recording them: what removes table
# versions (optimize's cleanup) or zarr groups (vacuum) holds it too, so nothing a snapshot is about to pin
# goes while it is pinned but not yet tagged and recorded.
SNAPSHOT_LOCK = "snapshot"
# the versions table's column that marks a deleted snapshot (added to older tables by the first deletion)
DELETED = "deleted_at"
_DELETED_FIELD = pa.field(DELETED, pa.timestamp("us", tz="UTC"))


def snapshot_number(version: object, where: str) -> int:
    """``version`` as a snapshot number (``where`` names the argument and its call in the error).

    Raises
    ------
    ArgumentError
        ``version`` is not an integer (a bool, a float such as 0.9, a digit string are not).
    """
    if isinstance(version, bool) or not isinstance(version, numbers.Integral):
        raise ArgumentError(
            f"{where}: a snapshot version is an integer (RaggedAtlas.list_versions), got {version!r}"
        )
    return int(version)


def tag_name(version: int) -> str:
    """The Lance tag that protects a snapshot's table versions."""
    return f"snapshot-{version}"


def next_version(versions: Table) -> int:
    """One more than the highest snapshot number (0 for the first)."""
    if versions.count_rows() == 0:
        return 0
    return int(pa.compute.max(versions.to_arrow().column("version")).as_py()) + 1


def tag_tables(handles: dict[str, Table], pinned: dict[str, int], version: int) -> None:
    """Tag ``pinned[name]`` of every table, replacing a tag a crashed snapshot of this number left."""
    name = tag_name(version)
    for table_name, table_version in pinned.items():
        tags = handles[table_name].tags
        if name in tags.list():
            tags.delete(name)
        tags.create(name, table_version)


def untag_tables(handles: dict[str, Table], pinned: dict[str, int], version: int) -> None:
    """Delete snapshot ``version``'s tag from every table of ``pinned`` that still has it."""
    name = tag_name(version)
    for table_name in pinned:
        handle = handles.get(table_name)
        if handle is not None and name in handle.tags.list():
            handle.tags.delete(name)


def mark_deleted(versions: Table, version: int) -> None:
    """Set snapshot ``version``'s ``deleted_at`` to now (adding the column to a table without it)."""
    if DELETED not in versions.schema.names:
        versions.add_columns(_DELETED_FIELD)
    versions.update(where=f"version = {int(version)}", values={DELETED: datetime.now(UTC)})


def record_snapshot(
    versions: Table,
    version: int,
    pinned: dict[str, int],
    *,
    total_cells: int,
    n_datasets: int,
    store_url: str,
    store_config: dict[str, Any],
    lancell_format: int,
    note: str | None,
) -> None:
    """Append the snapshot row (the snapshot becomes visible to ``list_versions``/``checkout``)."""
    row = {
        "version": version,
        "tables": json.dumps(pinned, sort_keys=True),
        "total_cells": total_cells,
        "n_datasets": n_datasets,
        "store_url": store_url,
        "store_config": json.dumps(store_config, sort_keys=True, default=str),
        "lancell_format": lancell_format,
        "created_at": datetime.now(UTC),
        "note": note,
    }
    versions.add(pa.Table.from_pylist([row], schema=versions.schema))  # (an older table: no deleted_at)


def _frame(versions: pa.Table) -> pd.DataFrame:
    """Every row, sorted by version, with ``deleted_at`` (all missing for a table without the column)."""
    if DELETED not in versions.schema.names:
        versions = versions.append_column(_DELETED_FIELD, pa.nulls(versions.num_rows, _DELETED_FIELD.type))
    return versions.to_pandas().sort_values("version").reset_index(drop=True)


def _live(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame[DELETED].isna()].drop(columns=DELETED).reset_index(drop=True)


def list_snapshots(db: DBConnection, *, deleted: bool = False) -> pd.DataFrame:
    """The snapshots as a frame sorted by version; ``deleted``: deleted ones too, with ``deleted_at``."""
    frame = _frame(db.open_table(VERSIONS_TABLE).to_arrow())
    return frame if deleted else _live(frame)


def pinned_tables(db: DBConnection, deleted_after: datetime | None = None) -> dict[int, dict[str, int]]:
    """Each snapshot's table versions, by snapshot number, from one read of the versions table: those not
    deleted, and those deleted after ``deleted_after`` (a reader may still have them checked out)."""
    frame = list_snapshots(db, deleted=True)
    recent = frame[DELETED].isna()
    if deleted_after is not None:
        recent |= frame[DELETED] > pd.Timestamp(deleted_after)
    frame = frame[recent]
    return {
        int(version): {name: int(v) for name, v in json.loads(tables).items()}
        for version, tables in zip(frame["version"], frame["tables"], strict=True)
    }


def noted_version(frame: pd.DataFrame, note: str) -> int | None:
    """The snapshot of ``frame`` (:func:`list_snapshots`) whose note is ``note``, or None.

    A note labels one snapshot (``take_snapshot`` refuses a note in use); of an atlas whose snapshots shared a
    note before that rule, the latest of them. Where no note is ``note`` as written, one in another Unicode
    form (NFC) is: ``café`` typed with its accent composed or not is one note (they print alike, and would
    name one model file where a file system normalizes names).

    Raises
    ------
    ArgumentError
        ``note`` is not a str (no note would ever match it).
    """
    require_type("note", note, str, "a str")
    match = frame[frame["note"] == note]  # (deleted ones too where the frame has them)
    if match.empty:  # (an atlas whose notes differed in form only, from before: each finds its own)
        nfc = frame["note"].map(
            lambda text: unicodedata.normalize("NFC", text) if isinstance(text, str) else None
        )
        match = frame[nfc == unicodedata.normalize("NFC", note)]
    return None if match.empty else int(match["version"].iloc[-1])


def noted_snapshot(frame: pd.DataFrame, note: str) -> int | None:
    """:func:`noted_version` of ``frame`` (:func:`list_snapshots` with ``deleted=True``), or None.

    Raises
    ------
    VersionNotFoundError
        The snapshot labelled ``note`` was deleted.
    """
    version = noted_version(frame, note)
    if version is not None:
        _pick(frame, version)  # (raises where it was deleted)
    return version


def version_of_tables(frame: pd.DataFrame, pinned: dict[str, int]) -> int | None:
    """The latest snapshot of ``frame`` (:func:`list_snapshots`) that records exactly the table versions
    ``pinned`` (the same release), or None."""
    match = frame[frame["tables"] == json.dumps(pinned, sort_keys=True)]
    return None if match.empty else int(match["version"].iloc[-1])


def read_version(db: DBConnection, version: int | None) -> dict[str, Any]:
    """The row of snapshot ``version`` (the latest when None), with ``tables`` decoded.

    Raises
    ------
    VersionNotFoundError
        No such snapshot, or it was deleted (or no snapshot at all).
    """
    return _pick(list_snapshots(db, deleted=True), version)


def read_snapshot(database: Database, version: int | None) -> dict[str, Any]:
    """:func:`read_version` through pylance: what a checkout reads, without importing lancedb."""
    return _pick(_frame(database.dataset(VERSIONS_TABLE).to_table()), version)


def number_runs(numbers: list[int]) -> str:
    """Snapshot numbers as messages list them, three or more consecutive ones as a run:
    ``[0-44, 46, 50, 51]`` (an atlas snapshotted nightly for years listed every number)."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    shown = [f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs]
    return f"[{', '.join(shown)}]"


def _pick(frame: pd.DataFrame, version: int | None) -> dict[str, Any]:
    if frame.empty:
        raise VersionNotFoundError("the atlas has no snapshot yet; call atlas.snapshot() first")
    live = _live(frame)
    if version is None:
        if live.empty:
            raise VersionNotFoundError("every snapshot was deleted; call atlas.snapshot() first")
        row = live.iloc[-1]
    else:
        match = frame[frame["version"] == int(version)]
        if match.empty:
            raise VersionNotFoundError(
                f"no snapshot {version}; snapshots: {number_runs(live['version'].tolist())}"
            )
        if not pd.isna(match[DELETED].iloc[0]):
            raise VersionNotFoundError(
                f"snapshot {version} was deleted at {match[DELETED].iloc[0]:%Y-%m-%d %H:%M:%S} UTC; "
                f"snapshots: {number_runs(live['version'].tolist())}"
            )
        row = match.drop(columns=DELETED).iloc[0]
    out = row.to_dict()
    out["tables"] = {k: int(v) for k, v in json.loads(out["tables"]).items()}
    out["store_config"] = json.loads(out["store_config"])
    return out
