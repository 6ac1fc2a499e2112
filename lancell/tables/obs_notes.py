"""What storing obs columns changes or leaves out without losing a cell's value: the notes ingestion warns
of (:func:`lancell.ingest.plan.plan_ingest`), beside :mod:`lancell.tables.obs`, which converts them."""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from lancell.errors import IngestError, require_text
from lancell.tables.obs import BOOLS, as_text, schema_kind

__all__ = ["altered_obs_columns", "undeclared_obs_columns"]


def altered_obs_columns(obs: pd.DataFrame, fields: list[pa.Field]) -> list[str]:
    """What storing the declared obs columns changes without losing a value, one sentence per column:
    a zone-aware datetime is stored as UTC without its zone; an ordered categorical as text (it comes back
    with sorted, unordered categories); numbers, booleans or times under a text field as their text (an
    integer column with missing values, which pandas holds as floats, as ``"1.0"``; integers are not
    named: 1 is stored as ``"1"``)."""
    notes = []
    for field in fields:
        if field.name not in obs.columns or len(obs.columns[obs.columns == field.name]) != 1:
            continue
        column = obs[field.name]
        dtype = column.dtype
        zones = _zones(column) if pa.types.is_timestamp(field.type) and not field.type.tz else []
        if zones:
            held = f"zone {zones[0]}" if len(zones) == 1 else f"zones {', '.join(zones)}"
            notes.append(
                f"column {field.name!r}: times in {held} are stored in UTC, {held.split()[0]} dropped"
            )
        elif isinstance(dtype, pd.CategoricalDtype) and dtype.ordered:
            notes.append(f"column {field.name!r}: the order of its ordered categories is not stored")
        if schema_kind(field.type) == "text" and (note := _stored_as_text(column)):
            notes.append(f"column {field.name!r}: {note}")
    return notes


def _zones(column: pd.Series) -> list[str]:
    """The time zones of a column's zoned times (pandas', Arrow's or an object column's; a categorical's
    categories), sorted: empty where its times have none."""
    values = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else column
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        return [str(dtype.tz)]
    if isinstance(dtype, pd.ArrowDtype) and pa.types.is_timestamp(dtype.pyarrow_dtype):
        return [dtype.pyarrow_dtype.tz] if dtype.pyarrow_dtype.tz else []
    if dtype.kind != "O":
        return []
    zoned = {
        str(value.tzinfo)
        for value in values
        if isinstance(value, datetime.datetime) and value is not pd.NaT and value.utcoffset() is not None
    }
    return sorted(zoned)


def _stored_as_text(column: pd.Series) -> str | None:
    """How a column of floats, booleans or times is written under a text field (also one such value among
    the text of an object column), or None for others."""
    values = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else column.dropna()
    if values.dtype.kind == "O":
        return _mixed_into_text(values)
    if isinstance(values.dtype, pd.IntervalDtype):  # (pd.cut's bins)
        return _mixed_into_text(values.astype(object))
    if values.dtype.kind not in "bcfmM" or not len(values):  # integers are stored as written: 1 as "1"
        return None
    first = values[0] if isinstance(values, pd.Index) else values.iloc[0]
    shown = first.item() if isinstance(first, np.generic) else first  # (float32 0.1: 0.10000000149011612)
    note = f"{values.dtype} values are stored as their text (e.g. {shown!r} as {as_text(first)!r})"
    if values.dtype.kind == "f" and column.isna().any():
        note += "; an integer column with missing values is held as floats: .astype('Int64') stores '1'"
    return note


# what an object column's values are written as their text under a text field, with a warning (booleans too)
_STORED_AS_TEXT = (
    float,
    np.floating,
    complex,
    np.complexfloating,
    pd.Interval,
    datetime.date,
    datetime.timedelta,
    np.datetime64,
    list,
    tuple,
    dict,
    set,
    frozenset,
    np.ndarray,
)


def _mixed_into_text(values: pd.Series | pd.Index) -> str | None:
    """The first boolean, float, time or container (list, tuple, dict, set, array) among an object column's
    values, as it is stored under a text field, or None where every value is text (or an integer, stored as
    written)."""
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty", "integer"):
        return None
    for value in values:
        if isinstance(value, (*BOOLS, *_STORED_AS_TEXT)):
            example = f"(e.g. {value!r} as {str(value)!r})"
            return f"{type(value).__name__} values among its objects are stored as their text {example}"
    return None


def undeclared_obs_columns(dataset: str, obs: pd.DataFrame, fields: list[pa.Field]) -> list[str]:
    """The obs columns (as strings, sorted) that no field of ``fields`` declares: ingestion does not store
    them (the dataset record lists them).

    Raises
    ------
    IngestError
        A column name that UTF-8 cannot store (the record could not list it).
    """
    declared = {f.name for f in fields}
    undeclared = sorted({str(c) for c in obs.columns if c not in declared})
    for name in undeclared:
        require_text(f"dataset {dataset!r}: obs column", name, IngestError)
    return undeclared
