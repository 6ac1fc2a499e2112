"""What :class:`lancell.query.AtlasQuery` asks of the cell table: checked SQL filters and ranked searches.

:func:`check_filter` refuses a ``where()`` filter before any row is read; :func:`search_spec` checks a vector,
full-text or hybrid search against the table's vector columns, and :func:`search_builder` turns the checked
spec into a LanceDB query builder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from lancell.errors import QueryError

if TYPE_CHECKING:
    from lancedb.query import LanceQueryBuilder
    from lancedb.table import Table

__all__ = ["SearchSpec", "check_filter", "search_builder", "search_spec"]

SearchQuery = str | Sequence[float] | np.ndarray | tuple[Sequence[float] | np.ndarray, str]


def _unbalanced(sql: str) -> str | None:
    """Why ``sql`` cannot be wrapped in parentheses and ANDed with other filters, or None if it can."""
    depth, quote = 0, ""
    for char in sql:
        if quote:
            quote = "" if char == quote else quote  # a doubled quote closes and reopens: still balanced
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return "a ')' closes a parenthesis it did not open"
    if quote:
        return f"an unclosed {quote}"
    return "an unclosed '('" if depth else None


def check_filter(cells: Table, sql: str) -> None:
    """Check that ``sql`` is one whole SQL expression over the columns of ``cells``, reading no rows.

    Raises
    ------
    QueryError
        ``sql`` is empty, does not parse as one whole expression (Lance would silently drop a trailing
        ``") OR (..."`` or ``"; ..."``), or names a column the cell table lacks.
    """
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError(f"where() needs a non-empty SQL string, got {sql!r}")
    problem = _unbalanced(sql)
    if problem is not None:
        raise QueryError(f"where({sql!r}) is not one SQL expression: {problem}")
    try:  # plans without reading rows; inside parentheses, trailing tokens are an error, not ignored
        cells.search().where(f"({sql})").explain_plan()
    except (ValueError, RuntimeError, OSError) as exc:
        raise QueryError(
            f"where({sql!r}) is not a valid filter on the cell table {cells.name!r}: {exc}"
        ) from exc


@dataclass(frozen=True)
class SearchSpec:
    """A checked search: the query, its kind (``vector``, ``fts`` or ``hybrid``) and the columns searched."""

    query: SearchQuery
    query_type: Literal["vector", "fts", "hybrid"]
    vector_column_name: str | None
    fts_columns: str | Sequence[str] | None


def search_spec(
    vectors: dict[str, int],
    query: SearchQuery,
    vector_column_name: str | None,
    query_type: Literal["auto", "vector", "fts", "hybrid"],
    fts_columns: str | Sequence[str] | None,
) -> SearchSpec:
    """Check a search against the cell table's vector columns ``vectors`` (name -> width).

    Raises
    ------
    QueryError
        An unknown query type, an ambiguous or unknown vector column, a string given to a vector search or a
        hybrid query that is not ``(embedding, text)``.
    """
    if query_type == "auto":
        query_type = "fts" if isinstance(query, str) else "vector"
    if query_type not in ("vector", "fts", "hybrid"):
        raise QueryError(f"query_type must be auto, vector, fts or hybrid, got {query_type!r}")
    if query_type in ("vector", "hybrid"):
        if vector_column_name is None:
            if len(vectors) != 1:
                raise QueryError(f"name the vector column to search (vector columns: {sorted(vectors)})")
            vector_column_name = next(iter(vectors))
        if vector_column_name not in vectors:
            raise QueryError(
                f"{vector_column_name!r} is not a vector column (vector columns: {sorted(vectors)})"
            )
    if query_type == "vector" and isinstance(query, str):
        raise QueryError("vector search needs an embedding, got a string (use query_type='fts')")
    if query_type == "hybrid" and not (
        isinstance(query, tuple) and len(query) == 2 and isinstance(query[1], str)
    ):
        raise QueryError("hybrid search needs (embedding, text), e.g. search((vector, 'monocyte'), ...)")
    return SearchSpec(query, query_type, vector_column_name, fts_columns)


def search_builder(cells: Table, spec: SearchSpec, limit: int | None) -> tuple[LanceQueryBuilder, int]:
    """The LanceDB builder of ``spec`` over ``cells`` and the limit to apply (text search: every match).

    Raises
    ------
    QueryError
        A vector or hybrid search without a limit (results are never capped silently).
    """
    kind = spec.query_type
    if kind != "fts" and limit is None:
        raise QueryError(f"{kind} search needs an explicit .limit(n): results are never capped silently")
    options = {"vector_column_name": spec.vector_column_name, "fts_columns": spec.fts_columns}
    if kind == "hybrid":
        vector, text = spec.query
        builder = cells.search(query_type="hybrid", **options)
        builder = builder.vector(np.asarray(vector, dtype=np.float32)).text(text)
    else:
        query = np.asarray(spec.query, dtype=np.float32) if kind == "vector" else spec.query
        builder = cells.search(query, query_type=kind, **options)
    if limit is None:  # text search: every match, not lancedb's default of 10
        limit = max(cells.count_rows(), 1)
    return builder, limit
