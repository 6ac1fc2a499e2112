"""Transpose CSR element ranges into the feature-major (CSC) copy of a dataset in two cache-friendly passes.

:func:`partition_by_bucket` sorts a range of CSR elements by feature bucket (a few hundred features each),
stably, recording each element's row and feature; :func:`scatter_features` then places one bucket's
elements at their features' runs. Rows are visited in increasing order and both passes are stable, so the
rows of every feature stay increasing: no sort, and a row's own column order does not matter. The scatter
writes to a few hundred runs at a time (their cache lines and pages stay resident), where one pass over all
features wrote to tens of thousands. Nothing is bounds-checked: the caller sizes the outputs.
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def partition_by_bucket(
    indptr: np.ndarray,
    row0: int,
    start: int,
    indices: np.ndarray,
    values: np.ndarray,
    bucket_of: np.ndarray,
    counts: np.ndarray,
    out_rows: np.ndarray,
    out_features: np.ndarray,
    out_values: np.ndarray,
    order: np.ndarray,
    offsets: np.ndarray,
) -> None:
    """Sort elements ``[start, start + indices.size)`` of a CSR matrix (row offsets ``indptr``; a row may
    begin before or end after the range) by ``bucket_of[feature]``, stably: slot ``j`` gets the element's row
    (plus ``row0``) in ``out_rows``, its feature in ``out_features``, its value in ``out_values`` and, unless
    ``order`` is empty, its position in the range in ``order`` (to sort further layers' values by); bucket
    ``b`` fills slots ``[offsets[b], offsets[b + 1])``. ``counts[f] +=`` the number of elements of feature
    ``f``."""
    with_order = order.size > 0
    n = indices.size
    local = np.zeros(bucket_of.size, np.int64)
    for k in range(n):
        local[indices[k]] += 1
    offsets[:] = 0
    for feature in range(bucket_of.size):
        offsets[bucket_of[feature] + 1] += local[feature]
        counts[feature] += local[feature]
    for b in range(offsets.size - 1):
        offsets[b + 1] += offsets[b]
    fill = offsets[:-1].copy()
    end = start + n
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
        row = row0 + r
        k, last = max(indptr[r], start) - start, min(indptr[r + 1], end) - start
        while k < last:  # a run of one bucket (sorted rows: a bucket's features are consecutive)
            bucket = bucket_of[indices[k]]
            slot = fill[bucket]
            while True:
                out_rows[slot] = row
                out_features[slot] = indices[k]
                out_values[slot] = values[k]
                if with_order:
                    order[slot] = k
                slot += 1
                k += 1
                if k == last or bucket_of[indices[k]] != bucket:
                    break
            fill[bucket] = slot


@numba.njit(cache=True, nogil=True)
def scatter_features(
    rows: np.ndarray,
    features: np.ndarray,
    values: np.ndarray,
    first: int,
    stop: int,
    fill: np.ndarray,
    out_rows: np.ndarray,
    out_values: np.ndarray,
) -> None:
    """Append every element of features ``[first, stop)`` among ``(rows, features, values)`` at
    ``fill[feature - first]`` of ``out_rows`` / ``out_values``, advancing it (``out_rows`` may be empty:
    values only)."""
    with_rows = out_rows.size > 0
    for k in range(rows.size):
        feature = np.int64(features[k])
        if first <= feature < stop:
            slot = fill[feature - first]
            if with_rows:
                out_rows[slot] = rows[k]
            out_values[slot] = values[k]
            fill[feature - first] = slot + 1
