"""Transpose CSR row blocks into the feature-major (CSC) copy of a dataset, one feature range at a time.

A block's rows arrive in increasing row order, so appending each value to its feature's run keeps the rows of
every feature increasing: no sort. Nothing is bounds-checked: the caller guarantees that ``fill`` has one
slot per feature of ``[first, stop)`` and that the runs it points into have room for every value.
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def fill_feature_runs(
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    row0: int,
    first: int,
    stop: int,
    fill: np.ndarray,
    out_rows: np.ndarray,
    out_values: np.ndarray,
) -> None:
    """Append every value of features ``[first, stop)`` of a CSR block (rows numbered from ``row0``, any
    column order within a row) at ``fill[feature - first]`` of ``out_rows`` / ``out_values``, advancing it."""
    base = indptr[0]
    for r in range(indptr.size - 1):
        for k in range(indptr[r] - base, indptr[r + 1] - base):
            feature = np.int64(indices[k])
            if first <= feature < stop:
                slot = fill[feature - first]
                out_rows[slot] = row0 + r
                out_values[slot] = values[k]
                fill[feature - first] = slot + 1


@numba.njit(cache=True, nogil=True)
def count_features(indices: np.ndarray, counts: np.ndarray) -> None:
    """``counts[f] +=`` the number of values of feature ``f`` in ``indices``."""
    for k in range(indices.size):
        counts[indices[k]] += 1
