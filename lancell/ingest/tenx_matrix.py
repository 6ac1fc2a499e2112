"""The opened 10x matrix: barcodes and features in memory, values read in row blocks.

Shared by the Matrix Market reader (:mod:`lancell.ingest.tenx_mtx`) and the HDF5 reader
(:mod:`lancell.ingest.tenx_h5`): the :class:`TenxMatrix` they return, the row-block planner and the block
check that every block passes (sorted indices, no explicit zeros, no duplicate entries).
:meth:`TenxMatrix.sources` gives ingestion a :class:`~lancell.ingest.sources.MatrixSource` per column subset
(feature space), streamed from the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.errors import IngestError, TenxFormatError
from lancell.ingest.sources import TARGET_BLOCK_VALUES, MatrixSource

__all__ = ["GENE_EXPRESSION", "TenxMatrix", "check_tenx_layer"]

GENE_EXPRESSION = "Gene Expression"

BlockReader = Callable[[int], Iterator[tuple[int, sp.csr_matrix]]]


@dataclass
class TenxMatrix:
    """A 10x matrix opened for reading: barcodes and features are loaded, values are read in row blocks.

    Attributes
    ----------
    path
        The folder or ``.h5`` file.
    layout
        ``"mtx"`` or ``"h5"``.
    version
        2 or 3 (the Cell Ranger output version the layout belongs to).
    obs
        One row per cell, indexed by barcode (no columns).
    var
        One row per feature, indexed by ``gene_ids``; columns ``gene_ids``, ``gene_symbol``, ``feature_type``
        (and ``genome`` when the file names one).
    dtype
        Value dtype of the blocks (int32 for integer data that fits, else int64; float64 for ``real``).
    read_blocks
        The format reader: ``read_blocks(target_values)`` yields ``(first_row, block)`` over all features.
    columns
        The feature positions kept (a v3 genome filter), or None for all.
    indptr
        The row offsets of the values the blocks hold (explicit zeros left out), when the reader counted
        them (Matrix Market); None when only a pass over the values can tell (HDF5).
    """

    path: Path
    layout: str
    version: int
    obs: pd.DataFrame
    var: pd.DataFrame
    dtype: np.dtype
    read_blocks: BlockReader = field(repr=False)
    columns: np.ndarray | None = field(default=None, repr=False)
    indptr: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_cells, n_features)``."""
        return len(self.obs), len(self.var)

    def csr_blocks(self, target_values: int = TARGET_BLOCK_VALUES) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(first_row, block)``: consecutive cells x features CSR blocks covering every cell.

        Raises
        ------
        TenxFormatError
            Out-of-range indices, duplicate entries, or a file that cannot be read (corrupt gzip...).
        """
        for start, block in self.read_blocks(target_values):
            if self.columns is not None:
                block = block[:, self.columns]
            yield start, block

    def sources(self, subsets: Mapping[str, np.ndarray]) -> dict[str, MatrixSource]:
        """One :class:`MatrixSource` per named subset of feature positions (sorted), read from the file.

        Each source streams its columns of the row blocks; its row offsets come from the reader when it
        counted them and the subset is every feature, else from one counting pass over the blocks (all
        subsets at once). Memory: one block, plus one offset per cell and subset.

        Raises
        ------
        TenxFormatError
            See :meth:`csr_blocks`.
        """
        n_cells, n_features = self.shape
        whole = {name: columns.size == n_features for name, columns in subsets.items()}
        indptrs = {name: self.indptr for name in subsets if whole[name] and self.indptr is not None}
        counted = [name for name in subsets if name not in indptrs]
        counts = np.zeros((len(counted), n_cells), dtype=np.int64)
        if counted:
            # each feature's subset number (disjoint subsets: a feature type each), so that one bincount per
            # block counts every subset's values per row (no column slicing of the block per subset)
            code = np.full(n_features, len(counted), dtype=np.int64)
            for k, name in enumerate(counted):
                code[subsets[name]] = k
            disjoint = sum(subsets[name].size for name in counted) == int((code < len(counted)).sum())
            for start, block in self.csr_blocks():
                rows = slice(start, start + block.shape[0])
                if not disjoint:
                    for k, name in enumerate(counted):
                        counts[k, rows] = np.diff(block[:, subsets[name]].indptr)
                    continue
                row = np.repeat(np.arange(block.shape[0], dtype=np.int64), np.diff(block.indptr))
                tally = np.bincount(
                    code[block.indices] * block.shape[0] + row, minlength=(len(counted) + 1) * block.shape[0]
                )
                counts[:, rows] = tally[: len(counted) * block.shape[0]].reshape(len(counted), block.shape[0])
        indptrs |= {name: np.concatenate(([0], np.cumsum(counts[k]))) for k, name in enumerate(counted)}
        return {
            name: MatrixSource(
                _RowStream(self, None if whole[name] else columns),
                (n_cells, columns.size),
                self.dtype,
                True,
                np.asarray(indptrs[name], dtype=np.int64),
                name,
            )
            for name, columns in subsets.items()
        }

    def to_anndata(self) -> ad.AnnData:
        """The whole matrix in memory (O(nnz)): cells x features CSR, ``obs`` and ``var`` as above."""
        blocks = [block for _, block in self.csr_blocks()]
        x = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix(self.shape, dtype=self.dtype)
        return ad.AnnData(X=x, obs=self.obs.copy(), var=self.var.copy())


class _RowStream:
    """Consecutive row slices ``[start:stop]`` of a 10x matrix's columns ``columns`` (None: all), served
    from one pass over its row blocks (a slice before the last one read starts a new pass)."""

    def __init__(self, matrix: TenxMatrix, columns: np.ndarray | None) -> None:
        self.matrix = matrix
        self.columns = columns
        self._blocks: Iterator[tuple[int, sp.csr_matrix]] | None = None
        self._row = 0  # the first row of the pending block
        self._pending = sp.csr_matrix((0, 0))

    def __getitem__(self, rows: slice) -> sp.csr_matrix:
        start, stop = rows.start, rows.stop
        if self._blocks is None or start < self._row:
            self._blocks, self._row = self.matrix.csr_blocks(), 0
            self._pending = sp.csr_matrix(
                (0, self.matrix.shape[1] if self.columns is None else self.columns.size)
            )
        parts = []
        while True:
            end = self._row + self._pending.shape[0]
            if start < end:
                parts.append(self._pending[max(start - self._row, 0) : min(stop, end) - self._row])
            if stop <= end:
                self._pending, self._row = self._pending[stop - self._row :], stop
                return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")
            first, block = next(self._blocks, (None, None))
            if block is None:
                raise TenxFormatError(f"{self.matrix.path}: the values end before row {stop}")
            self._row, self._pending = first, block if self.columns is None else block[:, self.columns]


def features_frame(ids: np.ndarray, names: np.ndarray, types: np.ndarray) -> pd.DataFrame:
    """The ``var`` frame: ``gene_ids``, ``gene_symbol``, ``feature_type``, indexed by ``gene_ids``."""
    var = pd.DataFrame({"gene_ids": ids, "gene_symbol": names, "feature_type": types})
    var.index = pd.Index(ids, dtype=str)
    return var


def checked_block(block: sp.csr_matrix, expected_nnz: int, path: Path, start: int) -> sp.csr_matrix:
    """Drop explicit zeros and sort; a block with fewer values than counted had duplicate entries."""
    block.eliminate_zeros()
    block.sum_duplicates()
    if block.nnz != expected_nnz:
        raise TenxFormatError(
            f"{path}: duplicate (feature, barcode) entries among the cells from row {start}; "
            f"expected {expected_nnz} values, found {block.nnz} distinct ones"
        )
    return block


# layer names of values computed from counts: a 10x output's counts stored under one would be read as such
_TRANSFORMED_LAYERS = frozenset({"normalized", "log_normalized", "scaled"})


def check_tenx_layer(path: object, zarr_layer: str) -> None:
    """Refuse storing a 10x output (UMI counts, never normalized) under a layer of computed values.

    Raises
    ------
    IngestError
        ``zarr_layer`` is ``normalized``, ``log_normalized`` or ``scaled``.
    """
    if zarr_layer in _TRANSFORMED_LAYERS:
        raise IngestError(
            f"{path}: a 10x output's matrix holds integer UMI counts, not {zarr_layer} values: store it as "
            "'counts' (leave out zarr_layer=, or --layer on the command line)"
        )
