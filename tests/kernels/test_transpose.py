"""kernels.transpose: CSR element ranges sorted by bucket as runs, then scattered into the CSC copy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from kernels.transpose import RUN_MAX, partition_runs, scatter_runs

N_COLS, N_BUCKETS = 3_000, 6
BUCKET_OF = (np.arange(N_COLS) * N_BUCKETS // N_COLS).astype(np.int32)
BOUNDS = np.searchsorted(BUCKET_OF, np.arange(N_BUCKETS + 1)).astype(np.int64)


def _matrix() -> sp.csr_matrix:
    block = sp.random(500, N_COLS, density=0.05, format="csr", random_state=4, dtype=np.float64)
    keep = np.ones(500)
    keep[100:110] = 0  # empty rows, one of them where an element range starts
    matrix = sp.csr_matrix(sp.diags(keep) @ block)
    matrix.sort_indices()
    return matrix


def _partition(indptr, row0, lo, indices, data, counts, out_dtype=None, with_order=True):
    n = indices.size
    features = np.empty(n, np.uint16)
    values = np.empty(n, out_dtype or data.dtype)
    order = np.empty(n if with_order else 0, np.int64)
    runs = partition_runs(
        indptr, row0, lo, indices, data, BUCKET_OF, BOUNDS[:-1], counts, features, values, order
    )
    return (*runs, features, values, order)


@pytest.mark.parametrize("sorted_rows", [True, False])
@pytest.mark.parametrize("ranges", [[(0, 3_000)], [(0, 1_000), (1_000, 2_990), (2_990, 3_000)]])
def test_partition_then_scatter_is_the_csc_of_element_ranges(
    ranges: list[tuple[int, int]], sorted_rows: bool
) -> None:
    matrix = _matrix()
    expected = matrix.tocsc()
    if not sorted_rows:  # a row's own column order does not matter
        for r in range(0, 500, 2):
            lo, hi = matrix.indptr[r], matrix.indptr[r + 1]
            matrix.indices[lo:hi], matrix.data[lo:hi] = (
                matrix.indices[lo:hi][::-1].copy(),
                matrix.data[lo:hi][::-1].copy(),
            )
    counts = np.zeros(N_COLS, np.int64)
    indptr = matrix.indptr.astype(np.int64)
    coo = matrix.tocoo()  # row-major in the matrix's own column order, like the blocks
    bounds = sorted({0, 1, int(indptr[100]), 777, 778, 30_000, matrix.nnz})  # ranges that split rows
    segments = []
    for lo, hi in itertools.pairwise(bounds):
        data = matrix.data[lo:hi]
        run_rows, run_lengths, run_offsets, offsets, features, values, order = _partition(
            indptr, 3, lo, matrix.indices[lo:hi], data, counts
        )
        np.testing.assert_array_equal(values, data[order])
        assert offsets[0] == 0 and offsets[-1] == hi - lo and run_offsets[-1] == run_rows.size
        bucket = BUCKET_OF[matrix.indices[lo:hi]]
        np.testing.assert_array_equal(np.diff(offsets), np.bincount(bucket, minlength=N_BUCKETS))
        for b in range(N_BUCKETS):  # each bucket's runs: rows increasing, its elements in row order
            runs, elements = slice(*run_offsets[b : b + 2]), slice(*offsets[b : b + 2])
            mine = np.flatnonzero(bucket == b) + lo
            np.testing.assert_array_equal(np.repeat(run_rows[runs], run_lengths[runs]), coo.row[mine] + 3)
            np.testing.assert_array_equal(features[elements] + BOUNDS[b], coo.col[mine])
            assert np.all(np.diff(run_rows[runs].astype(np.int64)) > 0)  # one run per row and bucket
        segments.append((run_rows, run_lengths, run_offsets, offsets, features, values))
    np.testing.assert_array_equal(counts, np.diff(expected.indptr))
    rows_out = np.empty(matrix.nnz, np.uint32)
    values_out = np.empty(matrix.nnz, np.float64)
    only_values = np.empty(matrix.nnz, np.float64)
    for first, stop in ranges:
        fill = expected.indptr[first:stop].astype(np.int64)
        fill_values = fill.copy()
        for run_rows, run_lengths, run_offsets, offsets, features, values in segments:
            for b in range(N_BUCKETS):
                runs, elements = slice(*run_offsets[b : b + 2]), slice(*offsets[b : b + 2])
                args = run_rows[runs], run_lengths[runs], features[elements], values[elements]
                base, width = BOUNDS[b] - first, stop - first
                scatter_runs(*args, base, width, fill, rows_out, values_out)
                scatter_runs(*args, base, width, fill_values, rows_out[:0], only_values)
    np.testing.assert_array_equal(rows_out, expected.indices + 3)
    np.testing.assert_array_equal(values_out, expected.data)
    np.testing.assert_array_equal(only_values, expected.data)


def test_rows_at_the_uint32_limit_and_narrowed_values() -> None:
    matrix = _matrix()
    counts = np.zeros(N_COLS, np.int64)
    data = np.arange(matrix.nnz, dtype=np.uint32) % 256
    row0 = 2**32 - 500  # the last row is 2**32 - 1
    run_rows, run_lengths, run_offsets, _, _, values, order = _partition(
        matrix.indptr.astype(np.int64), row0, 0, matrix.indices.astype(np.uint32), data, counts, np.uint8
    )
    assert values.dtype == np.uint8
    np.testing.assert_array_equal(values, data[order])
    last = run_offsets[N_BUCKETS] - 1  # the last bucket's last run: the last row's
    assert int(run_rows[last]) == 2**32 - 1 and int(run_rows.min()) == row0
    assert int(run_lengths.sum()) == matrix.nnz


def test_a_run_is_cut_at_run_max() -> None:
    n = RUN_MAX + 10  # one row repeating a feature: a run longer than a uint16 length
    indices = np.full(n, 7, np.uint32)
    counts = np.zeros(N_COLS, np.int64)
    run_rows, run_lengths, run_offsets, offsets, features, values, _ = _partition(
        np.array([0, n], np.int64), 0, 0, indices, np.arange(n, dtype=np.float32), counts, with_order=False
    )
    assert run_lengths.tolist() == [RUN_MAX, 10] and run_rows.tolist() == [0, 0]
    assert run_offsets.tolist() == [0, 2, 2, 2, 2, 2, 2] and offsets[1] == n
    assert counts[7] == n and np.all(features == 7)
    np.testing.assert_array_equal(values, np.arange(n, dtype=np.float32))
