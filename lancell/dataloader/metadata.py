"""Compact per-cell metadata for training: categorical columns as small integer codes, numbers as they are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import QueryError
from lancell.query.name_lists import name_list

__all__ = ["EncodedMetadata", "LabelCodes", "MetadataEncoder", "lookup_codes"]


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


class LabelCodes:
    """Codes of string labels assigned in order of first appearance, across the record batches of a stream."""

    def __init__(self) -> None:
        self.labels: dict[str, int] = {}

    def encode(self, array: pa.Array) -> np.ndarray:
        """int32 code of each value of ``array`` (string or dictionary), ``-1`` for null."""
        if pa.types.is_dictionary(array.type):
            array = array.cast(array.type.value_type)
        encoded = pc.dictionary_encode(array)
        codes = [self.labels.setdefault(str(v), len(self.labels)) for v in encoded.dictionary.to_pylist()]
        lookup = np.asarray([*codes, -1], dtype=np.int32)  # a null index reads the trailing -1
        return lookup[encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)]

    def names(self) -> list[str]:
        """The labels in code order."""
        return list(self.labels)


class MetadataEncoder:
    """Encodes metadata columns record batch by record batch into arrays of one value per cell
    (string/dictionary columns as codes, numeric and boolean columns as values).

    ``categories`` fixes the codes of string columns: ``{column: labels}``, code ``i`` meaning ``labels[i]``
    (those of another dataset, e.g. the training set's for its validation set); the other string columns
    are coded by their labels in the rows kept, sorted.

    Raises
    ------
    QueryError
        At construction: an unknown column or a column of another type (lists, structs...), categories of
        a column that is not a string metadata column, or repeated labels; in :meth:`add`: an integer or
        boolean column with nulls (it has no value to stand for a null; use a float column or fill it); in
        :meth:`finish`: a label of a kept row that is not among its column's given categories.
    """

    def __init__(
        self,
        schema: pa.Schema,
        names: tuple[str, ...] | list[str],
        categories: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.names = list(names)
        self._labels: dict[str, LabelCodes] = {}
        self._dtypes: dict[str, np.dtype] = {}
        for name in self.names:
            if name not in schema.names:
                raise QueryError(f"unknown metadata column {name!r}; the cell table has {schema.names}")
            kind = schema.field(name).type
            if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
                self._labels[name] = LabelCodes()
                self._dtypes[name] = np.dtype(np.int32)
            elif pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
                self._dtypes[name] = np.dtype(kind.to_pandas_dtype())
            else:
                raise QueryError(
                    f"metadata column {name!r} has type {kind}; use string, numeric or bool columns"
                )
        self._values: dict[str, np.ndarray] = {}
        self._fixed = _fixed_categories(categories or {}, self._labels)

    def allocate(self, n_cells: int) -> None:
        """Make room for ``n_cells`` rows (before the first :meth:`add`)."""
        self._values = {name: np.empty(n_cells, self._dtypes[name]) for name in self.names}

    def add(self, batch: pa.RecordBatch, at: int) -> None:
        """Encode ``batch`` as rows ``at, at + 1, ...``."""
        for name in self.names:
            column = batch.column(name)
            if name in self._labels:
                values = self._labels[name].encode(column)
            elif column.null_count and not pa.types.is_floating(column.type):
                raise QueryError(f"metadata column {name!r} ({column.type}) has nulls")
            else:
                values = column.to_numpy(zero_copy_only=False)  # a float null reads as NaN
            self._values[name][at : at + batch.num_rows] = values

    def finish(self, keep: np.ndarray | None = None) -> EncodedMetadata:
        """The columns of the rows added (``keep``'s only, when given); categories: kept labels, sorted."""
        values: dict[str, np.ndarray] = {}
        categories: dict[str, list[str]] = {}
        for name in self.names:
            column = self._values.pop(name, np.zeros(0, self._dtypes[name]))
            if keep is not None:
                column = column[keep]
            if name in self._fixed:
                values[name] = _given_codes(name, column, self._labels[name].names(), self._fixed[name])
                categories[name] = list(self._fixed[name])
            elif name in self._labels:
                values[name], categories[name] = _sorted_codes(column, self._labels[name].names())
            else:
                values[name] = column
        return EncodedMetadata(values, categories)


def _fixed_categories(
    categories: Mapping[str, Sequence[str]], labels: Mapping[str, LabelCodes]
) -> dict[str, list[str]]:
    """The given categories per string metadata column, checked."""
    if not isinstance(categories, Mapping):
        raise QueryError(f"categories must map string metadata columns to their labels, got {categories!r}")
    fixed = {}
    for name, given in categories.items():
        if name not in labels:
            raise QueryError(
                f"categories given for {name!r}, which is not a string column among the metadata columns "
                f"{sorted(labels)}"
            )
        fixed[name] = name_list(f"categories[{name!r}]", given)
        if len(set(fixed[name])) != len(fixed[name]):
            raise QueryError(f"categories[{name!r}] repeats labels")
    return fixed


def _given_codes(name: str, codes: np.ndarray, labels: list[str], given: list[str]) -> np.ndarray:
    """``codes`` (into ``labels``, ``-1``: null) as positions in ``given``, in the smallest dtype that fits.

    Raises
    ------
    QueryError
        A label the codes use is not in ``given``.
    """
    position = {label: i for i, label in enumerate(given)}
    used = np.zeros(len(labels) + 1, dtype=bool)
    used[codes] = True  # a null marks the trailing slot
    if missing := [labels[i] for i in np.flatnonzero(used[:-1]) if labels[i] not in position]:
        raise QueryError(
            f"metadata column {name!r}: labels {missing[:5]} of the selected cells are not among the "
            f"{len(given)} categories given"
        )
    dtype = _code_dtype(len(given))
    table = np.asarray([position.get(label, -1) for label in labels] + [-1], dtype=dtype)
    return lookup_codes(codes, table, np.empty(codes.size, dtype))


def lookup_codes(codes: np.ndarray, table: np.ndarray, out: np.ndarray, rows: int = 65_536) -> np.ndarray:
    """``out[i] = table[codes[i]]``, ``rows`` codes at a time (indexing by a whole int32 array would copy
    it as int64 first); ``out`` may be ``codes`` itself."""
    for start in range(0, codes.size, rows):
        out[start : start + rows] = table[codes[start : start + rows]]
    return out


def _sorted_codes(codes: np.ndarray, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """``codes`` (into ``labels``, ``-1``: null) renumbered into the sorted labels they use, as small ints."""
    used = np.zeros(len(labels) + 1, dtype=bool)
    used[codes] = True  # a null marks the trailing slot
    used = np.flatnonzero(used[:-1])
    names = np.asarray(labels, dtype=object)[used].astype(str)
    order = np.argsort(names, kind="stable")
    dtype = _code_dtype(order.size)
    rank = np.full(len(labels) + 1, -1, dtype=dtype)  # code -1 reads the trailing -1
    rank[used[order]] = np.arange(order.size)
    return lookup_codes(codes, rank, np.empty(codes.size, dtype)), [str(x) for x in names[order]]
