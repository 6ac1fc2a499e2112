"""Compact per-cell metadata for training: categorical columns as small integer codes, numbers as they are."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import QueryError

__all__ = ["EncodedMetadata", "encode_metadata"]


@dataclass
class EncodedMetadata:
    """Columns of a dataset's metadata, one array per column (length = number of cells).

    Attributes
    ----------
    values
        ``name -> array``: categorical columns hold codes (the smallest signed integer dtype that fits, ``-1``
        for null), numeric and boolean columns hold their values in their own dtype.
    categories
        ``name -> list`` of category labels (sorted) for each categorical column; code ``i`` means
        ``categories[name][i]``.
    """

    values: dict[str, np.ndarray]
    categories: dict[str, list[str]]

    @property
    def bytes_per_cell(self) -> int:
        """Bytes per cell held by all columns together."""
        return int(sum(v.dtype.itemsize for v in self.values.values()))

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Every column at ``rows`` (in that order)."""
        return {name: values[rows] for name, values in self.values.items()}


def _code_dtype(n_categories: int) -> np.dtype:
    for dtype in (np.int8, np.int16, np.int32):
        if n_categories <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _encode_categorical(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    encoded = pc.dictionary_encode(column).combine_chunks()
    labels = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    order = np.argsort(labels.astype(str), kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    raw = encoded.indices.fill_null(-1).to_numpy().astype(np.int64)
    codes = np.where(raw >= 0, rank[np.maximum(raw, 0)], -1)
    return codes.astype(_code_dtype(labels.size)), [str(x) for x in labels[order]]


def encode_metadata(cells: pa.Table, names: tuple[str, ...] | list[str]) -> EncodedMetadata:
    """Encode ``names`` of ``cells`` (string/dictionary columns as codes, numeric/boolean columns as values).

    Raises
    ------
    QueryError
        An unknown column, a column of another type (lists, structs...), or an integer or boolean column with
        nulls (it has no value to stand for a null; use a float column or fill it).
    """
    values: dict[str, np.ndarray] = {}
    categories: dict[str, list[str]] = {}
    for name in names:
        if name not in cells.column_names:
            raise QueryError(f"unknown metadata column {name!r}; the cell table has {cells.column_names}")
        column = cells.column(name)
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
            values[name], categories[name] = _encode_categorical(column)
        elif pa.types.is_floating(kind):
            values[name] = column.to_numpy()
        elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
            if column.null_count:
                raise QueryError(f"metadata column {name!r} ({kind}) has {column.null_count} nulls")
            values[name] = column.to_numpy()
        else:
            raise QueryError(f"metadata column {name!r} has type {kind}; use string, numeric or bool columns")
    return EncodedMetadata(values, categories)
