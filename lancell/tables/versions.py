"""Snapshots: numbered, tagged, append-only records of every table's Lance version.

See docs/architecture.md, "Versioning".

A snapshot tags each table's current version ``snapshot-<v>`` so that ``optimize()`` and version cleanup can
never delete it, and appends one row to ``atlas_versions``. Numbers are taken under a cross-process lock, so
two concurrent ``snapshot()`` calls get different numbers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from lancell.errors import VersionNotFoundError, require_type
from lancell.tables.table_schemas import VERSIONS_SCHEMA, VERSIONS_TABLE

if TYPE_CHECKING:
    from lancedb.db import DBConnection
    from lancedb.table import Table

    from lancell.tables.atlas_tables import Database

__all__ = [
    "SNAPSHOT_LOCK",
    "noted_version",
    "read_snapshot",
    "read_version",
    "record_snapshot",
    "tag_name",
]

# The atlas lock a snapshot holds from reading the tables' versions to recording them: what removes table
# versions (optimize's cleanup) or zarr groups (vacuum) holds it too, so nothing a snapshot is about to pin
# goes while it is pinned but not yet tagged and recorded.
SNAPSHOT_LOCK = "snapshot"


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
    versions.add(pa.Table.from_pylist([row], schema=VERSIONS_SCHEMA))


def _frame(versions: pa.Table) -> pd.DataFrame:
    return versions.to_pandas().sort_values("version").reset_index(drop=True)


def list_snapshots(db: DBConnection) -> pd.DataFrame:
    """The versions table as a frame sorted by version."""
    return _frame(db.open_table(VERSIONS_TABLE).to_arrow())


def noted_version(frame: pd.DataFrame, note: str) -> int | None:
    """The snapshot of ``frame`` (:func:`list_snapshots`) whose note is ``note``, or None.

    A note labels one snapshot (``take_snapshot`` refuses a note in use); of an atlas whose snapshots shared a
    note before that rule, the latest of them.

    Raises
    ------
    ArgumentError
        ``note`` is not a str (no note would ever match it).
    """
    require_type("note", note, str, "a str")
    match = frame[frame["note"] == note]
    return None if match.empty else int(match["version"].iloc[-1])


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
        No such snapshot (or no snapshot at all).
    """
    return _pick(list_snapshots(db), version)


def read_snapshot(database: Database, version: int | None) -> dict[str, Any]:
    """:func:`read_version` through pylance: what a checkout reads, without importing lancedb."""
    return _pick(_frame(database.dataset(VERSIONS_TABLE).to_table()), version)


def _pick(frame: pd.DataFrame, version: int | None) -> dict[str, Any]:
    if frame.empty:
        raise VersionNotFoundError("the atlas has no snapshot yet; call atlas.snapshot() first")
    if version is None:
        row = frame.iloc[-1]
    else:
        match = frame[frame["version"] == int(version)]
        if match.empty:
            raise VersionNotFoundError(f"no snapshot {version}; snapshots: {frame['version'].tolist()}")
        row = match.iloc[0]
    out = row.to_dict()
    out["tables"] = {k: int(v) for k, v in json.loads(out["tables"]).items()}
    out["store_config"] = json.loads(out["store_config"])
    return out
