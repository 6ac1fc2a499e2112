"""``CellBatch``: one batch read by :meth:`CellDataset.__getitems__`, and the reads that assemble it.

A sparse batch is a CSR triple over the dataset's output columns (``offsets``, ``indices``, ``values``) with
rows in request order and column indices sorted within each row; a dense batch is a 2-D array. Both carry the
requested dataset positions, each cell's group code and the metadata columns, and give the presence mask on
demand (``presence_table[group]``), so a gene a dataset never measured is distinguishable from a zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import zarr

from kernels.scatter import scatter_rows
from lancell.dataloader.features import GroupTable
from lancell.reader import read_element_ranges, read_rows

__all__ = ["CellBatch", "read_dense", "read_sparse"]


@dataclass
class CellBatch:
    """One batch of cells in request order.

    Attributes
    ----------
    kind
        ``"sparse"`` or ``"dense"``.
    index
        int64 (B,): the dataset positions requested, in order.
    group
        int32 (B,): group code of each cell (``-1``: no data in this feature space).
    n_features
        Width of the output (number of output columns).
    offsets, indices, values
        Sparse batches: int64 (B + 1,) row offsets, int32 (nnz,) output columns (sorted within a row), and the
        values (``CellDataset.dtype``).
    dense
        Dense batches: (B, n_features) values, zeros where a dataset did not measure a feature.
    metadata
        ``name -> (B,) array``: codes for categorical columns (see ``CellDataset.categories``), values for the
        others.
    presence_table
        bool (n_groups + 1, n_features), shared with the dataset; see :attr:`presence`.
    """

    kind: Literal["sparse", "dense"]
    index: np.ndarray
    group: np.ndarray
    n_features: int
    presence_table: np.ndarray
    offsets: np.ndarray | None = None
    indices: np.ndarray | None = None
    values: np.ndarray | None = None
    dense: np.ndarray | None = None
    metadata: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.size)

    @property
    def presence(self) -> np.ndarray:
        """bool (B, n_features): True where the cell's dataset measured the output feature."""
        return self.presence_table[self.group]


def _row_ids(lengths: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)


def _map_group(
    table: GroupTable, code: int, local: np.ndarray, values: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local indices of one group's rows -> output columns; drop unselected features and zero-fill padding,
    keep rows sorted."""
    columns = table.luts[code][local]
    if not table.keeps_all[code] or table.zero_fill[code]:
        keep = (columns >= 0) & ((values != 0) | ~table.zero_fill[code])
        lengths = np.bincount(_row_ids(lengths)[keep], minlength=lengths.size)
        columns, values = columns[keep], values[keep]
    if not table.monotonic[code]:
        order = np.lexsort((columns, _row_ids(lengths)))
        columns, values = columns[order], values[order]
    return columns, values, lengths


def read_sparse(
    arrays: dict[int, tuple[zarr.Array, zarr.Array]],
    table: GroupTable,
    group: np.ndarray,
    start: np.ndarray,
    nnz: np.ndarray,
    dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read rows ``[start, start + nnz)`` of each cell's group; return ``(offsets, indices, values)``.

    ``arrays[code]`` is the ``(csr/indices, csr/layers/<layer>)`` pair of each measured group present in
    ``group``. Each group is read with one batched call per array; rows come back in the order given.
    """
    n = group.size
    pieces = []
    row_nnz = np.zeros(n, dtype=np.int64)
    for code in np.unique(group):
        if code < 0 or not table.measured[code]:
            continue
        rows = np.flatnonzero(group == code)
        indices_array, values_array = arrays[int(code)]
        ends = start[rows] + nnz[rows]
        local, lengths = read_element_ranges(indices_array, start[rows], ends)
        values, _ = read_element_ranges(values_array, start[rows], ends)
        columns, values, lengths = _map_group(table, int(code), local, values, lengths)
        row_nnz[rows] = lengths
        pieces.append((rows, lengths, columns, values))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=offsets[1:])
    if len(pieces) == 1 and pieces[0][0].size == n:
        _, _, columns, values = pieces[0]
        return offsets, columns.astype(np.int32, copy=False), values.astype(dtype, copy=False)
    out_columns = np.empty(int(offsets[-1]), dtype=np.int32)
    out_values = np.empty(int(offsets[-1]), dtype=dtype)
    for rows, lengths, columns, values in pieces:
        scatter_rows(
            offsets,
            rows,
            lengths.astype(np.int64, copy=False),
            columns.astype(np.int32, copy=False),
            values.astype(dtype, copy=False),
            out_columns,
            out_values,
        )
    return offsets, out_columns, out_values


def read_dense(
    arrays: dict[int, zarr.Array],
    table: GroupTable,
    group: np.ndarray,
    position: np.ndarray,
    n_features: int,
    dtype: np.dtype,
) -> np.ndarray:
    """Rows ``position`` of each cell's group layer, scattered into (B, n_features) output columns."""
    out = np.zeros((group.size, n_features), dtype=dtype)
    for code in np.unique(group):
        if code < 0 or not table.measured[code]:
            continue
        rows = np.flatnonzero(group == code)
        block = read_rows(arrays[int(code)], position[rows])
        lut = table.luts[int(code)]
        keep = np.flatnonzero(lut >= 0)
        out[np.ix_(rows, lut[keep])] = block[:, keep]
    return out
