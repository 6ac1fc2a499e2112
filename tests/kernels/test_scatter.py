"""The scatter kernels that place a dataset's rows into a query's CSR output, columns sorted per row."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from kernels.scatter import keep_mapped, scatter_rows, scatter_rows_by_column


def _case(seed: int, n_out: int = 300, n_cols: int = 500) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix]:
    """A random output matrix, the rows one dataset fills, and the rows' values in shuffled column order."""
    rng = np.random.default_rng(seed)
    expected = sp.random(n_out, n_cols, density=0.05, format="csr", random_state=rng, dtype=np.float64)
    rows = np.sort(rng.choice(n_out, n_out // 2, replace=False))
    expected = sp.csr_matrix(expected.multiply(np.isin(np.arange(n_out), rows)[:, None]))
    expected.eliminate_zeros()
    expected.sort_indices()
    return expected, rows, expected[rows]


@pytest.mark.parametrize("seed", range(5))
def test_scatter_by_column_sorts_every_row(seed):
    expected, rows, part = _case(seed)
    rng = np.random.default_rng(seed)
    cols, vals = part.indices.astype(np.int64).copy(), part.data.copy()
    for r in range(part.shape[0]):  # shuffle each row's values: the kernel must restore column order
        lo, hi = part.indptr[r], part.indptr[r + 1]
        order = lo + rng.permutation(hi - lo)
        cols[lo:hi], vals[lo:hi] = cols[order], vals[order]
    indptr = expected.indptr.astype(np.int64)
    indices, data = np.full(expected.nnz, -1, np.int64), np.zeros(expected.nnz)
    counts = np.diff(part.indptr).astype(np.int64)
    rows = rows.astype(np.int64)
    scatter_rows_by_column(indptr, rows, counts, cols, vals, expected.shape[1], indices, data)
    np.testing.assert_array_equal(indices, expected.indices)
    np.testing.assert_array_equal(data, expected.data)


def test_scatter_rows_copies_sorted_rows_in_place():
    expected, rows, part = _case(7)
    indptr = expected.indptr.astype(np.int32)
    indices, data = np.full(expected.nnz, -1, np.int32), np.zeros(expected.nnz)
    counts = np.diff(part.indptr).astype(np.int64)
    cols = part.indices.astype(np.int64)
    scatter_rows(indptr, rows.astype(np.int64), counts, cols, part.data, indices, data)
    np.testing.assert_array_equal(indices, expected.indices)
    np.testing.assert_array_equal(data, expected.data)


def test_keep_mapped_keeps_only_mapped_features_per_row():
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 30, size=50)
    local = rng.integers(0, 100, size=int(lengths.sum())).astype(np.uint32)
    vals = rng.integers(1, 9, size=local.size).astype(np.uint32)
    out_col = np.where(rng.random(100) < 0.2, rng.permutation(100), -1).astype(np.int64)
    counts, cols, kept = keep_mapped(lengths.astype(np.int64), local, vals, out_col)
    mapped = out_col[local]
    rows = np.repeat(np.arange(lengths.size), lengths)
    np.testing.assert_array_equal(counts, np.bincount(rows[mapped >= 0], minlength=lengths.size))
    np.testing.assert_array_equal(cols, mapped[mapped >= 0])
    np.testing.assert_array_equal(kept, vals[mapped >= 0])
