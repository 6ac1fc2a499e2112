"""One table of a checked-out atlas, read through pylance at the Lance version its snapshot pinned.

lancedb's Python package costs 1-2 s of imports (its REST namespace client, imported by ``lancedb.db``), as
much as ``import anndata, lance`` together; the read path of a snapshot (scans, schemas, counts, filters)
needs only the Lance dataset underneath. Everything else lancedb's ``Table`` offers (ranked searches, index
listings) is answered by the same table opened through lancedb at the same version, on first use. See
docs/architecture.md, "Versioning".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lancell.cores import USABLE_CORES

if TYPE_CHECKING:
    import lance
    import pyarrow as pa
    from lancedb.db import DBConnection
    from lancedb.table import Table

__all__ = ["PinnedTable", "lance_sql", "scan_readahead"]

_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?P<name>(?:[^\"]|\"\")*)\"")


def lance_sql(sql: str) -> str:
    """``sql`` in lancedb's dialect, written for pylance: a double-quoted name is a column in lancedb and a
    string in pylance, so it becomes a backquoted name; single-quoted strings are left as they are."""

    def backquote(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is None:
            return match.group(0)
        return "`" + name.replace('""', '"').replace("`", "``") + "`"

    return _QUOTED.sub(backquote, sql)


def scan_readahead() -> dict[str, int]:
    """Readahead of a pylance scan of a large table (``fragment_readahead``, ``batch_readahead``), sized to
    the cores this process may use: Lance's defaults (4 fragments, 16 batches) suit many cores; on few they
    only hold more in memory. A 5,000-uid filter over a 10M-row cell table (10 fragments, 2 cores) peaked at
    +363 MiB with the defaults and +220 MiB with 1 / 4, no slower (benchmarks/RESULTS.md, "Scale")."""
    return {
        "fragment_readahead": min(4, max(1, USABLE_CORES // 2)),
        "batch_readahead": min(16, 2 * USABLE_CORES),
    }


class PinnedTable:
    """A read-only table at one Lance version, read through pylance.

    Parameters
    ----------
    name
        The table's name in the database.
    dataset
        The Lance dataset checked out at the pinned version.
    connect
        Returns the database's lancedb connection (made on first use); called only for what pylance lacks.
    """

    def __init__(self, name: str, dataset: lance.LanceDataset, connect: Callable[[], DBConnection]) -> None:
        self.name = name
        self._dataset = dataset
        self._connect = connect
        self._table: Table | None = None

    @property
    def version(self) -> int:
        """The pinned Lance version."""
        return int(self._dataset.version)

    @property
    def schema(self) -> pa.Schema:
        """The table's Arrow schema at the pinned version."""
        return self._dataset.schema

    def to_lance(self) -> lance.LanceDataset:
        """The Lance dataset at the pinned version."""
        return self._dataset

    def to_arrow(self) -> pa.Table:
        """Every row at the pinned version."""
        return self._dataset.to_table()

    def count_rows(self, filter: str | None = None) -> int:
        """Rows matching ``filter`` (lancedb's SQL, see :func:`lance_sql`), all rows when None."""
        return self._dataset.count_rows(filter=None if filter is None else lance_sql(filter))

    def lancedb_table(self) -> Table:
        """The same table opened through lancedb and checked out at the pinned version (made once)."""
        if self._table is None:
            table = self._connect().open_table(self.name)
            table.checkout(self.version)
            self._table = table
        return self._table

    def __getattr__(self, attribute: str) -> Any:
        """What pylance lacks (``search``, ``list_indices``, ...) comes from :meth:`lancedb_table`."""
        if attribute.startswith("_"):  # unpickling and copying look these up before __init__ has run
            raise AttributeError(attribute)
        return getattr(self.lancedb_table(), attribute)
