"""Transpose CSR element ranges into the feature-major (CSC) copy of a dataset in two cache-friendly passes.

:func:`partition_runs` sorts a range of CSR elements by feature bucket (a few hundred features each),
stably, as *runs*: a run is one row's consecutive elements of one bucket, recorded once as (row, length),
and each element keeps only its feature within its bucket (``uint8`` for buckets of at most 256 features,
else ``uint16``) and its value, so a sorted element costs 1 or 2 bytes plus its value where the row numbers
took 4 more (docs/architecture.md, "A dataset's
zarr group"). :func:`scatter_runs` then places one bucket's elements at their features' runs in the copy.
Rows are visited in increasing order and both passes are stable, so the rows of every feature stay
increasing: no sort, and a row's own column order does not matter. The scatter writes to a few hundred runs
at a time (their cache lines and pages stay resident), where one pass over all features wrote to tens of
thousands. Nothing is bounds-checked: the caller sizes the outputs.
"""

import numba
import numpy as np

RUN_MAX = 65_535  # elements of one run record at most (its length is a uint16)
# The loops index with unsigned integers: numba gives a signed index a negative-index wraparound, which cost
# the sort 1.25x and the scatter 1.9x.
U0, U1 = np.uint64(0), np.uint64(1)


@numba.njit(cache=True, nogil=True)
def partition_runs(
    indptr: np.ndarray,
    row0: int,
    start: int,
    indices: np.ndarray,
    values: np.ndarray,
    bucket_of: np.ndarray,
    first_of: np.ndarray,
    counts: np.ndarray,
    out_features: np.ndarray,
    out_values: np.ndarray,
    order: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort elements ``[start, start + indices.size)`` of a CSR matrix (row offsets ``indptr``; a row may
    begin before or end after the range) by ``bucket_of[feature]``, stably, as runs.

    Returns ``(run_rows, run_lengths, run_offsets, offsets)``: bucket ``b``'s runs are
    ``[run_offsets[b], run_offsets[b + 1])`` of ``run_rows`` (uint32, the row plus ``row0``) and
    ``run_lengths`` (uint16, at most :data:`RUN_MAX`), in row order, and its elements slots
    ``[offsets[b], offsets[b + 1])`` of ``out_features`` (the feature minus ``first_of[b]``, the bucket's
    first feature; its dtype must hold the widest bucket's), ``out_values`` (the value, cast to its dtype)
    and, unless ``order`` is empty, ``order`` (the element's position in the range, to sort further layers'
    values by), run after run.
    ``counts[f] +=`` the number of elements of feature ``f``.
    """
    with_order = order.size > 0
    n = indices.size
    n_buckets = first_of.size
    bucket_end = np.empty(n_buckets, np.int64)
    bucket_end[:-1] = first_of[1:]
    bucket_end[-1] = bucket_of.size
    end = start + n
    lo, hi = np.int64(0), np.int64(indptr.size - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if indptr[mid] <= start:
            lo = mid
        else:
            hi = mid - 1
    local = np.zeros(bucket_of.size, np.int32)  # each feature's elements, counted as pass 1 reads them
    # pass 1: the runs in row order (row, bucket, length) and each bucket's runs and elements
    seen_rows = np.empty(n, np.uint32)
    seen_buckets = np.empty(n, np.uint32)
    seen_lengths = np.empty(n, np.uint16)
    runs_of = np.zeros(n_buckets + 1, np.int64)
    offsets = np.zeros(n_buckets + 1, np.int64)
    n_runs = U0
    for r in range(lo, indptr.size - 1):
        if indptr[r] >= end:
            break
        row = np.uint32(row0 + r)
        k, last = np.uint64(max(indptr[r], start) - start), np.uint64(min(indptr[r + 1], end) - start)
        while k < last:
            bucket = np.uint64(bucket_of[indices[k]])
            low, high = np.uint32(first_of[bucket]), np.uint32(bucket_end[bucket])
            run = k
            limit = min(last, k + np.uint64(RUN_MAX))
            while k < limit:  # compares only: the run ends at the first element outside its bucket
                feature = np.uint32(indices[k])
                if feature < low or feature >= high:
                    break
                local[feature] += 1
                k += U1
            seen_rows[n_runs] = row
            seen_buckets[n_runs] = bucket
            seen_lengths[n_runs] = k - run
            n_runs += U1
            runs_of[bucket + U1] += 1
            offsets[bucket + U1] += np.int64(k - run)
    for feature in range(bucket_of.size):
        counts[feature] += local[feature]
    for b in range(n_buckets):
        runs_of[b + 1] += runs_of[b]
        offsets[b + 1] += offsets[b]
    # pass 2: each run's record and elements at its bucket's next slots
    run_rows = np.empty(n_runs, np.uint32)
    run_lengths = np.empty(n_runs, np.uint16)
    next_run = runs_of[:-1].astype(np.uint64)
    fill = offsets[:-1].astype(np.uint64)
    k = U0
    for p in range(n_runs):
        bucket = np.uint64(seen_buckets[p])
        length = np.uint64(seen_lengths[p])
        q = next_run[bucket]
        run_rows[q] = seen_rows[p]
        run_lengths[q] = seen_lengths[p]
        next_run[bucket] = q + U1
        slot = fill[bucket]
        base = np.uint32(first_of[bucket])
        for j in range(length):
            out_features[slot + j] = np.uint32(indices[k + j]) - base
            out_values[slot + j] = values[k + j]
        if with_order:
            for j in range(length):
                order[slot + j] = k + j
        fill[bucket] = slot + length
        k += length
    return run_rows, run_lengths, runs_of, offsets


@numba.njit(cache=True, nogil=True, inline="always")
def _largest(features: np.ndarray) -> int:
    """The largest of ``features`` (not empty): a loop, because ``ndarray.max`` loads numba's
    ``arraymath`` with the kernel from the cache, which imports SciPy's BLAS (a quarter of a second)."""
    top = features[0]
    for i in range(1, features.size):
        top = max(top, features[i])
    return top


@numba.njit(cache=True, nogil=True, inline="always")
def _place(
    run_rows, run_lengths, features, values, base, width, fill, out_rows, out_values, checked, with_rows
):
    """The loop of :func:`scatter_runs`; ``checked`` and ``with_rows`` are constants where it is inlined, so
    each combination compiles to its own loop."""
    k = U0
    for p in range(run_rows.size):
        row = run_rows[p]
        end = k + np.uint64(run_lengths[p])
        while k < end:
            feature = base + np.int64(features[k])
            if not checked or 0 <= feature < width:
                f = np.uint64(feature)
                slot = np.uint64(fill[f])
                if with_rows:
                    out_rows[slot] = row
                out_values[slot] = values[k]
                fill[f] = slot + U1
            k += U1


@numba.njit(cache=True, nogil=True)
def scatter_runs(
    run_rows: np.ndarray,
    run_lengths: np.ndarray,
    features: np.ndarray,
    values: np.ndarray,
    base: int,
    width: int,
    fill: np.ndarray,
    out_rows: np.ndarray,
    out_values: np.ndarray,
) -> None:
    """Append the elements of one bucket's runs (``features`` within the bucket, ``values``, run after run)
    whose ``base + feature`` is in ``[0, width)`` at ``fill[base + feature]`` of ``out_rows`` (their run's
    row) / ``out_values``, advancing it (``out_rows`` may be empty: values only). Where every element is in
    range (the feature range holds the whole bucket), none is tested."""
    with_rows = out_rows.size > 0
    if features.size and (base < 0 or base + np.int64(_largest(features)) >= width):
        _place(
            run_rows, run_lengths, features, values, base, width, fill, out_rows, out_values, True, with_rows
        )
    elif with_rows:
        _place(run_rows, run_lengths, features, values, base, width, fill, out_rows, out_values, False, True)
    else:
        _place(run_rows, run_lengths, features, values, base, width, fill, out_rows, out_values, False, False)
