"""Which cell rows a query reads: its SQL filters, ranked search, limit and kept columns, and reading them.

:class:`~lancell.query.atlas_query.AtlasQuery` holds one :class:`CellSelection` (replaced, never changed in
place, by ``where()``, ``search()``, ``limit()`` and ``select()``); its Arrow, pandas, count and
reconstruction terminals all read rows through it, so they count and return the same rows (a search's
included) and the filter that hides uncommitted rows (:mod:`lancell.tables.visibility`) is added in one
place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import LancellError, QueryError
from lancell.query.cell_table import SearchSpec, lance_message, search_builder
from lancell.storage.store_failures import lance_removed, store_error, wrapped_interrupt
from lancell.tables.obs_read import NULLABLE_DTYPES, decoded
from lancell.tables.pinned_table import lance_sql, scan_readahead
from lancell.tables.stored_fields import SEARCH_RESULT_COLUMN, pointer_fields_from_arrow, vector_fields
from lancell.tables.visibility import visible_cells_filter

if TYPE_CHECKING:
    from lancedb.query import LanceQueryBuilder

    from lancell.core import AtlasCore

__all__ = ["CellSelection"]

_CELL_NAMES = frozenset({"uid", "obs_name"})  # a value per cell: no labels to share across batches
_SHARED_LABELS = 65_536  # distinct values of a text column at most, for batches to share its categories
_LARGEST_BATCH = 2**32 - 1  # rows per batch Lance reads at most (no selection holds more to batch)

# lancedb's names of the search columns -> the names a query returns
_SEARCH_COLUMNS = {
    "_distance": SEARCH_RESULT_COLUMN["vector"],
    "_score": SEARCH_RESULT_COLUMN["fts"],
    "_relevance_score": SEARCH_RESULT_COLUMN["hybrid"],
}


@dataclass(frozen=True)
class CellSelection:
    """The cell rows of one atlas handle that a query selects.

    Attributes
    ----------
    core
        The atlas handle read.
    filters
        Checked SQL filters, ANDed.
    limit
        At most this many rows; None: all.
    columns
        Cell columns kept besides ``uid``, ``dataset_uid`` and the pointer columns; None: every column.
    search
        A ranked search (rows in rank order), or None for scan order.
    """

    core: AtlasCore
    filters: tuple[str, ...] = ()
    limit: int | None = None
    columns: tuple[str, ...] | None = None
    search: SearchSpec | None = None

    def where_clause(self) -> str | None:
        """The filters, ANDed, plus the one hiding uncommitted cell rows when there are any (``limit(0)``:
        ``false``, since LanceDB's ``limit(0)`` means no limit)."""
        filters = [*self.filters, visible_cells_filter(self.core), "false" if self.limit == 0 else None]
        return " AND ".join(f"({f})" for f in filters if f is not None) or None

    def kept_columns(self) -> list[str] | None:
        """The cell columns read (identity and pointers always, in table order), None for all."""
        if self.columns is None:
            return None
        schema = self.core.cell_arrow
        keep = {"uid", "dataset_uid", *pointer_fields_from_arrow(schema), *self.columns}
        return [n for n in schema.names if n in keep]

    def builder(self) -> LanceQueryBuilder:
        """A LanceDB query of the selected rows (search, filter, kept columns, limit)."""
        cells = self.core.tables.cells
        limit = self.limit
        if self.search is None:
            builder = cells.search()
        else:
            builder, limit = search_builder(cells, self.search, limit)
        where = self.where_clause()
        if where is not None:
            builder = builder.where(where, prefilter=True) if self.search else builder.where(where)
        if self.columns is not None:
            builder = builder.select(self._with_distance(self.kept_columns()))
        if limit is not None:  # limit(0): where_clause() selects no row (LanceDB's 0: none, or refused)
            builder = builder.limit(max(limit, 1))
        return builder

    def _with_distance(self, columns: list[str]) -> list[str]:
        """``columns`` and a vector search's ``_distance`` or a text search's ``_score``, named: Lance adds
        them to the columns selected only while a deprecated default lasts (and prints a warning that says
        so, on every call). A hybrid search names neither: lancedb gives its selection to both of its
        searches, and the vector one refuses ``_score`` (Lance's warning is printed)."""
        kind = None if self.search is None else self.search.query_type
        added = {"vector": "_distance", "fts": "_score"}.get(kind)
        return [*columns, added] if added is not None and added not in columns else columns

    def scan(self, columns: list[str] | None, where: str | None) -> pa.Table:
        """The rows matching ``where``, read by pylance in one pass.

        lancedb's query path costs ~5 ms per call and a round trip per 1,024-row batch; the Lance dataset
        underneath (opened once per snapshot-pinned handle) answers the same filter directly, once written
        in pylance's dialect (:func:`~lancell.tables.pinned_table.lance_sql`: a double-quoted name is a column
        in lancedb's SQL and a string in pylance's, which would silently select no row).
        """
        cells = self.core.pinned("cells_dataset", self.core.tables.cells.to_lance)
        return cells.to_table(
            columns=columns, filter=lance_sql(where) if where else None, limit=self.limit, **scan_readahead()
        )

    def scan_batches(self, columns: list[str], batch_size: int) -> tuple[int, Iterator[pa.RecordBatch]]:
        """How many rows are selected, and their ``columns`` in record batches of one Lance version (the
        count taken on the same version), filtered as :meth:`scan` filters; the selection has no search.

        Raises
        ------
        QueryError
            Lance refuses the filter.
        """
        where = self.where_clause()
        where = lance_sql(where) if where else None
        try:
            cells = self.core.tables.cells.to_lance()
            n = cells.count_rows(filter=where)
        except LancellError:  # a store failure (StoreError) is not the filter's fault
            raise
        except (ValueError, RuntimeError, OSError) as exc:
            _raise_if_not_the_query(exc)
            raise QueryError(f"query failed for filter {where!r}: {exc}") from exc
        n = n if self.limit is None else min(n, self.limit)
        batches = cells.to_batches(
            columns=columns, filter=where, limit=self.limit, batch_size=batch_size, **scan_readahead()
        )
        return n, batches

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The selected rows (``columns``, else :meth:`kept_columns`): a search in rank order, or a scan.

        Lance's errors are raised as :class:`~lancell.errors.QueryError`, and the search columns are
        renamed ``distance`` / ``score``.
        """
        columns = self.kept_columns() if columns is None else columns
        read = self.core.cell_arrow.names if columns is None else columns
        added = SEARCH_RESULT_COLUMN[self.search.query_type] if self.search else None
        if added in read:
            raise QueryError(  # a cell schema of an older lancell could declare it
                f"cell column {added!r} has the name of the column this search adds: select() the columns "
                "wanted without it"
            )
        try:
            if self.search is None:
                table = self.scan(columns, self.where_clause())
            else:
                builder = self.builder()
                table = (
                    builder if columns is None else builder.select(self._with_distance(columns))
                ).to_arrow()
        except LancellError:
            raise
        except (ValueError, RuntimeError, OSError) as exc:
            _raise_if_not_the_query(exc)
            said = lance_message(exc)
            if "full text search unless an INVERTED index" in said:  # (Lance's words)
                said += (
                    "; text search needs the atlas created with fts_columns=[...] (the string cell columns "
                    "to index) and optimize() run since cells were added (a snapshot taken before has no "
                    "index), or the columns to search named: search(..., fts_columns=[...]) reads them "
                    "without an index"
                )
            if "required for phrase queries" in said:  # (Lance's words; its remedy is an index option)
                said += (
                    "; this full-text index keeps no word positions (an older lancell built it): optimize() "
                    "of the live atlas builds it again with them (a snapshot taken after reads it), or "
                    "search the words without quotes"
                )
            where = self.where_clause()
            failed = "query failed" if where is None else f"query failed for filter {where!r}"
            raise QueryError(f"{failed}: {said}") from exc
        if "_relevance_score" in table.column_names:  # hybrid: an empty answer keeps its parts' columns too
            table = table.drop_columns([n for n in ("_distance", "_score") if n in table.column_names])
        return table.rename_columns([_SEARCH_COLUMNS.get(n, n) for n in table.column_names])

    def read_pandas(self) -> pd.DataFrame:
        """:meth:`read` as a pandas frame; integer and boolean columns are pandas' nullable ones (as in
        ``to_anndata().obs``), so a null does not turn them into rounded floats."""
        table = self.read()
        if any(pa.types.is_dictionary(field.type) for field in table.schema):  # (an old Enum field)
            table = pa.table({name: decoded(table.column(name)) for name in table.column_names})
        return table.to_pandas(types_mapper=NULLABLE_DTYPES.get)

    def batches(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """The selected rows (:meth:`kept_columns`) in record batches of at most ``batch_size``, in query
        order. A ranked search is read whole (LanceDB ranks before it returns a row), then sliced; its
        columns are named as :meth:`read` names them."""
        batch_size = min(batch_size, _LARGEST_BATCH)  # (Lance reads 32 bits: 2**32 was its OverflowError)
        if self.search is None:
            return self.builder().to_batches(batch_size)
        return iter(self.read().to_batches(max_chunksize=batch_size))

    def text_values(
        self, keep: Callable[[pa.RecordBatch], pa.RecordBatch], pointer: str
    ) -> dict[str, list[str]]:
        """Each text column's values (sorted, nulls left out) among the selected rows that ``keep`` keeps (a
        plan's ``select``, which reads the ``pointer`` column): read in batches of those columns alone (a
        search's rows whole, as :meth:`batches` reads them). Cell names (``uid``, ``obs_name``) and columns of
        more than ``_SHARED_LABELS`` values are left out: their categories stay each batch's own (all of
        them in every batch cost memory and time in the number of cells)."""
        schema = self.core.cell_arrow
        kept = self.kept_columns() or schema.names
        text = [
            n
            for n in kept
            if n not in _CELL_NAMES and schema.field(n).type in (pa.string(), pa.large_string())
        ]
        if not text:
            return {}
        if self.search is None:
            _, batches = self.scan_batches([*text, pointer], 65_536)
        else:
            batches = iter(self.read([*text, pointer]).to_batches())
        values: dict[str, set[str]] = {name: set() for name in text}
        for batch in batches:
            batch = keep(batch)
            for name in [name for name in text if name in values]:
                values[name].update(pc.unique(batch.column(name)).drop_null().to_pylist())
                if len(values[name]) > _SHARED_LABELS:  # a name per cell, not labels: its own per batch
                    del values[name]
        return {name: sorted(found) for name, found in values.items()}

    def count(self) -> int:
        """Number of selected rows: LanceDB's ``count_rows`` (no column is read), or for a search the rows it
        returns (their ``uid`` read)."""
        if self.search is not None:
            return self.read(["uid"]).num_rows
        where = self.where_clause()
        try:
            n = self.core.tables.cells.count_rows(where)
        except LancellError:  # a store failure (StoreError) is not the filter's fault
            raise
        except (ValueError, RuntimeError, OSError) as exc:
            raise QueryError(f"count failed for filter {where!r}: {exc}") from exc
        return min(n, self.limit) if self.limit is not None else n

    def count_by(self, column: str) -> pd.Series:
        """Selected rows per value of ``column`` (``cells``, most first); only that column is read (for a
        search, of the rows it returns)."""
        if column not in self.core.cell_arrow.names:
            raise QueryError(f"cannot group by unknown column {column!r}")
        if column in pointer_fields_from_arrow(self.core.cell_arrow):
            raise QueryError(
                f"cannot group by {column!r}, a feature space's pointer column: group by 'dataset_uid' "
                "(its cells per dataset) or a metadata column"
            )
        if column in vector_fields(self.core.cell_arrow):
            raise QueryError(f"cannot group by {column!r}, an embedding column: group by a metadata column")
        if self.search is not None:
            values = self.read([column]).column(column)
        else:
            where = self.where_clause()
            try:
                values = self.scan([column], where).column(column)
            except LancellError:  # a store failure (StoreError) is not the filter's fault
                raise
            except (ValueError, RuntimeError, OSError) as exc:
                raise QueryError(f"count failed for filter {where!r}: {exc}") from exc
        values = decoded(values)  # (an old Enum field's repeated dictionary)
        if pa.types.is_floating(values.type):  # grouped as filters compare: -0.0 as 0.0, every NaN as one
            zero, nan = pa.scalar(0.0, values.type), pa.scalar(float("nan"), values.type)
            values = pc.if_else(pc.is_nan(values), nan, pc.add(values, zero))
        counts = pc.value_counts(values).flatten()
        index = pd.Index(counts[0].to_pandas(types_mapper=NULLABLE_DTYPES.get), name=column)  # as in obs
        return pd.Series(counts[1].to_numpy(), index=index, name="cells").sort_values(ascending=False)


def _raise_if_not_the_query(exc: Exception) -> None:
    """Raise what a failed read of the cell table really was when it was not the query's (nor its filter's)
    fault: a Ctrl-C that Lance said again as its own error, or a table file not there (a store failure)."""
    if (interrupt := wrapped_interrupt(exc)) is not None:
        raise interrupt from exc
    if lance_removed(exc):
        raise store_error(exc, "reading the cell table failed") from exc
