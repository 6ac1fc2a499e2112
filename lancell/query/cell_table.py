"""What :class:`lancell.query.atlas_query.AtlasQuery` asks of the cell table: checked SQL filters and ranked
searches.

:func:`keyword_filter` writes ``where(cell_type=["T cell", "B cell"], n_genes=(200, None))`` as SQL, with
values quoted and columns checked against the cell schema; :func:`check_filter` refuses a ``where()`` filter
before any row is read and, for a SOMA/Census-style filter (``cell_type in ['a', 'b']``, ``"a"``), shows the
SQL to write instead; :func:`search_spec` checks a vector, full-text or hybrid search against the table's
vector columns, and :func:`search_builder` turns the checked spec into a LanceDB query builder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from lancell.errors import QueryError
from lancell.tables.pinned_table import lance_sql

if TYPE_CHECKING:
    from lancedb.query import LanceQueryBuilder
    from lancedb.table import Table

    from lancell.tables.pinned_table import PinnedTable

__all__ = ["SearchSpec", "check_filter", "keyword_filter", "search_builder", "search_spec"]

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


def _sql_literal(column: str, field: pa.Field, value: object) -> str:
    """``value`` as a SQL literal for ``column`` (strings single-quoted, quotes doubled)."""
    kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
    elif pa.types.is_boolean(kind):
        if isinstance(value, bool | np.bool_):
            return "true" if value else "false"
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool | np.bool_
        ):
            if not math.isfinite(float(value)):
                raise QueryError(f"where({column}=...): {value!r} is not a finite number")
            return repr(value.item() if isinstance(value, np.generic) else value)
    raise QueryError(
        f"where({column}=...): {value!r} ({type(value).__name__}) cannot be compared with the cell "
        f"column {column!r} of type {field.type}"
    )


def _condition(column: str, field: pa.Field, value: object) -> str:
    if value is None:
        return f"{column} IS NULL"
    if isinstance(value, tuple):
        if len(value) != 2 or value == (None, None):
            raise QueryError(
                f"where({column}={value!r}): a range is (low, high) with None for an open end, "
                "e.g. (200, None)"
            )
        low, high = value
        bounds = [f"{column} >= {_sql_literal(column, field, low)}"] if low is not None else []
        bounds += [f"{column} <= {_sql_literal(column, field, high)}"] if high is not None else []
        return " AND ".join(bounds)
    if isinstance(value, list | set | frozenset | np.ndarray | pd.Index | pd.Series):
        values = list(value)
        if not values:
            raise QueryError(f"where({column}=[]): an empty list matches no cell; give at least one value")
        return f"{column} IN ({', '.join(_sql_literal(column, field, v) for v in values)})"
    return f"{column} = {_sql_literal(column, field, value)}"


def keyword_filter(schema: pa.Schema, conditions: Mapping[str, object]) -> str:
    """The SQL of keyword conditions on the cell table of ``schema``, ANDed.

    ``column=value`` is equality, ``column=[v1, v2]`` membership (``IN``), ``column=(low, high)`` an
    inclusive range with None for an open end, ``column=None`` a missing value. Strings are quoted with
    single quotes (a quote inside is doubled), so values never need escaping by the caller.

    Raises
    ------
    QueryError
        No conditions, a column the cell table lacks, a value whose type does not fit the column, an empty
        list, or a range that is not ``(low, high)``.
    """
    if not conditions:
        raise QueryError("where() needs a SQL string or column=value conditions")
    unknown = sorted(set(conditions) - set(schema.names))
    if unknown:
        raise QueryError(f"where(): unknown cell columns {unknown}; the cell table has {schema.names}")
    return " AND ".join(f"({_condition(c, schema.field(c), v)})" for c, v in conditions.items())


_LITERAL = r"'(?:[^']|'')*'"
_SOMA_LIST = re.compile(rf"{_LITERAL}|\b(?P<neg>not\s+)?in\s*\[(?P<items>(?:{_LITERAL}|[^\]'])*)\]", re.I)
_DOUBLE_QUOTED = re.compile(rf'{_LITERAL}|"(?P<text>[^"]*)"')


def sql_suggestion(sql: str, columns: Sequence[str]) -> str | None:
    """Lance SQL for a SOMA/Census-style filter, or None when ``sql`` has neither of their forms.

    ``"text"`` (not a column name) becomes ``'text'``; ``in [a, b]`` becomes ``IN (a, b)``.
    """

    def quote(match: re.Match[str]) -> str:
        text = match.group("text")
        if text is None or text in columns:
            return match.group(0)
        return "'" + text.replace("'", "''") + "'"

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
        raise QueryError(f"where({sql!r}) is not one SQL expression: {problem}")
    try:  # plans without reading rows; inside parentheses, trailing tokens are an error, not ignored
        cells.to_lance().scanner(filter=f"({lance_sql(sql)})", columns=[]).explain_plan()
    except (ValueError, RuntimeError, OSError) as exc:
        suggestion = sql_suggestion(sql, cells.schema.names)
        hint = (
            ""
            if suggestion is None
            else f"; write {suggestion} (SQL: lists as IN (...), strings in single quotes)"
        )
        raise QueryError(
            f"where({sql!r}) is not a valid filter on the cell table {cells.name!r}{hint}: {exc}"
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
