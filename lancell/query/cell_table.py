"""What :class:`lancell.query.atlas_query.AtlasQuery` asks of the cell table: checked SQL filters and ranked
searches.

:func:`check_filter` refuses a ``where()`` filter (SQL, or keyword conditions written as SQL by
:mod:`lancell.query.keyword_filter`) before any row is read and, for a SOMA/Census-style filter
(``cell_type in ['a', 'b']``, ``"a"``), shows the SQL to write instead; :func:`search_spec` checks a vector,
full-text or hybrid search against the table's vector columns, and :func:`search_builder` turns the checked
spec into a LanceDB query builder.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from lancell.errors import LancellError, LancellWarning, QueryError, caller_outside_lancell
from lancell.query.keyword_filter import keyword_filter
from lancell.tables.pinned_table import lance_sql
from lancell.tables.registry import sql_literal

if TYPE_CHECKING:
    from lancedb.query import LanceQueryBuilder
    from lancedb.table import Table

    from lancell.tables.pinned_table import PinnedTable

__all__ = [
    "REFINE_FACTOR",
    "SearchSpec",
    "check_filter",
    "keyword_filter",
    "lance_message",
    "search_builder",
    "search_spec",
]

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


_LITERAL = r"'(?:[^']|'')*'"
_SOMA_LIST = re.compile(rf"{_LITERAL}|\b(?P<neg>not\s+)?in\s*\[(?P<items>(?:{_LITERAL}|[^\]'])*)\]", re.I)
_DOUBLE_QUOTED = re.compile(rf'{_LITERAL}|"(?P<text>[^"]*)"')
# where in Lance's own source an error was raised, which Lance appends to its message (", /home/.../x.rs:1:2")
_RUST_LOCATION = re.compile(r",\s*\S+\.rs:\d+:\d+\s*$")
# Lance's list of a table's columns in a planning error (with its own row columns: _rowid, _rowaddr, ...)
_VALID_FIELDS = re.compile(r"(Valid fields are )([^.]*)(\.)")


def sql_suggestion(sql: str, columns: Sequence[str]) -> str | None:
    """Lance SQL for a SOMA/Census-style filter, or None when ``sql`` has neither of their forms.

    ``"text"`` (not a column name) becomes ``'text'``; ``in [a, b]`` becomes ``IN (a, b)``.
    """

    def quote(match: re.Match[str]) -> str:
        text = match.group("text")
        if text is None or text in columns:
            return match.group(0)
        return sql_literal(text)

    def listed(match: re.Match[str]) -> str:
        if match.group("items") is None:
            return match.group(0)
        items = [i.strip() for i in re.findall(rf"{_LITERAL}|[^,]+", match.group("items")) if i.strip()]
        return f"{'NOT IN' if match.group('neg') else 'IN'} ({', '.join(items)})"

    rewritten = _SOMA_LIST.sub(listed, _DOUBLE_QUOTED.sub(quote, sql))
    return None if rewritten == sql else rewritten


def check_filter(cells: Table | PinnedTable, sql: str) -> None:
    """Check that ``sql`` is one whole SQL expression over the columns of ``cells``, reading no rows; planned
    by pylance in lancedb's dialect (:func:`~lancell.tables.pinned_table.lance_sql`).

    Raises
    ------
    QueryError
        ``sql`` is empty, does not parse as one whole expression (Lance would silently drop a trailing
        ``") OR (..."`` or ``"; ..."``), or names a column the cell table lacks. A SOMA/Census-style filter
        (``in [...]``, a double-quoted string) is refused with the SQL to write instead.
    """
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError(f"where() needs a non-empty SQL string, got {sql!r}")
    problem = _unbalanced(sql)
    if problem is not None:
        raise QueryError(f"the filter {sql!r} is not one SQL expression: {problem}")
    try:  # plans without reading rows; inside parentheses, trailing tokens are an error, not ignored
        cells.to_lance().scanner(filter=f"({lance_sql(sql)})", columns=[]).explain_plan()
    except LancellError:  # a store failure (StoreError) is not the filter's fault
        raise
    except (ValueError, RuntimeError, OSError) as exc:
        suggestion = sql_suggestion(sql, cells.schema.names)
        hint = (
            ""
            if suggestion is None
            else f"; write {suggestion} (SQL: lists as IN (...), strings in single quotes)"
        )
        said = _VALID_FIELDS.sub(lambda m: _own_fields(m, cells.schema.names), lance_message(exc))
        raise QueryError(
            f"the filter {sql!r} is not a valid filter on the cell table {cells.name!r}{hint}: {said}"
        ) from exc


def _own_fields(match: re.Match[str], columns: Sequence[str]) -> str:
    """Lance's list of valid fields without the row columns Lance adds (a column of the table's own, even
    one named like them, stays)."""
    listed = [name.strip() for name in match.group(2).split(",")]
    kept = [name for name in listed if name in columns or not name.startswith("_row")]
    return f"{match.group(1)}{', '.join(kept)}{match.group(3)}"


def lance_message(exc: BaseException) -> str:
    """Lance's error message without the place in Lance's own source it names at its end."""
    return _RUST_LOCATION.sub("", str(exc))


# Vector candidates per requested row taken from the ANN index and re-ranked by their stored vectors: the
# distances returned are exact, and a true neighbour ranked just outside the limit by the index is recovered.
REFINE_FACTOR = 5


@dataclass(frozen=True)
class SearchSpec:
    """A checked search: the query (a float32 vector, a text, or both), its kind (``vector``, ``fts`` or
    ``hybrid``), the columns searched and whether the vector part bypasses the ANN index (``exact``)."""

    query: str | np.ndarray | tuple[np.ndarray, str]
    query_type: Literal["vector", "fts", "hybrid"]
    vector_column_name: str | None
    fts_columns: str | Sequence[str] | None
    exact: bool = False


def _is_hybrid(query: SearchQuery) -> bool:
    return isinstance(query, tuple) and len(query) == 2 and isinstance(query[1], str)


def _query_vector(query: object, width: int, column: str) -> np.ndarray:
    """``query`` as the float32 vector searched in ``column`` (``width`` wide).

    Raises
    ------
    QueryError
        ``query`` is not numbers, not one vector of ``width`` values (a 2-D array would be several
        searches), or holds NaN or infinite values (a NaN vector is nobody's neighbour: no row).
    """
    try:
        vector = np.asarray(query, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise QueryError(f"a search embedding must be numbers, got {query!r}") from exc
    if vector.shape != (width,):
        raise QueryError(
            f"a search embedding is one vector of {width} values (the width of {column!r}), got an array "
            f"of shape {vector.shape}; search one embedding per query"
        )
    if bad := int((~np.isfinite(vector)).sum()):
        raise QueryError(f"the search embedding holds {bad} NaN or infinite values (as float32) of {width}")
    return vector


def search_spec(
    vectors: dict[str, int],
    query: SearchQuery,
    vector_column_name: str | None,
    query_type: Literal["auto", "vector", "fts", "hybrid"],
    fts_columns: str | Sequence[str] | None,
    exact: bool,
) -> SearchSpec:
    """Check a search against the cell table's vector columns ``vectors`` (name -> width).

    ``query_type="auto"`` is ``fts`` for a string, ``hybrid`` for ``(embedding, text)`` and ``vector``
    otherwise.

    Raises
    ------
    QueryError
        An unknown query type, an ambiguous or unknown vector column, an embedding that is not one finite
        vector as wide as its column, a text search given no string, a hybrid query that is not
        ``(embedding, text)``, or an option the search kind does not use (``vector_column_name`` or
        ``exact`` for a text search, ``fts_columns`` for a vector search).
    """
    if query_type == "auto":
        query_type = "fts" if isinstance(query, str) else "hybrid" if _is_hybrid(query) else "vector"
    if query_type not in ("vector", "fts", "hybrid"):
        raise QueryError(f"query_type must be auto, vector, fts or hybrid, got {query_type!r}")
    if query_type == "fts":
        if not isinstance(query, str):
            raise QueryError(f"text search needs a string, got {type(query).__name__}")
        if vector_column_name is not None or exact:
            raise QueryError(
                "vector_column_name and exact apply to vector and hybrid search, not text search"
            )
        return SearchSpec(query, "fts", None, fts_columns)
    if vector_column_name is None:
        if len(vectors) != 1:
            raise QueryError(f"name the vector column to search (vector columns: {sorted(vectors)})")
        vector_column_name = next(iter(vectors))
    if vector_column_name not in vectors:
        raise QueryError(f"{vector_column_name!r} is not a vector column (vector columns: {sorted(vectors)})")
    width = vectors[vector_column_name]
    if query_type == "hybrid":
        if not _is_hybrid(query):
            raise QueryError("hybrid search needs (embedding, text), e.g. search((vector, 'monocyte'), ...)")
        vector = _query_vector(query[0], width, vector_column_name)
        return SearchSpec((vector, query[1]), "hybrid", vector_column_name, fts_columns, exact)
    if isinstance(query, str):
        raise QueryError("vector search needs an embedding, got a string (use query_type='fts')")
    if fts_columns is not None:
        raise QueryError("fts_columns applies to text and hybrid search, not vector search")
    vector = _query_vector(query, width, vector_column_name)
    return SearchSpec(vector, "vector", vector_column_name, None, exact)


def _warn_of_unindexed_text(cells: Table, columns: str | Sequence[str]) -> None:
    """Warn that ``columns`` without a full-text index in this version of ``cells`` are matched by Lance's
    scan: whole words as written, where the index (and rows added after it) match lower-cased word stems
    without stop words: the same search gives other cells once ``optimize()`` has built the index."""
    indexed = {
        column for index in cells.list_indices() if index.index_type == "FTS" for column in index.columns
    }
    named = [columns] if isinstance(columns, str) else list(columns)
    if unindexed := [column for column in named if column not in indexed]:
        warnings.warn(
            f"text search on {unindexed} without a full-text index (optimize() builds it on the atlas's "
            "fts_columns): words match only as written (case and word form), where the index matches "
            "lower-cased word stems: the answer changes once the index exists",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def search_builder(cells: Table, spec: SearchSpec, limit: int | None) -> tuple[LanceQueryBuilder, int]:
    """The LanceDB builder of ``spec`` over ``cells`` and the limit to apply (text search: every match).

    The vector part of a search re-ranks :data:`REFINE_FACTOR` times the limit of index candidates by their
    stored vectors, or scans every row when ``spec.exact`` (the index bypassed).

    Raises
    ------
    QueryError
        A vector or hybrid search without a limit (results are never capped silently).
    """
    kind = spec.query_type
    if kind != "vector" and spec.fts_columns:
        _warn_of_unindexed_text(cells, spec.fts_columns)
    if limit is None and kind != "fts":
        raise QueryError(f"{kind} search needs an explicit .limit(n): results are never capped silently")
    rows = max(cells.count_rows(), 1)  # (Lance takes a 32-bit limit: no more rows exist anyway)
    limit = rows if limit is None else min(limit, rows)  # text search: every match, not lancedb's 10
    if kind == "fts":
        return cells.search(spec.query, query_type="fts", fts_columns=spec.fts_columns), limit
    if kind == "hybrid":
        vector, text = spec.query
        builder = cells.search(
            query_type="hybrid", vector_column_name=spec.vector_column_name, fts_columns=spec.fts_columns
        )
        builder = builder.vector(vector).text(text)
    else:
        builder = cells.search(spec.query, query_type="vector", vector_column_name=spec.vector_column_name)
    return (builder.bypass_vector_index() if spec.exact else builder.refine_factor(REFINE_FACTOR)), limit
