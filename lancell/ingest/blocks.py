"""The row blocks ingestion stores: checked, converted to the stored dtype and put in stored feature order.

A sparse block takes one numba pass over its column indices (:func:`kernels.ingest.map_indices`: in range,
strictly increasing within each row, renumbered to the stored local order) and one over its values
(:func:`kernels.ingest.integer_values` / :func:`~kernels.ingest.float_values`). A block they reject is
checked again with numpy (:func:`recheck_csr_block`), which sorts rows given out of order and raises the
error naming the first bad value; so the errors are those of the numpy checks, and only blocks that need it
pay for them. Where the stored order differs from the var order, each renumbered row is sorted again
(:func:`kernels.ingest.sort_rows`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from kernels.ingest import float_values, integer_values, map_indices, sort_rows
from lancell.errors import DataValueError
from lancell.ingest.sources import MatrixSource

__all__ = ["checked_values", "stored_csr_blocks"]

_UINT32_MAX = np.iinfo(np.uint32).max
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def checked_values(dataset: str, zarr_layer: str, values: np.ndarray, row0: int) -> np.ndarray:
    """Check one block of values (rows from ``row0``) and convert it to the stored dtype.

    Raises
    ------
    DataValueError
        Integers outside ``[0, 2**32)``; floats that are not finite or do not fit float32; under the
        ``counts`` layer, negative or fractional floats.
    """
    if values.dtype.kind in "iu":
        if values.size == 0:
            return values.astype(np.uint32)
        low, high = values.min(), values.max()
        if low < 0 or high > _UINT32_MAX:
            bad = "negative" if low < 0 else "above 2**32-1"
            raise DataValueError(
                f"dataset {dataset!r}, layer {zarr_layer!r}: {bad} integer value "
                f"{low if low < 0 else high} in the rows from {row0}; counts must be in [0, 2**32)"
            )
        return values.astype(np.uint32)
    if values.size == 0:
        return values.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        raise DataValueError(
            f"dataset {dataset!r}, layer {zarr_layer!r}: non-finite value "
            f"{values[~finite][0]} in the rows from {row0}"
        )
    largest = np.abs(values).max()
    if largest > _FLOAT32_MAX:
        raise DataValueError(
            f"dataset {dataset!r}, layer {zarr_layer!r}: value {largest} in the rows from {row0} "
            "does not fit float32 (values are stored as float32)"
        )
    if zarr_layer == "counts":
        if values.min() < 0:
            raise DataValueError(f"dataset {dataset!r}, layer 'counts': negative value {values.min()}")
        fractional = values != np.floor(values)
        if fractional.any():
            raise DataValueError(
                f"dataset {dataset!r}, layer 'counts': non-integer value {values[fractional][0]} in the "
                f"rows from {row0}; store normalized values under another layer name"
            )
    return values.astype(np.float32)


def stored_csr_blocks(
    source: MatrixSource, zarr_layer: str, stored_column: np.ndarray | None
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(row_start, indptr, indices, values)`` of every row block of a sparse ``source`` as stored:
    ``indptr`` int64 from 0, ``indices`` uint32 local feature numbers increasing within each row,
    ``values`` uint32 (integer input) or float32.

    ``indices`` and ``values`` are never the source's buffers, but two sets of buffers alternate (no fresh,
    first-touched memory per block): a block stays valid while the caller works on the next one, and is
    overwritten when the one after that is asked for. A caller keeping blocks longer copies them.

    ``stored_column`` maps a var column to its stored local index (None: var is in stored order).

    Raises
    ------
    DataValueError
        The first bad column index or value, as :func:`recheck_csr_block` names it.
    """
    n_features = source.shape[1]
    # no map: the kernel copies the indices it checks (no gather through an identity map)
    column_map = np.zeros(0, np.uint32) if stored_column is None else stored_column.astype(np.uint32)
    integer = source.dtype.kind in "iu"
    dtype = np.dtype(np.uint32 if integer else np.float32)
    buffers = {name: _Alternating(kind) for name, kind in (("columns", np.uint32), ("values", dtype))}
    if stored_column is not None:
        buffers.update({"sorted columns": _Alternating(np.uint32), "sorted values": _Alternating(dtype)})
    for row0, indptr, indices, data in source.csr_blocks():
        columns, values = buffers["columns"].next(indices.size), buffers["values"].next(data.size)
        bad = map_indices(indptr, indices, n_features, column_map, columns) or (
            integer_values(data, values) if integer else float_values(data, zarr_layer == "counts", values)
        )
        if bad:
            columns, values = recheck_csr_block(source, zarr_layer, row0, indptr, indices, data, column_map)
        if stored_column is not None:
            out_columns = buffers["sorted columns"].next(columns.size)
            out_values = buffers["sorted values"].next(values.size)
            sort_rows(indptr, columns, values, n_features, out_columns, out_values)
            columns, values = out_columns, out_values
        yield row0, indptr, columns, values


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
    block = sp.csr_matrix((data, indices, indptr), shape=(indptr.size - 1, source.shape[1]))
    if not block.has_sorted_indices:
        block = block.sorted_indices()
    source.check_indices(row0, indptr, block.indices)
    values = checked_values(source.dataset, zarr_layer, block.data, row0)
    return (column_map[block.indices] if column_map.size else block.indices.astype(np.uint32)), values
