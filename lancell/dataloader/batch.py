"""``CellBatch``: one batch read by :meth:`CellDataset.__getitems__`, and the reads that assemble it.

A sparse batch is a CSR triple over the dataset's output columns (``offsets``, ``indices``, ``values``) with
rows in request order and column indices sorted within each row; a dense batch is a 2-D array. Both carry the
requested dataset positions, each cell's group code and the metadata columns, and give the presence mask on
demand (``presence_table[group]``), so a gene a dataset never measured is distinguishable from a zero.

With several requested layers the first fills those fields (``to_anndata()``'s ``X``) and each other is in
:attr:`CellBatch.layers` (``adata.layers``). The layers share the stored indices (one sparsity pattern per
group, :mod:`lancell.ingest.layer_blocks`): each group's indices are read and mapped to output columns once,
then each layer's values; a layer's rows differ from the first's only where it leaves out zeros that pad the
shared pattern, or where a group lacks it (``on_unmeasured("keep")``: empty rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import zarr

from kernels.scatter import scatter_rows
from lancell.dataloader.features import GroupTable
from lancell.storage.nodes import checked_indices
from lancell.storage.reader import read_element_ranges, read_rows

__all__ = ["RESERVED_KEYS", "CellBatch", "SparseRows", "read_dense", "read_sparse"]

RESERVED_KEYS = ("X", "layers", "index", "group", "presence")  # what the collates put beside metadata


class SparseRows(NamedTuple):
    """One layer of a sparse batch: int64 (B + 1,) row offsets, int32 (nnz,) output columns (sorted within a
    row) and the values."""

    offsets: np.ndarray
    indices: np.ndarray
    values: np.ndarray


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
        Sparse batches, first requested layer: int64 (B + 1,) row offsets, int32 (nnz,) output columns (sorted
        within a row), and the values (``CellDataset.dtype``).
    dense
        Dense batches, first requested layer: (B, n_features) values, zeros where a dataset did not measure
        a feature.
    layers
        Every other requested layer, in request order: ``name ->`` :class:`SparseRows` (sparse batches) or a
        (B, n_features) array (dense ones), values in ``CellDataset.dtypes[name]``. Empty with one layer.
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
    layers: dict[str, SparseRows | np.ndarray] = field(default_factory=dict)
    metadata: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.size)

    @property
    def presence(self) -> np.ndarray:
        """bool (B, n_features): True where the cell's dataset measured the output feature (first layer)."""
        return self.presence_table[self.group]


def _row_ids(lengths: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)


def _csr(n: int, row_nnz: np.ndarray, pieces: list[tuple[np.ndarray, ...]], dtype: np.dtype) -> SparseRows:
    """One layer's groups' rows (``(rows, lengths, columns, values)`` each) scattered into request order."""
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=offsets[1:])
    if len(pieces) == 1 and pieces[0][0].size == n:
        _, _, columns, values = pieces[0]
        return SparseRows(offsets, columns.astype(np.int32, copy=False), values.astype(dtype, copy=False))
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
    return SparseRows(offsets, out_columns, out_values)


def read_sparse(
    arrays: dict[int, tuple[zarr.Array, tuple[zarr.Array | None, ...]]],
    table: GroupTable,
    group: np.ndarray,
    start: np.ndarray,
    nnz: np.ndarray,
    dtypes: list[np.dtype],
) -> list[SparseRows]:
    """Read rows ``[start, start + nnz)`` of each cell's group; return one :class:`SparseRows` per layer.

    ``arrays[code]`` is ``(csr/indices, (csr/layers/<layer> or None, ...))`` of each measured group present
    in ``group``, one values array per requested layer (None where the group lacks it: empty rows). Each
    group's indices are read with one batched call and mapped once (unselected features dropped, rows sorted
    when the group's order asks for it), then each layer's values are read with one call and put through the
    same map; a layer's zeros that pad the shared pattern are left out. Rows come back in the order given.
    """
    n = group.size
    pieces: list[list[tuple[np.ndarray, ...]]] = [[] for _ in dtypes]
    row_nnz = np.zeros((len(dtypes), n), dtype=np.int64)
    for code in np.unique(group):
        if code < 0 or not table.measured[code]:
            continue
        code = int(code)
        rows = np.flatnonzero(group == code)
        indices_array, values_arrays = arrays[code]
        ends = start[rows] + nnz[rows]
        local, lengths = read_element_ranges(indices_array, start[rows], ends)
        columns = table.luts[code][checked_indices(local, table.luts[code].size, indices_array.path)]
        keep = None if table.keeps_all[code] else columns >= 0
        row_ids = None
        if keep is not None:
            row_ids = _row_ids(lengths)[keep]
            columns = columns[keep]
            lengths = np.bincount(row_ids, minlength=rows.size)
        order = None
        if not table.monotonic[code]:
            row_ids = _row_ids(lengths) if row_ids is None else row_ids
            order = np.lexsort((columns, row_ids))
            columns, row_ids = columns[order], row_ids[order]
        for k, values_array in enumerate(values_arrays):
            if values_array is None:
                continue
            values, _ = read_element_ranges(values_array, start[rows], ends)
            values = values if keep is None else values[keep]
            values = values if order is None else values[order]
            layer_columns, layer_lengths = columns, lengths
            if table.zero_fill[k, code]:
                stored = values != 0
                row_ids = _row_ids(lengths) if row_ids is None else row_ids
                layer_lengths = np.bincount(row_ids[stored], minlength=rows.size)
                layer_columns, values = columns[stored], values[stored]
            row_nnz[k, rows] = layer_lengths
            pieces[k].append((rows, layer_lengths, layer_columns, values))
    return [_csr(n, row_nnz[k], pieces[k], dtype) for k, dtype in enumerate(dtypes)]


def read_dense(
    arrays: dict[int, tuple[zarr.Array | None, ...]],
    table: GroupTable,
    group: np.ndarray,
    position: np.ndarray,
    n_features: int,
    dtypes: list[np.dtype],
) -> list[np.ndarray]:
    """Rows ``position`` of each cell's group, one (B, n_features) array per layer in output columns.

    ``arrays[code]`` holds one ``layers/<layer>`` array per requested layer (None where the group lacks it:
    rows of zeros) of each measured group present in ``group``.
    """
    out = [np.zeros((group.size, n_features), dtype=dtype) for dtype in dtypes]
    for code in np.unique(group):
        if code < 0 or not table.measured[code]:
            continue
        rows = np.flatnonzero(group == code)
        lut = table.luts[int(code)]
        keep = np.flatnonzero(lut >= 0)
        for layer_out, array in zip(out, arrays[int(code)], strict=True):
            if array is not None:
                layer_out[np.ix_(rows, lut[keep])] = read_rows(array, position[rows])[:, keep]
    return out
