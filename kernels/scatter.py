"""Scatter the rows one dataset contributes into the output CSR matrix of a query, columns increasing per row.

A dataset's rows arrive as ``(rows, counts, cols, vals)``: output row numbers, the number of kept values of
each, and the values' output columns and values back to back in that order. When the dataset's local feature
order maps to increasing output columns, every row is already sorted and :func:`scatter_rows` copies it to its
place. Otherwise :func:`scatter_rows_by_column` sorts all rows at once in linear time: it buckets the values
by column (keeping row order), then walks the columns in increasing order and appends each value to its row,
so no row is sorted on its own.

Nothing is bounds-checked: the caller guarantees ``indptr[rows[i] + 1] - indptr[rows[i]] == counts[i]``, that
``cols``/``vals`` hold ``counts.sum()`` values, and ``0 <= cols < n_cols``.
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def scatter_rows(
    indptr: np.ndarray,
    rows: np.ndarray,
    counts: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    out_indices: np.ndarray,
    out_data: np.ndarray,
) -> None:
    """Copy row ``rows[i]`` (``counts[i]`` values, already in column order) to ``out_*[indptr[rows[i]]:]``."""
    src = 0
    for i in range(rows.size):
        dst = indptr[rows[i]]
        for k in range(counts[i]):
            out_indices[dst + k] = cols[src + k]
            out_data[dst + k] = vals[src + k]
        src += counts[i]


@numba.njit(cache=True, nogil=True)
def scatter_rows_by_column(
    indptr: np.ndarray,
    rows: np.ndarray,
    counts: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    n_cols: int,
    out_indices: np.ndarray,
    out_data: np.ndarray,
) -> None:
    """Like :func:`scatter_rows` for values in any column order; every output row comes out sorted."""
    n = cols.size
    col_start = np.zeros(n_cols + 1, np.int64)
    for k in range(n):
        col_start[cols[k] + 1] += 1
    for c in range(n_cols):
        col_start[c + 1] += col_start[c]
    bucket_row = np.empty(n, np.int64)  # index into rows, by column then row order
    bucket_at = np.empty(n, np.int64)  # position of the value in cols/vals
    fill = col_start[:-1].copy()
    src = 0
    for i in range(rows.size):
        for k in range(src, src + counts[i]):
            slot = fill[cols[k]]
            bucket_row[slot] = i
            bucket_at[slot] = k
            fill[cols[k]] += 1
        src += counts[i]
    written = np.zeros(rows.size, np.int64)
    for slot in range(n):
        i = bucket_row[slot]
        k = bucket_at[slot]
        dst = indptr[rows[i]] + written[i]
        out_indices[dst] = cols[k]
        out_data[dst] = vals[k]
        written[i] += 1


@numba.njit(cache=True, nogil=True)
def keep_mapped(
    lengths: np.ndarray, local: np.ndarray, vals: np.ndarray, out_col: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the values whose local feature maps to an output column (``out_col >= 0``), in one pass.

    ``lengths`` gives the number of values of each row, back to back in ``local``/``vals``. Returns the
    kept count of each row and the kept values' output columns (int64) and values.
    """
    counts = np.zeros(lengths.size, np.int64)
    cols = np.empty(local.size, np.int64)
    kept = np.empty(local.size, vals.dtype)
    n = 0
    src = 0
    for i in range(lengths.size):
        for k in range(src, src + lengths[i]):
            col = out_col[local[k]]
            if col >= 0:
                cols[n] = col
                kept[n] = vals[k]
                n += 1
                counts[i] += 1
        src += lengths[i]
    return counts, cols[:n], kept[:n]
