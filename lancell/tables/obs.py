"""obs -> Arrow: convert an AnnData ``obs`` frame to the cell table's declared column types
(:mod:`lancell.tables.obs_read` reads them back).

Conversion happens before anything is written; every failure names the dataset, the column and an offending
value, so a NaN hidden in a categorical or an integer column is reported, not discovered after the write.
"""

from __future__ import annotations

import datetime
import enum
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import ObsConversionError

__all__ = ["BOOLS", "as_text", "nul_flags", "obs_to_arrow", "refuse_mixed_zones", "schema_kind"]

_NOT_INTEGERS = {"b": "boolean", "M": "datetime", "m": "timedelta"}
_FLOAT_INTEGERS = 2**53  # float64 holds every whole number below it, and not all above


def _first_bad(series: pd.Series, mask: np.ndarray) -> str:
    """The first flagged row: its position, its label (named by the index's name, ``obs name`` when it has
    none) and its value."""
    position = int(np.flatnonzero(mask)[0])
    label = series.index.name or "obs name"
    return f"row {position} ({label} {series.index[position]!r}, value {series.iloc[position]!r})"


def _column_to_arrow(dataset: str, series: pd.Series, field: pa.Field) -> pa.Array:
    categorical = isinstance(series.dtype, pd.CategoricalDtype)
    if categorical:  # a category is never NaN: the missing values are the codes -1
        missing = series.cat.codes.to_numpy() < 0
    else:
        missing = pd.isna(series).to_numpy(dtype=bool) if len(series) else np.zeros(0, dtype=bool)
        if isinstance(series.dtype, pd.api.extensions.ExtensionDtype) and series.dtype.kind == "f":
            missing |= np.isnan(series.to_numpy(dtype=np.float64, na_value=np.nan))  # (Float64's 0/0: no NA)
    if missing.any() and not field.nullable:
        raise ObsConversionError(
            dataset,
            field.name,
            f"{int(missing.sum())} missing values (NaN/None) but the schema field is not nullable, "
            f"first at {_first_bad(series, missing)}",
        )
    target = field.type
    kind = schema_kind(target)
    if pa.types.is_list(target) or pa.types.is_large_list(target):  # Arrow: "CD4" as letters, [1.5] as [1]
        raise ObsConversionError(
            dataset,
            field.name,
            f"the cell schema declares it as {target}, which obs values are not converted to (a list field: "
            "Arrow would store text as its letters; lancell stores int, float, bool, str, date and datetime)",
        )
    if missing.all():  # no value to convert (NaN throughout: pandas' float64 for a column of no values)
        return pa.nulls(len(series), target)
    if categorical and kind == "text":
        # each category converted once, then taken by code (checked as an object column's values are)
        refused = [label for label in series.cat.categories if _refused_value(kind, label)]
        if refused:
            raise ObsConversionError(
                dataset,
                field.name,
                f"{type(refused[0]).__name__} category {refused[0]!r} for a {field.type} field; decode the "
                "categories explicitly (.cat.rename_categories(bytes.decode))",
            )
        try:
            labels = pa.array([as_text(c) for c in series.cat.categories], type=target)
        except UnicodeEncodeError as exc:  # (a label decoded from bytes that are not UTF-8)
            raise ObsConversionError(dataset, field.name, f"a label UTF-8 cannot write: {exc}") from exc
        return _without_nul(
            dataset, series, field, labels.take(pa.array(series.cat.codes.to_numpy(), mask=missing))
        )
    values = series.astype(object) if categorical else series
    _refuse_other_kinds(dataset, series, values, missing, field)
    if kind == "timestamp" and values.dtype.kind == "O":
        _refuse_mixed_zones(dataset, series, values, missing, field)
    if pa.types.is_integer(target):
        values = _to_integers(dataset, series, values, missing, field)
    elif pa.types.is_date(target):
        values = _to_dates(dataset, series, values, missing, field)
    elif kind == "text":
        values = pd.Series(
            [None if m else as_text(v) for v, m in zip(values, missing, strict=True)], dtype=object
        )
    try:
        converted = pa.array(values, type=target, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ObsConversionError(dataset, field.name, f"cannot convert to {target}: {exc}") from exc
    if kind == "floating":  # a NaN is missing, as numpy's are (pandas' Float64 keeps 0/0 apart from NA)
        nan = pc.fill_null(pc.is_nan(converted), False)
        converted = pc.if_else(nan, pa.scalar(None, target), converted) if pc.any(nan).as_py() else converted
    return _without_nul(dataset, series, field, converted) if kind == "text" else converted


def refuse_mixed_zones(dataset: str, obs: pd.DataFrame, fields: list[pa.Field]) -> None:
    """Refuse a time field's obs column that holds times with a zone and times without, over the whole
    column (:func:`obs_to_arrow` sees the rows it is given: ingestion converts obs in batches).

    Raises
    ------
    ObsConversionError
        Naming the first of each kind.
    """
    for field in fields:
        if schema_kind(field.type) != "timestamp" or field.name not in obs.columns:
            continue
        series = obs[field.name]
        values = series.astype(object) if isinstance(series.dtype, pd.CategoricalDtype) else series
        if values.dtype.kind == "O":
            _refuse_mixed_zones(dataset, series, values, pd.isna(values).to_numpy(dtype=bool), field)


def _refuse_mixed_zones(
    dataset: str, series: pd.Series, values: pd.Series, missing: np.ndarray, field: pa.Field
) -> None:
    """Raise where an object column holds times with a zone and times without: Arrow stores the zoned ones
    in UTC and the others as they read, so two cells written 12:00 would come back hours apart."""
    zoned = np.fromiter(
        (
            not m and isinstance(v, datetime.datetime) and v.utcoffset() is not None
            for v, m in zip(values, missing, strict=True)
        ),
        dtype=bool,
        count=len(values),
    )
    if zoned.any() and not zoned[~missing].all():
        plain = ~missing & ~zoned
        raise ObsConversionError(
            dataset,
            field.name,
            f"times with a zone (first at {_first_bad(series, zoned)}) and without (first at "
            f"{_first_bad(series, plain)}): give every time its zone, or none",
        )


def _without_nul(dataset: str, series: pd.Series, field: pa.Field, text: pa.Array) -> pa.Array:
    """``text`` (the column's values, row by row), refused if a value holds a NUL character: h5py cannot
    write it to an .h5ad, and labels that differ by a trailing NUL read back as one."""
    flags = nul_flags(text)
    if flags.any():
        raise ObsConversionError(
            dataset, field.name, f"a value holds a NUL character, at {_first_bad(series, flags)}"
        )
    return text


def nul_flags(text: pa.Array) -> np.ndarray:
    """Which values of ``text`` (a string or dictionary-of-strings array) hold a NUL character."""
    plain = text.dictionary_decode() if pa.types.is_dictionary(text.type) else text  # (an old Enum field's)
    return pc.match_substring(plain, "\0").fill_null(False).to_numpy(zero_copy_only=False)


# values of another kind that Arrow would store as something else without a word (True as 1.0, 2 or 0.5 as
# True, 3 as 3 microseconds after 1970, b"ab" as the text "b'ab'", " 4 " as 4): refused per schema type
BOOLS = (bool, np.bool_)
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_NUMBERS = (int, float, np.integer, np.floating)


def _refused_value(kind: str, value: object) -> bool:
    if kind == "floating":
        return isinstance(value, BOOLS)
    if kind == "boolean":
        return not isinstance(value, BOOLS) and not (isinstance(value, int | np.integer) and value in (0, 1))
    if kind in ("timestamp", "date"):
        return isinstance(value, _NUMBERS)
    if kind == "integer":  # digit strings ("1", "2": common categoricals) are; " 4 ", "1e3" not
        return isinstance(value, bytes) or (isinstance(value, str) and not _INTEGER_TEXT.fullmatch(value))
    return isinstance(value, bytes)  # text


def _refused_dtype(kind: str, dtype: np.dtype, values: pd.Series, missing: np.ndarray) -> bool:
    if kind == "floating":
        return dtype.kind == "b"
    if kind == "boolean":
        return dtype.kind in "iuf" and not values[~missing].isin([0, 1]).all()
    if kind in ("timestamp", "date"):
        return dtype.kind in "iufb"
    return kind == "text" and dtype.kind == "S"


def as_text(value: object) -> str:
    """An obs value as text: an ``Enum`` member's value (``str()`` of a ``str`` mixin gives ``Color.red``)."""
    return str(value.value if isinstance(value, enum.Enum) else value)


def schema_kind(target: pa.DataType) -> str | None:
    """The kind of an obs field's Arrow type that conversion checks values against (None: another)."""
    if pa.types.is_dictionary(target):  # (an Enum field of an atlas created before they were refused)
        target = target.value_type
    if pa.types.is_string(target) or pa.types.is_large_string(target):
        return "text"
    return next(
        (
            kind
            for kind in ("floating", "boolean", "timestamp", "date", "integer")
            if getattr(pa.types, f"is_{kind}")(target)
        ),
        None,
    )


def _refuse_other_kinds(
    dataset: str, series: pd.Series, values: pd.Series, missing: np.ndarray, field: pa.Field
) -> None:
    """Raise for values of another kind than ``field``'s type that Arrow would convert without a word."""
    kind = schema_kind(field.type)
    if kind is None:
        return
    dtype = series.cat.categories.dtype if isinstance(series.dtype, pd.CategoricalDtype) else series.dtype
    if dtype.kind != "O":
        if _refused_dtype(kind, dtype, pd.Series(np.asarray(values)), missing):
            raise ObsConversionError(
                dataset,
                field.name,
                f"values of dtype {dtype} cannot be stored as {field.type} without a change",
            )
        return
    flags = np.fromiter(
        (not m and _refused_value(kind, v) for v, m in zip(values, missing, strict=True)),
        dtype=bool,
        count=len(values),
    )
    if flags.any():
        raise ObsConversionError(
            dataset,
            field.name,
            f"{type(values.iloc[int(np.flatnonzero(flags)[0])]).__name__} value for a {field.type} field at "
            f"{_first_bad(series, flags)}; convert the column explicitly",
        )


def _to_dates(
    dataset: str, series: pd.Series, values: pd.Series, missing: np.ndarray, field: pa.Field
) -> pd.Series:
    """The calendar dates of ``values`` (nulls where ``missing``): dates as they are, datetimes at midnight
    as their own wall-clock date (Arrow would take a zoned one's UTC date: the day before, east of UTC).
    Dates outside pandas' nanosecond times (years 1677-2262; 9999-12-31 is a common open end) are kept.

    Raises
    ------
    ObsConversionError
        A datetime with a time of day (the date field would drop it), or a value that is no date.
    """
    if isinstance(values.dtype, pd.ArrowDtype):  # (read_parquet's dtype_backend="pyarrow"): dates as objects
        values = values.astype(object)
    if values.dtype.kind == "M":
        stamps = values.dt.tz_localize(None) if values.dt.tz is not None else values
        timed = ~missing & (stamps != stamps.dt.normalize()).to_numpy(dtype=bool)
        days = stamps.dt.date
    else:
        dated = np.fromiter(
            (m or isinstance(v, datetime.date | np.datetime64) for v, m in zip(values, missing, strict=True)),
            dtype=bool,
            count=len(values),
        )
        if not dated.all():
            raise ObsConversionError(
                dataset,
                field.name,
                f"{type(values.iloc[int(np.flatnonzero(~dated)[0])]).__name__} value for a {field.type} "
                f"field at {_first_bad(series, ~dated)}; convert the column explicitly",
            )
        pairs = [(None, False) if m else _wall_clock_day(v) for v, m in zip(values, missing, strict=True)]
        timed = np.fromiter((t for _, t in pairs), dtype=bool, count=len(pairs))
        days = pd.Series([day for day, _ in pairs], dtype=object)
    if timed.any():
        raise ObsConversionError(
            dataset,
            field.name,
            f"a time of day at {_first_bad(series, timed)}, but the field stores dates ({field.type}): "
            "convert the column explicitly (.dt.normalize() keeps the day)",
        )
    return pd.Series(np.where(missing, None, days.to_numpy(dtype=object)), dtype=object)


def _wall_clock_day(value: datetime.date | np.datetime64) -> tuple[datetime.date, bool]:
    """``value``'s own wall-clock date, and whether it has a time of day."""
    if isinstance(value, np.datetime64):
        day = value.astype("datetime64[D]")
        return day.item(), bool(value != day)
    if isinstance(value, datetime.datetime):  # (pd.Timestamp is one): a zoned one's own wall clock
        return value.date(), value.time() != datetime.time(0)
    return value, False


def _to_integers(
    dataset: str, series: pd.Series, values: pd.Series, missing: np.ndarray, field: pa.Field
) -> pd.api.extensions.ExtensionArray:
    """Integer values of ``values`` (nulls where ``missing``) that fit ``field``'s type, else an error.

    Booleans, datetimes and timedeltas are refused rather than silently stored as 0/1 or nanoseconds.
    """
    dtype = series.cat.categories.dtype if isinstance(series.dtype, pd.CategoricalDtype) else series.dtype
    if dtype.kind in _NOT_INTEGERS:
        raise ObsConversionError(
            dataset,
            field.name,
            f"{_NOT_INTEGERS[dtype.kind]} values (dtype {dtype}) cannot be stored as {field.type}; "
            "convert the column explicitly",
        )
    if dtype.kind == "O":
        flags = np.fromiter((isinstance(v, bool | np.bool_) for v in values), dtype=bool, count=len(values))
        if flags.any():
            raise ObsConversionError(dataset, field.name, f"boolean value at {_first_bad(series, flags)}")
    numeric = pd.to_numeric(values, errors="coerce")
    bad = ~missing & pd.isna(numeric).to_numpy(dtype=bool)
    if bad.any():
        raise ObsConversionError(dataset, field.name, f"non-numeric value at {_first_bad(series, bad)}")
    as_float = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    fractional = ~missing & (np.floor(as_float) != as_float)
    if fractional.any():
        raise ObsConversionError(
            dataset, field.name, f"non-integer value at {_first_bad(series, fractional)}"
        )
    info = np.iinfo(field.type.to_pandas_dtype())
    if numeric.dtype.kind in "iu":  # compared as integers (2**63 + 5 as a float is not above int64's top)
        exact = getattr(numeric.dtype, "numpy_dtype", numeric.dtype)  # (a nullable dtype's numpy one)
        whole = numeric.to_numpy(dtype=exact, na_value=0)
        outside = ~missing & ((whole < info.min) | (whole > info.max))
    elif values.dtype.kind == "O" and (np.abs(as_float[~missing]) >= _FLOAT_INTEGERS).any():
        # beyond float64's whole numbers pd.to_numeric rounded them (it gives floats when one is missing)
        whole = [0 if m else int(v) for v, m in zip(values, missing, strict=True)]
        outside = np.fromiter((not info.min <= v <= info.max for v in whole), dtype=bool, count=len(whole))
        if not outside.any():  # (pd.array of Python ints next to a None goes through float64 too)
            return pd.arrays.IntegerArray(np.array(whole, dtype=info.dtype), missing.copy())
    else:
        outside = ~missing & ((as_float < info.min) | (as_float > info.max))
    if outside.any():
        raise ObsConversionError(
            dataset,
            field.name,
            f"value outside the {field.type} range [{info.min}, {info.max}] at {_first_bad(series, outside)}",
        )
    nullable = f"{'UInt' if pa.types.is_unsigned_integer(field.type) else 'Int'}{field.type.bit_width}"
    try:
        return pd.array(numeric, dtype=nullable)
    except (TypeError, ValueError, OverflowError) as exc:  # at the very edge of the range, beyond float64
        raise ObsConversionError(dataset, field.name, f"cannot convert to {field.type}: {exc}") from exc


def obs_to_arrow(dataset: str, obs: pd.DataFrame, fields: list[pa.Field]) -> dict[str, pa.Array]:
    """Convert the ``obs`` columns named like ``fields`` to Arrow arrays of the declared types.

    Columns the schema declares but ``obs`` lacks become nulls (an error if the field is not nullable);
    obs columns the schema does not declare are left out (:func:`undeclared_obs_columns` names them).

    Raises
    ------
    ObsConversionError
        A value that cannot be stored in its declared type (NaN in a non-nullable column, text in a numeric
        column, a fractional, out-of-range, boolean or datetime value in an integer column), or a declared
        column that appears more than once in ``obs``.
    """
    repeated = obs.columns[obs.columns.duplicated()]
    for field in fields:
        if field.name in repeated:
            raise ObsConversionError(
                dataset, field.name, f"obs has {int((obs.columns == field.name).sum())} columns of this name"
            )
    out: dict[str, pa.Array] = {}
    for field in fields:
        if field.name in obs.columns:
            column = obs[field.name]
            try:
                out[field.name] = _column_to_arrow(dataset, column, field)
            except ObsConversionError:
                raise
            except (TypeError, ValueError) as exc:  # pandas' own, on a dtype it converts badly (Sparse)
                raise ObsConversionError(
                    dataset, field.name, f"values of dtype {column.dtype} cannot be converted: {exc}"
                ) from exc
        elif field.nullable:
            out[field.name] = pa.nulls(len(obs), field.type)
        else:
            raise ObsConversionError(dataset, field.name, "required by the cell schema but absent from obs")
    return out
