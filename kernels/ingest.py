"""One pass per CSR block over what ingestion checks and converts: column indices and values.

Each kernel returns 0 when every element passes (the outputs then hold the converted block) and 1 when one
does not (the outputs are then incomplete): the caller re-checks that block with numpy to name the problem,
so the kernels never build messages. The checks accumulate a flag instead of leaving at the first bad element
(a block, or a row of indices, is judged whole), so that LLVM vectorizes the loops.
"""

import numba
import numpy as np

# the limits the checks hold values to (lancell.ingest.blocks names them in its messages)
UINT32_MAX = 4_294_967_295
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_EXACT = float(2**24)  # float32 holds every whole number up to here, and not all above


@numba.njit(cache=True, nogil=True, inline="always")
def _row_ok(row: np.ndarray, n_features: int) -> bool:
    """Whether a row's column indices strictly increase within ``[0, n_features)`` (judged whole, so the
    loop vectorizes; both ends as int64: a uint64 index from 2**63 on is negative there and refused, where
    it passed as below ``n_features``)."""
    first, last = np.int64(row[0]), np.int64(row[row.size - 1])
    if first < 0 or last < 0 or last >= n_features:
        return False
    unsorted = np.int32(0)
    for k in range(1, row.size):
        unsorted |= np.int32(row[k] <= row[k - 1])
    return unsorted == 0


@numba.njit(cache=True, nogil=True)
def check_indices(indptr: np.ndarray, indices: np.ndarray, n_features: int) -> int:
    """0 if every row's indices strictly increase within ``[0, n_features)``, else 1 (nothing written:
    4-byte indices that pass are stored as they are)."""
    base = indptr[0]
    for r in range(indptr.size - 1):
        lo, hi = indptr[r] - base, indptr[r + 1] - base
        if hi > lo and not _row_ok(indices[lo:hi], n_features):
            return 1
    return 0


@numba.njit(cache=True, nogil=True)
def map_indices(
    indptr: np.ndarray, indices: np.ndarray, n_features: int, column_map: np.ndarray, out: np.ndarray
) -> int:
    """``out[k] = column_map[indices[k]]`` (an empty ``column_map``: ``out[k] = indices[k]``) if every
    row's indices strictly increase within ``[0, n_features)``.

    Each row is checked whole before any of its indices is copied or looked up in ``column_map``, so no
    bad index is ever gathered.
    """
    identity = column_map.size == 0
    base = indptr[0]
    for r in range(indptr.size - 1):
        lo, hi = indptr[r] - base, indptr[r + 1] - base
        if hi <= lo:
            continue
        row, stored = indices[lo:hi], out[lo:hi]
        if not _row_ok(row, n_features):
            return 1
        if identity:
            for k in range(row.size):
                stored[k] = row[k]
        else:
            for k in range(row.size):
                stored[k] = column_map[row[k]]
    return 0


@numba.njit(cache=True, nogil=True, inline="always")
def _outside_uint32(value: int) -> np.int32:
    """1 if an integer value lies outside ``[0, 2**32)``, else 0 (no branch)."""
    return np.int32((value < 0) | (value > UINT32_MAX))


@numba.njit(cache=True, nogil=True)
def check_integer_values(values: np.ndarray) -> int:
    """0 if every value lies in ``[0, 2**32)``, else 1 (one branch-free pass, nothing written)."""
    bad = np.int32(0)
    for k in range(values.size):
        bad |= _outside_uint32(values[k])
    return 1 if bad else 0


@numba.njit(cache=True, nogil=True)
def integer_values(values: np.ndarray, out: np.ndarray) -> int:
    """``out = values`` (uint32) if every value lies in ``[0, 2**32)`` (one branch-free pass)."""
    bad = np.int32(0)
    for k in range(values.size):
        value = values[k]
        bad |= _outside_uint32(value)
        out[k] = value
    return 1 if bad else 0


@numba.njit(cache=True, nogil=True)
def float_values(values: np.ndarray, integral: bool, out: np.ndarray) -> int:
    """``out = values`` (float32) if every value is finite and fits float32, and, when ``integral``, is a
    whole number in ``[0, 2**24]``, which float32 holds exactly (one branch-free pass: ``abs(value) <= max``
    is false for NaN and infinities). Returns 1 if a value does not, else 2 if a nonzero value is below
    what float32 holds (stored as 0), else 0."""
    bad = np.int32(0)
    lost = np.int32(0)
    for k in range(values.size):
        value = values[k]
        fits = abs(value) <= FLOAT32_MAX
        whole = (value >= 0) & (value == np.floor(value)) & (value <= FLOAT32_EXACT)
        bad |= np.int32((not fits) | (integral & (not whole)))
        out[k] = value
        lost |= np.int32((out[k] == 0) & (value != 0))
    return 1 if bad else (2 if lost else 0)


_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
_LOWEST_BIT = np.zeros(64, np.uint8)  # position of a word's lowest set bit, by de Bruijn hash of that bit
for _bit in range(64):
    _LOWEST_BIT[((1 << _bit) * int(_DE_BRUIJN) % 2**64) >> 58] = _bit


@numba.njit(cache=True, nogil=True)
def sort_rows(
    indptr: np.ndarray,
    columns: np.ndarray,
    values: np.ndarray,
    n_columns: int,
    out_columns: np.ndarray,
    out_values: np.ndarray,
) -> None:
    """Every row of ``(columns, values)`` (distinct columns below ``n_columns``) sorted by column into
    ``out_*``: a row marks its columns in a bitmap and reads them back in order, a short row (fewer
    values than a sixteenth of the bitmap's words) is insertion-sorted."""
    bits = np.zeros((n_columns + 63) // 64, np.uint64)
    dense = np.empty(n_columns, values.dtype)
    base = indptr[0]
    for r in range(indptr.size - 1):
        lo, hi = indptr[r] - base, indptr[r + 1] - base
        if 16 * (hi - lo) < bits.size:
            for k in range(lo, hi):
                column, value, j = columns[k], values[k], k
                while j > lo and out_columns[j - 1] > column:
                    out_columns[j], out_values[j] = out_columns[j - 1], out_values[j - 1]
                    j -= 1
                out_columns[j], out_values[j] = column, value
            continue
        first, last = bits.size, 0
        for k in range(lo, hi):
            column = np.int64(columns[k])
            w = column >> 6
            bits[w] |= np.uint64(1) << np.uint64(column & 63)
            dense[column] = values[k]
            first, last = min(first, w), max(last, w)
        k = lo
        for w in range(first, last + 1):
            word = bits[w]
            while word:
                lowest = (word & (~word + np.uint64(1))) * _DE_BRUIJN
                column = 64 * w + np.int64(_LOWEST_BIT[lowest >> np.uint64(58)])
                out_columns[k], out_values[k] = column, dense[column]
                k += 1
                word &= word - np.uint64(1)
            bits[w] = 0
