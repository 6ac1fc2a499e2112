"""The LanceDB tables of one atlas, opened live (latest, read-consistent) or pinned to a snapshot."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import lancedb
import pyarrow as pa
from lancedb.db import DBConnection
from lancedb.table import Table

from lancell.errors import AtlasNotFoundError, StoreError
from lancell.tables.table_schemas import DATASETS_TABLE, FEATURE_SPACES_TABLE, LAYOUTS_TABLE

__all__ = ["AtlasTables", "connect", "read_columns"]


def connect(db_uri: str, storage_options: Mapping[str, str] | None = None) -> DBConnection:
    """Connect so that every read sees the latest committed version (other processes included).

    Raises
    ------
    StoreError
        The database cannot be reached (a wrong endpoint, credentials or ``allow_http``, a missing bucket).
    """
    try:
        return lancedb.connect(
            db_uri,
            read_consistency_interval=timedelta(0),
            storage_options=dict(storage_options or {}) or None,
        )
    except (ValueError, OSError) as exc:
        raise StoreError(f"cannot connect to the LanceDB database at {db_uri!r}: {exc}") from exc


def read_columns(table: Table, columns: list[str]) -> pa.Table:
    """``columns`` of every row of ``table`` at the version the handle reads, in one pylance pass.

    lancedb's query path costs 2-5 ms per call even for a few rows; the Lance dataset underneath does not.
    """
    return table.to_lance().to_table(columns=columns)


def table_names(db: DBConnection) -> set[str]:
    """Names of the tables in ``db`` (all pages)."""
    names: set[str] = set()
    token = None
    while True:
        page = db.list_tables(page_token=token)
        names.update(page.tables)
        token = page.page_token
        if not token:
            return names


@dataclass
class AtlasTables:
    """Handles on every table of an atlas; ``pinned`` maps table name -> snapshot tag when checked out."""

    db: DBConnection
    cell_table_name: str
    registry_names: dict[str, str]
    handles: dict[str, Table] = field(default_factory=dict)
    pinned: dict[str, int] | None = None

    @classmethod
    def open(
        cls,
        db: DBConnection,
        cell_table_name: str,
        registry_names: dict[str, str],
        pinned: dict[str, int] | None = None,
    ) -> AtlasTables:
        """Open every table; with ``pinned`` (table -> Lance version) check each out read-only."""
        tables = cls(db, cell_table_name, registry_names, pinned=pinned)
        existing = table_names(db)
        for name in tables.all_names():
            if name not in existing:
                raise AtlasNotFoundError(f"table {name!r} is missing from the atlas database")
            handle = db.open_table(name)
            if pinned is not None:
                if name not in pinned:
                    raise AtlasNotFoundError(f"the snapshot does not record table {name!r}")
                handle.checkout(pinned[name])
            tables.handles[name] = handle
        return tables

    def all_names(self) -> Iterator[str]:
        yield self.cell_table_name
        yield DATASETS_TABLE
        yield LAYOUTS_TABLE
        yield FEATURE_SPACES_TABLE
        yield from self.registry_names.values()

    @property
    def cells(self) -> Table:
        return self.handles[self.cell_table_name]

    @property
    def datasets(self) -> Table:
        return self.handles[DATASETS_TABLE]

    @property
    def layouts(self) -> Table:
        return self.handles[LAYOUTS_TABLE]

    def registry(self, feature_space: str) -> Table:
        return self.handles[self.registry_names[feature_space]]

    def versions(self) -> dict[str, int]:
        """Current Lance version of every table."""
        return {name: handle.version for name, handle in self.handles.items()}


def create_tables(db: DBConnection, schemas: Mapping[str, pa.Schema], initial: Mapping[str, Any]) -> None:
    """Create each table of ``schemas`` (with the rows of ``initial`` where given)."""
    for name, schema in schemas.items():
        data = initial.get(name)
        if data is None:
            db.create_table(name, schema=schema)
        else:
            db.create_table(name, data=data, schema=schema)
