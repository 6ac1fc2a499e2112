"""Arrow -> obs: the cell table's columns as an AnnData ``obs`` frame (:mod:`lancell.tables.obs` converts
obs to them): text as categoricals, integers and booleans nullable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import QueryError

__all__ = ["NULLABLE_DTYPES", "arrow_to_obs", "decoded"]


# pandas' nullable dtypes for Arrow's integer and boolean types: an integer keeps its values next to nulls
# (not floats: 2**53 + 1 would round), a boolean stays boolean (not objects, which .h5ad files refuse); the
# same dtype whether or not the cells read hold a null
NULLABLE_DTYPES = {
    **{
        pa.from_numpy_dtype(np.dtype(name.lower())): pd.api.types.pandas_dtype(name)
        for name in ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64")
    },
    pa.bool_(): pd.BooleanDtype(),
}


def arrow_to_obs(
    table: pa.Table, index_column: str = "uid", categories: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """Build an AnnData ``obs`` frame: string columns become categoricals (of their own values, sorted, or
    of ``categories[column]``, which must hold every value), integers keep nullability.

    Raises
    ------
    QueryError
        A value missing from the ``categories`` given for its column.
    """
    names = table.column(index_column)
    values = names.to_numpy(zero_copy_only=False)  # Python objects (strings for a string column)
    if names.type not in (pa.string(), pa.large_string()) or names.null_count:
        values = values.astype(str)  # (as str() gives them)
    # Python strings (object): a fixed-width numpy text array took cells x the longest name x 4 bytes
    index = pd.Index(values, dtype=object, name=None)
    text = (pa.string(), pa.large_string())
    columns = {}
    for name in table.column_names:
        if name == index_column:
            continue
        column = table.column(name)
        column = decoded(column)
        if column.type in text:
            given = None if categories is None else categories.get(name)
            columns[name] = _categorical(column) if given is None else _coded(name, column, given)
        else:  # one column at a time: a whole-table to_pandas costs ~1 ms of fixed overhead
            series = column.to_pandas(types_mapper=NULLABLE_DTYPES.get)
            columns[name] = series.to_numpy() if series.dtype == object else series.array
    return pd.DataFrame(columns, index=index, copy=False)


def decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` with a dictionary of text (an Enum field of an atlas created before they were refused)
    as plain text: compaction leaves its dictionary repeating values, which pandas refuses as categories."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _coded(name: str, column: pa.ChunkedArray, categories: Sequence[str]) -> pd.Categorical:
    """A string column as a categorical of ``categories`` (every value among them)."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    known = pd.Index(categories, dtype=object)
    position = known.get_indexer(np.asarray(encoded.dictionary.to_pylist(), dtype=object))
    if (position < 0).any():
        missing = np.asarray(encoded.dictionary.to_pylist(), dtype=object)[position < 0]
        raise QueryError(
            f"obs column {name!r}: values {sorted(missing)[:5]} are not among the categories read before "
            "(the cells changed while they were read: read a snapshot, RaggedAtlas.checkout)"
        )
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    codes = np.where(codes < 0, -1, position[np.maximum(codes, 0)]) if position.size else codes
    return pd.Categorical.from_codes(codes, categories=known)


def _categorical(column: pa.ChunkedArray) -> pd.Categorical:
    """A string column as a categorical with sorted categories, built from Arrow's dictionary encoding."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    categories = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    order = np.argsort(categories)
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    codes = np.where(codes < 0, -1, rank[np.maximum(codes, 0)]) if rank.size else codes
    return pd.Categorical.from_codes(codes, categories=pd.Index(categories[order], dtype=object))
