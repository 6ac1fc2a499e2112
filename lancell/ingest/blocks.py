"""The row blocks ingestion stores: checked, converted to the stored dtype and put in stored feature order.

A sparse block takes one numba pass over its column indices (in range and strictly increasing within each
row: :func:`kernels.ingest.check_indices`, or :func:`~kernels.ingest.map_indices` where they are renumbered
to the stored local order or converted) and one over its values (:func:`~kernels.ingest.check_integer_values`,
or :func:`~kernels.ingest.integer_values` / :func:`~kernels.ingest.float_values` where they are converted).
4-byte integers that pass are stored as they are, without a copy. A block the kernels reject is
checked again with numpy (:func:`recheck_csr_block`), which sorts rows given out of order and raises the
error naming the first bad value; so the errors are those of the numpy checks, and only blocks that need it
pay for them. Where the stored order differs from the var order, each renumbered row is sorted again
(:func:`kernels.ingest.sort_rows`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np
import scipy.sparse as sp

from kernels.ingest import (
    FLOAT32_EXACT,
    FLOAT32_MAX,
    UINT32_MAX,
    check_indices,
    check_integer_values,
    float_values,
    integer_values,
    map_indices,
    sort_rows,
)
from lancell.errors import DataValueError, LancellWarning, caller_outside_lancell
from lancell.ingest.sources import MatrixSource, native_order, stored_dtype

__all__ = ["checked_values", "dense_place", "sparse_place", "stored_csr_blocks"]


def checked_values(
    dataset: str, zarr_layer: str, values: np.ndarray, row0: int, place: Callable[[int], str] | None = None
) -> np.ndarray:
    """Check one block of values (rows from ``row0``) and convert it to the stored dtype.

    ``place(i)`` says where value ``i`` of the block is ("row 9000, column 3"): the first bad value is named
    with it (without it, by the block's first row).

    Raises
    ------
    DataValueError
        Integers outside ``[0, 2**32)``; floats that are not finite or do not fit float32; under the
        ``counts`` layer, negative or fractional floats and floats above ``2**24``.
    """

    def refuse(bad: np.ndarray, what: str, why: str = "") -> None:
        position = int(np.argmax(bad))
        at = f"at {place(position)}" if place is not None else f"in the rows from {row0}"
        raise DataValueError(
            f"dataset {dataset!r}, layer {zarr_layer!r}: {what} {values[position]} {at}{why}"
        )

    if values.dtype.kind in "iu":
        if values.size and (values.min() < 0 or values.max() > UINT32_MAX):
            negative = values.min() < 0
            refuse(
                values < 0 if negative else values > UINT32_MAX,
                "negative integer value" if negative else "integer value above 2**32-1",
                "; integers are stored as uint32, in [0, 2**32): store other values as floats (e.g. "
                ".astype('float32'))",
            )
        return values.astype(np.uint32)
    if values.size == 0:
        return values.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        refuse(~finite, "non-finite value")
    if np.abs(values).max() > FLOAT32_MAX:
        refuse(np.abs(values) > FLOAT32_MAX, "value", " does not fit float32 (values are stored as float32)")
    if zarr_layer == "counts":
        if values.min() < 0:
            refuse(values < 0, "negative value")
        fractional = values != np.floor(values)
        if fractional.any():
            refuse(fractional, "non-integer value", "; store normalized values under another layer name")
        if values.max() > FLOAT32_EXACT:
            refuse(
                values > FLOAT32_EXACT,
                "value",
                " is above 2**24, where float32 (how float counts are stored) no longer holds every whole "
                "number; store the counts as integers",
            )
    stored = values.astype(np.float32)
    if values.dtype.itemsize > 4 and ((stored == 0) & (values != 0)).any():
        _warn_zeroed(dataset, zarr_layer)
    return stored


def dense_place(row0: int, n_columns: int) -> Callable[[int], str]:
    """Where value ``i`` of a raveled dense block of rows from ``row0`` is."""
    return lambda i: f"row {row0 + i // max(n_columns, 1)}, column {i % max(n_columns, 1)}"


def sparse_place(row0: int, indptr: np.ndarray, indices: np.ndarray) -> Callable[[int], str]:
    """Where stored value ``i`` of a CSR block of rows from ``row0`` (row offsets ``indptr``) is."""
    return lambda i: (
        f"row {row0 + int(np.searchsorted(indptr, i, side='right')) - 1}, column {int(indices[i])}"
    )


def stored_csr_blocks(
    source: MatrixSource, zarr_layer: str, stored_column: np.ndarray | None
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(row_start, indptr, indices, values)`` of every row block of a sparse ``source`` as stored:
    ``indptr`` int64 from 0, ``indices`` uint32 local feature numbers increasing within each row,
    ``values`` uint32 (integer input) or float32.

    4-byte integer indices (with var in stored order) and 4-byte integer values that pass their checks are
    yielded as they are, viewed as uint32: the source's own block (:meth:`MatrixSource.csr_blocks`).
    Anything converted goes into two sets of buffers that alternate (no fresh, first-touched memory per
    block). Either way a block stays valid while the caller works on the next one, and is overwritten when
    the one after that is asked for. A caller keeping blocks longer copies them.

    ``stored_column`` maps a var column to its stored local index (None: var is in stored order).

    Raises
    ------
    DataValueError
        The first bad column index or value, as :func:`recheck_csr_block` names it.
    """
    n_features = source.shape[1]
    # no map: indices are checked (and copied only if not 4-byte integers), not gathered through an identity
    column_map = np.zeros(0, np.uint32) if stored_column is None else stored_column.astype(np.uint32)
    dtype = stored_dtype(source)
    buffers = {name: _Alternating(kind) for name, kind in (("columns", np.uint32), ("values", dtype))}
    if stored_column is not None:
        buffers.update({"sorted columns": _Alternating(np.uint32), "sorted values": _Alternating(dtype)})
    for row0, indptr, stored_indices, stored_data in source.csr_blocks():
        indices, data = native_order(stored_indices), native_order(stored_data)
        columns = _checked_columns(indptr, indices, n_features, column_map, buffers["columns"])
        values = (
            None if columns is None else _checked_values(data, source.dataset, zarr_layer, buffers["values"])
        )
        if columns is None or values is None:
            columns, values = recheck_csr_block(source, zarr_layer, row0, indptr, indices, data, column_map)
        if stored_column is not None:
            out_columns = buffers["sorted columns"].next(columns.size)
            out_values = buffers["sorted values"].next(values.size)
            sort_rows(indptr, columns, values, n_features, out_columns, out_values)
            columns, values = out_columns, out_values
        yield row0, indptr, columns, values


def _checked_columns(
    indptr: np.ndarray, indices: np.ndarray, n_features: int, column_map: np.ndarray, buffers: _Alternating
) -> np.ndarray | None:
    """A block's stored column indices (renumbered by ``column_map`` unless it is empty), or None if the
    kernel rejects them."""
    if column_map.size == 0 and _as_uint32(indices):
        return None if check_indices(indptr, indices, n_features) else indices.view(np.uint32)
    columns = buffers.next(indices.size)
    return None if map_indices(indptr, indices, n_features, column_map, columns) else columns


def _checked_values(
    data: np.ndarray, dataset: str, zarr_layer: str, buffers: _Alternating
) -> np.ndarray | None:
    """A block's stored values (uint32 for integers, float32), or None if the kernel rejects them."""
    if _as_uint32(data):
        return None if data.dtype.kind == "i" and check_integer_values(data) else data.view(np.uint32)
    values = buffers.next(data.size)
    if data.dtype.kind in "iu":
        return None if integer_values(data, values) else values
    verdict = float_values(data, zarr_layer == "counts", values)
    if verdict == 2:
        _warn_zeroed(dataset, zarr_layer)
    return None if verdict == 1 else values


def _warn_zeroed(dataset: str, zarr_layer: str) -> None:
    """Say that nonzero values below what float32 holds (~1.4e-45) are stored as 0 (once per layer)."""
    warnings.warn(
        f"dataset {dataset!r}, layer {zarr_layer!r}: nonzero values smaller than float32 holds (below "
        "~1.4e-45) are stored as 0 (values are stored as float32)",
        LancellWarning,
        stacklevel=caller_outside_lancell(),
    )


def _as_uint32(array: np.ndarray) -> bool:
    """Whether a block of 4-byte integers can be stored as its own bytes (viewed as uint32) once checked."""
    return array.dtype.kind in "iu" and array.dtype.itemsize == 4 and array.dtype.isnative


class _Alternating:
    """Two buffers of one dtype handed out in turn, each grown when a block needs more."""

    def __init__(self, dtype: np.dtype | type) -> None:
        self._dtype = np.dtype(dtype)
        self._buffers = [np.empty(0, self._dtype), np.empty(0, self._dtype)]
        self._turn = 0

    def next(self, size: int) -> np.ndarray:
        """The next buffer's first ``size`` elements (contents undefined)."""
        self._turn ^= 1
        if self._buffers[self._turn].size < size:
            self._buffers[self._turn] = np.empty(size, self._dtype)
        return self._buffers[self._turn][:size]


def recheck_csr_block(
    source: MatrixSource,
    zarr_layer: str,
    row0: int,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    column_map: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The numpy checks of a block the kernels rejected: sort rows given out of order, then raise
    :class:`DataValueError` for the first bad index (:meth:`MatrixSource.check_indices`) or value
    (:func:`checked_values`); return ``(renumbered indices, converted values)`` of a block that passes
    (``column_map`` empty: var is in stored order)."""
    source.check_indices(row0, indptr, indices)  # (in their own dtype: scipy's wraps uint64 from 2**63 on)
    block = sp.csr_matrix((data, indices, indptr), shape=(indptr.size - 1, source.shape[1]))
    if not block.has_sorted_indices:
        block = block.sorted_indices()
        source.check_indices(row0, indptr, block.indices)  # (a row's repeats, once they are adjacent)
    values = checked_values(
        source.dataset, zarr_layer, block.data, row0, sparse_place(row0, block.indptr, block.indices)
    )
    return (column_map[block.indices] if column_map.size else block.indices.astype(np.uint32)), values
