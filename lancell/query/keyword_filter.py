"""``where(column=value)``: keyword conditions on cell columns written as Lance SQL.

``column=value`` is equality, ``column=[v1, v2]`` membership (``IN``; None among them: a missing value too),
``column=(low, high)`` an inclusive range of numbers or times with None for an open end, ``column=None`` a
missing value. Each value is written as a literal of its
column's type (strings quoted, times as ``TIMESTAMP``, days as ``DATE``), or refused when it does not fit
the column: Lance compares nothing across types (``n_genes = 4.0`` is its error, a time as text matches
nothing).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from lancell.errors import QueryError
from lancell.tables.registry import sql_literal

__all__ = ["keyword_filter"]

_INT64_MIN = -(2**63)


def _identifier(column: str) -> str:
    """``column`` backquoted: a name such as ``null``, ``true`` or ``select`` is then read as the column."""
    return f"`{column}`"


def _shown(value: object) -> str:
    """``repr(value)``, cut short for an integer of more than 30 digits."""
    text = repr(value)
    return f"{text[:12]}...({len(text)} digits)" if isinstance(value, int) and len(text) > 30 else text


def _refused(column: str, field: pa.Field, value: object, why: str = "") -> QueryError:
    return QueryError(
        f"where({column}=...): {_shown(value)} ({type(value).__name__}) cannot be compared with the cell "
        f"column {column!r} of type {field.type}{why}"
    )


def _held(column: str, field: pa.Field, kind: pa.DataType, value: object) -> None:
    """Refuse a whole number ``value`` the integer column cannot hold (Lance's error quoted its parser; no
    cell holds it)."""
    held = np.iinfo(kind.to_pandas_dtype())
    if not held.min <= int(value) <= held.max:
        raise _refused(column, field, value, f": it holds whole numbers from {held.min} to {held.max}")


def _number(column: str, field: pa.Field, kind: pa.DataType, value: object) -> str:
    if isinstance(value, int | np.integer) and pa.types.is_integer(kind):
        _held(column, field, kind, value)  # (before float(): an int beyond float64's range)
    try:
        number = float(value)
    except OverflowError as exc:  # an int beyond float64's range
        raise QueryError(f"where({column}=...): {_shown(value)} is beyond float64's range") from exc
    if math.isnan(number):
        raise QueryError(
            f"where({column}=...): {_shown(value)} is no number (a NaN is stored as missing: None selects "
            "the missing values)"
        )
    if math.isinf(number) and pa.types.is_integer(kind):
        raise _refused(column, field, value, ": it holds whole numbers")
    if math.isinf(number):  # (ingestion stores infinities; SQL has no literal for them)
        return f"CAST('{'-' if number < 0 else ''}Infinity' AS DOUBLE)"
    if pa.types.is_integer(kind):
        if not float(value).is_integer():
            raise _refused(column, field, value, ": it holds whole numbers")
        _held(column, field, kind, value)  # (a whole float: 1e19)
        value = int(value)  # 4.0 -> 4: Lance compares an integer column with integers only
        if value == _INT64_MIN:  # SQL reads -9223372036854775808 as minus a literal beyond int64
            return f"({_INT64_MIN + 1} - 1)"
    return repr(value.item() if isinstance(value, np.generic) else value)


def _time(column: str, field: pa.Field, kind: pa.TimestampType, value: object) -> str:
    """A time (``datetime``, ``pd.Timestamp``, ``np.datetime64``) as a ``TIMESTAMP`` literal: zone-aware for
    a column with a time zone (written in UTC), naive for one without."""
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise QueryError(f"where({column}=...): {value!r} is not a time; a missing value is None")
    if kind.tz is None and stamp.tzinfo is not None:
        raise _refused(column, field, value, ": the column's times have no time zone")
    if kind.tz is not None:
        if stamp.tzinfo is None:
            raise _refused(column, field, value, f": give a time in a time zone (the column's is {kind.tz})")
        stamp = stamp.tz_convert("UTC")
    if stamp != stamp.floor(kind.unit):  # the literal would be cut to the column's unit: another time
        raise _refused(
            column, field, value, f": it is finer than the column's unit ({kind.unit}); round it to that unit"
        )
    return f"TIMESTAMP '{stamp.isoformat(sep=' ')}'"


def _sql_literal(column: str, field: pa.Field, value: object) -> str:
    """``value`` as a SQL literal for ``column`` (strings single-quoted, quotes doubled)."""
    kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if isinstance(value, str):
            return sql_literal(value)
    elif pa.types.is_boolean(kind):
        if isinstance(value, bool | np.bool_):
            return "true" if value else "false"
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool | np.bool_
        ):
            return _number(column, field, kind, value)
    elif pa.types.is_timestamp(kind):
        if isinstance(value, dt.datetime | np.datetime64):  # pd.Timestamp is a datetime
            return _time(column, field, kind, value)
    elif pa.types.is_date(kind):
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return f"DATE '{value.isoformat()}'"
        raise _refused(column, field, value, ": give a datetime.date")
    raise _refused(column, field, value)


def _condition(column: str, field: pa.Field, value: object) -> str:
    name = _identifier(column)
    if value is None:
        return f"{name} IS NULL"
    if isinstance(value, tuple):
        if len(value) != 2 or value == (None, None):
            raise QueryError(
                f"where({column}={value!r}): a range is (low, high) with None for an open end, "
                "e.g. (200, None)"
            )
        low, high = value
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind):
            shown = [v for v in value if v is not None]
            raise QueryError(  # (a pair of labels passed as a tuple matched every label sorting between)
                f"where({column}={value!r}): a tuple is a range (low, high), for numbers and times; for "
                f'these values give a list, where({column}={shown!r}) (a range of text: where("{column} '
                ">= 'a' AND ... <= 'b'\"))"
            )
        bounds = [f"{name} >= {_sql_literal(column, field, low)}"] if low is not None else []
        bounds += [f"{name} <= {_sql_literal(column, field, high)}"] if high is not None else []
        if low is not None and high is not None and _above(column, value):
            raise QueryError(f"where({column}={value!r}): the range's low end is above its high end")
        return " AND ".join(bounds)
    if isinstance(value, list | set | frozenset | np.ndarray | pd.Index | pd.Series):
        values = list(value)
        if not values:
            raise QueryError(f"where({column}=[]): an empty list matches no cell; give at least one value")
        given = [v for v in values if v is not None]  # None among them: the missing value too, as alone
        among = f"{name} IN ({', '.join(_sql_literal(column, field, v) for v in given)})" if given else None
        if len(given) == len(values):
            return among
        return f"{name} IS NULL" if among is None else f"({among} OR {name} IS NULL)"
    return f"{name} = {_sql_literal(column, field, value)}"


def keyword_filter(schema: pa.Schema, conditions: Mapping[str, object]) -> str:
    """The SQL of keyword conditions on the cell table of ``schema``, ANDed (module doc).

    Columns are backquoted (a column named ``null`` or ``select`` is the column, not the keyword); strings
    are quoted with single quotes (a quote inside is doubled), so values never need escaping by the caller.

    Raises
    ------
    QueryError
        No conditions, a column the cell table lacks, a value whose type does not fit the column (a
        fraction for an integer column, a time without a time zone for a column with one or the reverse, a
        time for a date column), an empty list, or a range that is not ``(low, high)`` or whose low end is
        above its high end.
    """
    if not conditions:
        raise QueryError("where() needs a SQL string or column=value conditions")
    unknown = sorted(set(conditions) - set(schema.names))
    if unknown:
        raise QueryError(f"where(): unknown cell columns {unknown}; the cell table has {schema.names}")
    return " AND ".join(f"({_condition(c, schema.field(c), v)})" for c, v in conditions.items())


def _above(column: str, value: tuple) -> bool:
    """Whether the range ``value``'s low end is above its high end (two documented forms of a time compare
    as times: a datetime and an np.datetime64 do not compare in Python)."""
    low, high = value
    try:
        return bool(low > high)
    except TypeError:
        try:
            return bool(pd.Timestamp(low) > pd.Timestamp(high))
        except (TypeError, ValueError) as exc:
            raise QueryError(
                f"where({column}={value!r}): the range's ends do not compare ({exc}); give both in one form"
            ) from exc
