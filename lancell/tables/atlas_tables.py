"""The LanceDB tables of one atlas, opened live (latest, read-consistent) or pinned to a snapshot.

A live atlas reads and writes through a lancedb connection. A snapshot's tables are read through pylance at
their pinned versions (:class:`lancell.tables.pinned_table.PinnedTable`), so a read-only process never imports
lancedb (see docs/architecture.md, "Versioning"). The connection and the datasets are guarded
(:func:`lancell.storage.store_failures.guard`): a store failure of anything read or written through them is a
:class:`~lancell.errors.StoreError` naming the operation and the table or database.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lancell.errors import AtlasNotFoundError, CommitConflictError
from lancell.storage.store_failures import guard, is_store_failure, store_error
from lancell.storage.store_settings import check_endpoint
from lancell.storage.stores import table_location
from lancell.tables.pinned_table import PinnedTable, scan_readahead
from lancell.tables.table_schemas import DATASETS_TABLE, FEATURE_SPACES_TABLE, LAYOUTS_TABLE

if TYPE_CHECKING:
    import lance
    import lancedb
    from lancedb.db import DBConnection
    from lancedb.table import Table

__all__ = ["AtlasTables", "Database", "connect", "read_columns"]


def connect(db_uri: str, storage_options: Mapping[str, str] | None = None) -> DBConnection:
    """Connect so that every read sees the latest committed version (other processes included); the
    connection, and every table and query made from it, is guarded (store failures are ``StoreError``).

    Raises
    ------
    StoreError
        The database cannot be reached (a wrong endpoint, credentials or ``allow_http``, a missing bucket), or
        the endpoint is not an ``http(s)://`` URL.
    """
    import lancedb  # ~1-2 s of imports (its REST namespace client): only writers and searches pay them

    check_endpoint(db_uri, storage_options, "storage_options")
    try:
        connection = lancedb.connect(
            table_location(db_uri),
            read_consistency_interval=timedelta(0),
            storage_options=dict(storage_options or {}) or None,
            session=_session(),
        )
    except Exception as exc:  # ValueError, OSError, or a RuntimeError naming a Lance I/O error (no region)
        if isinstance(exc, ValueError | OSError) or is_store_failure(exc):
            raise store_error(exc, f"cannot connect to the LanceDB database at {db_uri!r}") from exc
        raise
    return guard(connection, f"the atlas database {db_uri!r}")


# LanceDB's default session caches up to 6 GiB of indices and 1 GiB of metadata per connection; every table
# version a writer commits or reads (read_consistency_interval=0) adds its manifest, so a handle kept open
# for days of ingestion grew by ~1 MiB per dataset. One session of the process, bounded, serves every
# connection (lancell's search indexes are a few hundred MiB at 10M cells).
_INDEX_CACHE_BYTES = 1 << 30
_METADATA_CACHE_BYTES = 128 << 20


@functools.cache
def _session() -> lancedb.Session:
    import lancedb

    return lancedb.Session(
        index_cache_size_bytes=_INDEX_CACHE_BYTES, metadata_cache_size_bytes=_METADATA_CACHE_BYTES
    )


def read_columns(table: Table | PinnedTable, columns: list[str]) -> pa.Table:
    """``columns`` of every row of ``table`` at the version the handle reads, in one pylance pass.

    lancedb's query path costs 2-5 ms per call even for a few rows; the Lance dataset underneath does not.
    """
    return table.to_lance().to_table(columns=columns, **scan_readahead())


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
class Database:
    """An atlas's LanceDB location: tables are read through pylance, lancedb is connected on first need.

    Parameters
    ----------
    uri
        The LanceDB location (a directory or an object-store URL).
    storage_options
        The LanceDB (and pylance) storage options.
    connection
        An open lancedb connection; made by :meth:`connect` on first use when None.
    """

    uri: str
    storage_options: Mapping[str, str] | None = None
    connection: DBConnection | None = None

    def connect(self) -> DBConnection:
        """The lancedb connection (:func:`connect`), made once."""
        if self.connection is None:
            self.connection = connect(self.uri, self.storage_options)
        return self.connection

    def dataset(self, name: str, version: int | None = None) -> lance.LanceDataset:
        """Table ``name`` at ``version`` (the latest when None), opened through pylance and guarded.

        Raises
        ------
        AtlasNotFoundError
            The table, or that version of it (removed by a cleanup), is not in the database.
        StoreError
            The database cannot be read.
        """
        import lance

        at = "" if version is None else f" at version {version}"
        check_endpoint(self.uri, self.storage_options, "storage_options")
        try:
            dataset = lance.dataset(
                f"{table_location(self.uri).rstrip('/')}/{name}.lance",  # where lancedb keeps table ``name``
                version=version,
                storage_options=dict(self.storage_options or {}) or None,
            )
        except (ValueError, OSError) as exc:
            if is_store_failure(exc):
                where = f"cannot read table {name!r}{at} of the atlas database {self.uri!r}"
                raise store_error(exc, where) from exc
            raise AtlasNotFoundError(  # pylance's "Dataset at path ... was not found"
                f"table {name!r}{at} is not in the atlas database {self.uri!r}: {exc}"
            ) from exc
        return guard(dataset, f"table {name!r}{at} of the atlas database {self.uri!r}")


@dataclass
class AtlasTables:
    """Handles on every table of an atlas; ``pinned`` maps table name -> snapshot's Lance version when checked
    out (then every handle is a :class:`PinnedTable`)."""

    database: Database
    cell_table_name: str
    registry_names: dict[str, str]
    handles: dict[str, Table | PinnedTable] = field(default_factory=dict)
    pinned: dict[str, int] | None = None

    @classmethod
    def open(
        cls,
        database: Database,
        cell_table_name: str,
        registry_names: dict[str, str],
        pinned: dict[str, int] | None = None,
        reuse: dict[str, PinnedTable] | None = None,
    ) -> AtlasTables:
        """Open every table; with ``pinned`` (table -> Lance version) read each at that version by pylance.

        ``reuse``: pinned handles opened before, by table name; one at the version asked for is used again
        (each table's newest one is kept there), so views of a live handle open only tables that changed.

        Raises
        ------
        AtlasNotFoundError
            A table is missing, the snapshot does not record it, or its pinned version was removed.
        """
        tables = cls(database, cell_table_name, registry_names, pinned=pinned)
        if pinned is not None:
            for name in tables.all_names():
                if name not in pinned:
                    raise AtlasNotFoundError(f"the snapshot does not record table {name!r}")
                handle = None if reuse is None else reuse.get(name)
                if handle is None or handle.version != pinned[name]:
                    handle = PinnedTable(name, database.dataset(name, pinned[name]), database.connect)
                    if reuse is not None and (name not in reuse or reuse[name].version < handle.version):
                        reuse[name] = handle
                tables.handles[name] = handle
            return tables
        db = database.connect()
        existing = table_names(db)
        for name in tables.all_names():
            if name not in existing:
                raise AtlasNotFoundError(f"table {name!r} is missing from the atlas database")
            try:
                tables.handles[name] = db.open_table(name)
            except ValueError as exc:  # listed, not opening: dropped where deleted objects leave folders (S3)
                raise AtlasNotFoundError(
                    f"table {name!r} is missing from the atlas database ({exc})"
                ) from exc
        return tables

    @property
    def db(self) -> DBConnection:
        """The database's lancedb connection (made on first use)."""
        return self.database.connect()

    def all_names(self) -> Iterator[str]:
        yield self.cell_table_name
        yield DATASETS_TABLE
        yield LAYOUTS_TABLE
        yield FEATURE_SPACES_TABLE
        yield from self.registry_names.values()

    @property
    def cells(self) -> Table | PinnedTable:
        return self.handles[self.cell_table_name]

    @property
    def datasets(self) -> Table | PinnedTable:
        return self.handles[DATASETS_TABLE]

    @property
    def layouts(self) -> Table | PinnedTable:
        return self.handles[LAYOUTS_TABLE]

    def registry(self, feature_space: str) -> Table | PinnedTable:
        return self.handles[self.registry_names[feature_space]]

    def versions(self) -> dict[str, int]:
        """Current Lance version of every table (read one after another)."""
        return {name: handle.version for name, handle in self.handles.items()}

    def consistent_versions(self, attempts: int = 20) -> dict[str, int]:
        """The version of every table at one state of the atlas: the dataset table's version is read before
        and after the others, again until no dataset record was committed or deleted in between.

        Writers order their commits around the dataset records, the commit point
        (:mod:`lancell.tables.visibility`): an ingestion writes its rows and layout before its record, a
        deletion removes the record before the rows. Versions read while no record changed pair every record
        with all of its rows (rows an ingestion has not committed may be there too: the committed-dataset
        filter hides them). Read one after another without the check, a deletion and a commit in between
        paired the rows of one state with the records of another: a deleted dataset's cells read as
        unmeasured, a count shortcut that hid nothing.

        Raises
        ------
        CommitConflictError
            Dataset records were committed during each of ``attempts`` reads.
        """
        for _ in range(attempts):
            before = self.datasets.version
            versions = self.versions()
            if versions[DATASETS_TABLE] == before:
                return versions
        raise CommitConflictError(
            f"the dataset records of the atlas at {self.database.uri!r} changed during each of {attempts} "
            "reads of its table versions: try again when fewer datasets are being committed"
        )


def create_tables(db: DBConnection, schemas: Mapping[str, pa.Schema], initial: Mapping[str, Any]) -> None:
    """Create each table of ``schemas`` (with the rows of ``initial`` where given)."""
    for name, schema in schemas.items():
        data = initial.get(name)
        if data is None:
            db.create_table(name, schema=schema)
        else:
            db.create_table(name, data=data, schema=schema)
