"""Transpose CSR element ranges into the feature-major (CSC) copy of a dataset, one feature range at a time.

Rows are visited in increasing order, so appending each value to its feature's run keeps the rows of every
feature increasing: no sort. Nothing is bounds-checked: the caller guarantees that ``fill`` has one slot per
feature of ``[first, stop)`` and that the runs it points into have room for every value.
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _first_at_least(indices: np.ndarray, lo: int, hi: int, value: int) -> int:
    """The first position in ``[lo, hi)`` of sorted ``indices`` holding ``value`` or more (else ``hi``)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if np.int64(indices[mid]) < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def fill_feature_runs(
    indptr: np.ndarray,
    start: int,
    indices: np.ndarray,
    values: np.ndarray,
    first: int,
    stop: int,
    sorted_rows: bool,
    fill: np.ndarray,
    out_rows: np.ndarray,
    out_values: np.ndarray,
) -> None:
    """Append every value of features ``[first, stop)`` among elements ``[start, start + indices.size)`` of
    a CSR matrix (row offsets ``indptr``; a row may begin before or end after the range) at
    ``fill[feature - first]`` of ``out_rows`` / ``out_values``, advancing it. With ``sorted_rows`` (indices
    increasing within each row) only the range's values are visited, found by binary search per row."""
    end = start + indices.size
    lo, hi = np.int64(0), np.int64(indptr.size - 1)
    while lo < hi:  # the row holding element ``start``: the last one that begins at or before it
        mid = (lo + hi + 1) // 2
        if indptr[mid] <= start:
            lo = mid
        else:
            hi = mid - 1
    for r in range(lo, indptr.size - 1):
        if indptr[r] >= end:
            break
        a, b = max(indptr[r], start) - start, min(indptr[r + 1], end) - start
        if sorted_rows:
            a = _first_at_least(indices, a, b, first)
        for k in range(a, b):
            feature = np.int64(indices[k])
            if feature >= stop and sorted_rows:
                break
            if first <= feature < stop:
                slot = fill[feature - first]
                out_rows[slot] = r
                out_values[slot] = values[k]
                fill[feature - first] = slot + 1


@numba.njit(cache=True, nogil=True)
def count_features(indices: np.ndarray, counts: np.ndarray) -> None:
    """``counts[f] +=`` the number of values of feature ``f`` in ``indices``."""
    for k in range(indices.size):
        counts[indices[k]] += 1
