"""Matrix sources for ingestion: row blocks of an in-memory or backed AnnData matrix, in bounded memory.

A source knows its shape, its dtype and its total number of stored values before any row is read, so the
zarr arrays can be sized up front; it then yields CSR (or dense) row blocks of roughly ``target_nnz``
values each. Backed CSR ``.h5ad`` matrices are read block by block; nothing holds the whole matrix.
Explicitly stored zeros are kept (they are counted in the sparse ``nnz`` the arrays were sized for);
:meth:`MatrixSource.check_indices` refuses column indices outside the matrix or repeated within a row
(:mod:`lancell.ingest.blocks` checks every block). A read error of a backed file (a corrupted chunk, a
truncated file, a vanished mount) becomes an :class:`~lancell.errors.IngestError` naming the dataset, the
file and the rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import h5py
import numpy as np
import scipy.sparse as sp
from anndata._core.sparse_dataset import BaseCompressedSparseDataset

from lancell.errors import DataValueError, IngestError, LancellError
from lancell.ingest.h5_direct import decompressor_pool, range_reader

__all__ = [
    "TARGET_BLOCK_VALUES",
    "MatrixSource",
    "matrix_location",
    "matrix_source",
    "reading",
    "row_ranges",
    "stored_dtype",
]

TARGET_BLOCK_VALUES = 2_000_000  # stored values per row block an input is read and written in

# what h5py (and anndata's backed readers) raise when stored bytes cannot be read
_READ_ERRORS = (OSError, KeyError, RuntimeError)


def matrix_location(matrix: object) -> str:
    """Where a backed matrix is read from: its file (and object path), else its type."""
    node = matrix.group if isinstance(matrix, BaseCompressedSparseDataset) else matrix
    if isinstance(node, h5py.Group | h5py.Dataset):
        return f"{node.file.filename} ({node.name})"
    return f"a {type(matrix).__name__}"


@contextmanager
def reading(dataset: str, matrix: object, what: str) -> Iterator[None]:
    """Turn a read error of ``matrix`` into an :class:`IngestError` naming ``dataset``, the file and
    ``what`` was being read (lancell's own errors pass through)."""
    try:
        yield
    except _READ_ERRORS as exc:
        if isinstance(exc, LancellError):
            raise
        raise IngestError(
            f"dataset {dataset!r}: cannot read {what} from {matrix_location(matrix)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


@dataclass
class MatrixSource:
    """Row-block access to a matrix. ``indptr`` is known for sparse inputs (None for dense ones)."""

    matrix: object
    shape: tuple[int, int]
    dtype: np.dtype
    sparse: bool
    indptr: np.ndarray | None
    dataset: str

    @property
    def nnz(self) -> int:
        """Stored values if the matrix is sparse, else the number of nonzeros (counted by a pass)."""
        if self.indptr is not None:
            return int(self.indptr[-1])
        return sum(int(np.count_nonzero(block)) for _, block in self.dense_blocks())

    def row_ranges(self, target_values: int = TARGET_BLOCK_VALUES) -> Iterator[tuple[int, int]]:
        """Consecutive ``[start, stop)`` row ranges holding about ``target_values`` stored values each."""
        if self.indptr is not None:
            yield from row_ranges(self.indptr, target_values)
            return
        step = self._dense_rows(target_values)
        for start in range(0, self.shape[0], step):
            yield start, min(start + step, self.shape[0])

    def _dense_rows(self, target_values: int) -> int:
        """Rows of a dense block of about ``target_values`` values (at least one)."""
        return max(1, target_values // max(self.shape[1], 1))

    def csr_blocks(
        self, target_values: int = TARGET_BLOCK_VALUES
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield unchecked ``(row_start, indptr, indices, data)`` row blocks (``indptr`` int64 from 0).

        A backed ``.h5ad`` block is read ahead (by a reader thread) into buffers that three blocks share in
        turn: a block stays valid while the caller works on the next one and is overwritten once the one
        after that is handed out. An in-memory matrix yields views of its own arrays.
        """
        if isinstance(self.matrix, BaseCompressedSparseDataset) and isinstance(self.matrix.group, h5py.Group):
            yield from self._h5_csr_blocks(target_values)
            return
        csr = self.matrix if sp.issparse(self.matrix) else None
        for start, stop in self.row_ranges(target_values):
            if csr is None:  # another backed store: through anndata
                with reading(self.dataset, self.matrix, f"rows {start}-{stop - 1}"):
                    block = self.matrix[start:stop]
                block = (
                    sp.csr_matrix(native_order(np.asarray(block)))
                    if not sp.issparse(block)
                    else block.tocsr()
                )
                yield start, block.indptr.astype(np.int64), block.indices, block.data
                continue
            lo, hi = int(self.indptr[start]), int(self.indptr[stop])
            indptr = np.asarray(self.indptr[start : stop + 1], dtype=np.int64) - lo
            yield start, indptr, csr.indices[lo:hi], csr.data[lo:hi]

    def _h5_csr_blocks(self, target_values: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Read-ahead by one block: a reader thread fills the next block's buffers while the caller works
        on this one (the reads and the caller's nogil kernels overlap). Three buffer pairs turn, so a block
        stays valid while the caller works on the next one (checked blocks are stored from these buffers,
        written while the next is checked); closing the generator waits for the reader."""
        group = self.matrix.group
        data, indices = group["data"], group["indices"]
        with decompressor_pool() as decompressors:
            yield from self._read_ahead(data, indices, decompressors, target_values)

    def _read_ahead(
        self, data: h5py.Dataset, indices: h5py.Dataset, decompressors: Executor, target_values: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """The blocks of :meth:`_h5_csr_blocks`, compressed chunks decompressed on ``decompressors``."""
        with reading(self.dataset, self.matrix, "the layout of data and indices"):
            readers = [range_reader(data, decompressors), range_reader(indices, decompressors)]
        ranges = list(self.row_ranges(target_values))
        size = max([int(self.indptr[stop] - self.indptr[start]) for start, stop in ranges] + [target_values])
        buffers = [(np.empty(size, data.dtype), np.empty(size, indices.dtype)) for _ in range(3)]

        def read(k: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
            start, stop = ranges[k]
            lo, hi = int(self.indptr[start]), int(self.indptr[stop])
            block_data, block_indices = buffers[k % 3][0][: hi - lo], buffers[k % 3][1][: hi - lo]
            if hi > lo:
                with reading(self.dataset, self.matrix, f"rows {start}-{stop - 1}"):
                    readers[0](block_data, lo, hi)
                    readers[1](block_indices, lo, hi)
            indptr = np.asarray(self.indptr[start : stop + 1], dtype=np.int64) - lo
            return start, indptr, block_indices, block_data

        with ThreadPoolExecutor(1, thread_name_prefix="lancell-source") as reader:
            pending = reader.submit(read, 0) if ranges else None
            for k in range(len(ranges)):
                block = pending.result()
                pending = reader.submit(read, k + 1) if k + 1 < len(ranges) else None
                yield block

    def check_indices(self, start: int, indptr: np.ndarray, indices: np.ndarray) -> None:
        """Raise :class:`DataValueError` unless the sorted column indices of a block (rows from ``start``,
        ``indptr`` from 0) lie in ``[0, n_features)`` and no row repeats one (a stored duplicate has no single
        value)."""
        n_features = self.shape[1]
        if indices.size == 0:
            return
        outside = (indices < 0) | (indices >= n_features)
        repeated = np.zeros(indices.size, dtype=bool)
        repeated[1:] = indices[1:] == indices[:-1]
        firsts = indptr[:-1]
        repeated[firsts[firsts < indices.size]] = False  # a row's first value repeats nothing
        problems = (
            (outside, f"outside [0, {n_features}): the matrix and var disagree"),
            (repeated, "repeated within its row: call X.sum_duplicates() first"),
        )
        for mask, what in problems:
            if mask.any():
                position = int(np.flatnonzero(mask)[0])
                row = start + int(np.searchsorted(indptr, position, side="right")) - 1
                raise DataValueError(
                    f"dataset {self.dataset!r}: column index {int(indices[position])} of row {row} is {what}"
                )

    def dense_blocks(self, target_values: int = TARGET_BLOCK_VALUES) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(row_start, dense_block)``."""
        step = self._dense_rows(target_values)
        for start in range(0, self.shape[0], step):
            stop = min(start + step, self.shape[0])  # a 10x row stream has no rows past the end to clip
            with reading(self.dataset, self.matrix, f"rows {start}-{stop - 1}"):
                block = self.matrix[start:stop]
            yield start, native_order(np.asarray(block.toarray() if sp.issparse(block) else block))


def row_ranges(indptr: np.ndarray, target_values: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``[start, stop)`` row ranges of a CSR ``indptr`` holding about ``target_values`` stored
    values each (at least one row each)."""
    n_rows = len(indptr) - 1
    start = 0
    while start < n_rows:
        # a Python int: an int16 indptr plus 2M values overflowed, an int32 one near 2**31 wrapped
        limit = int(indptr[start]) + target_values
        stop = int(np.searchsorted(indptr, limit, side="right")) - 1
        stop = min(max(stop, start + 1), n_rows)
        yield start, stop
        start = stop


def matrix_source(dataset: str, matrix: object) -> MatrixSource:
    """Wrap AnnData's ``X`` or a layer (numpy, scipy sparse, backed CSR/dense) as a :class:`MatrixSource`.

    Raises
    ------
    IngestError
        Backed CSC matrices (they cannot be streamed by cell) and unknown matrix types.
    DataValueError
        Unsupported value dtypes (float16, complex, object, bool, strings); malformed column indices are
        reported later, by the block that holds them.
    """
    if isinstance(matrix, BaseCompressedSparseDataset):
        if matrix.format != "csr":
            raise IngestError(
                f"dataset {dataset!r}: backed {matrix.format.upper()} matrices cannot be streamed by cell; "
                "read the file without backed mode or convert X to CSR"
            )
        with reading(dataset, matrix, "indptr"):
            indptr = matrix.group["indptr"][:]
            members = {name: matrix.group[name] for name in ("indices", "data")}
        for name, member in members.items():
            if not isinstance(member, h5py.Dataset) or member.ndim != 1:
                raise DataValueError(
                    f"dataset {dataset!r}: {name} of {matrix_location(matrix)} is not a 1-D array "
                    f"({type(member).__name__} of shape {getattr(member, 'shape', None)})"
                )
        if members["indices"].dtype.kind not in "iu":
            raise DataValueError(
                f"dataset {dataset!r}: the column indices of {matrix_location(matrix)} are "
                f"{members['indices'].dtype}, not integers"
            )
        check_indptr(dataset, indptr, matrix.shape[0], {name: m.shape[0] for name, m in members.items()})
        source = MatrixSource(matrix, tuple(matrix.shape), np.dtype(matrix.dtype), True, indptr, dataset)
    elif isinstance(matrix, h5py.Dataset):
        source = MatrixSource(matrix, tuple(matrix.shape), np.dtype(matrix.dtype), False, None, dataset)
    elif sp.issparse(matrix):
        csr = matrix.tocsr() if matrix.format != "csr" else matrix
        check_indptr(dataset, csr.indptr, csr.shape[0], {"indices": csr.indices.size, "data": csr.data.size})
        source = MatrixSource(
            csr, tuple(csr.shape), np.dtype(csr.dtype), True, np.asarray(csr.indptr), dataset
        )
    elif isinstance(matrix, np.ndarray):
        if matrix.ndim != 2:
            raise IngestError(f"dataset {dataset!r}: matrix must be 2-D, got shape {matrix.shape}")
        source = MatrixSource(matrix, tuple(matrix.shape), matrix.dtype, False, None, dataset)
    else:
        raise IngestError(f"dataset {dataset!r}: unsupported matrix type {type(matrix).__name__}")
    source.dtype = source.dtype.newbyteorder("=")  # blocks come in this order (native_order)
    check_dtype(dataset, source.dtype)
    return source


def stored_dtype(source: MatrixSource) -> np.dtype:
    """How a source's values are stored: integers as ``uint32``, floats as ``float32``."""
    return np.dtype(np.uint32) if source.dtype.kind in "iu" else np.dtype(np.float32)


def native_order(array: np.ndarray) -> np.ndarray:
    """``array`` in this machine's byte order (a converted copy only when it is stored the other way)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def check_indptr(dataset: str, indptr: np.ndarray, n_rows: int, stored: dict[str, int]) -> None:
    """Raise :class:`DataValueError` unless ``indptr`` is the row offsets of ``n_rows`` rows over exactly the
    ``stored`` values (``{"indices": n, "data": n}``): ``n_rows + 1`` integer offsets from 0, never
    decreasing, ending at each stored array's length (a value no row holds would be silently dropped)."""
    where = f"dataset {dataset!r}: the CSR row offsets (indptr)"
    if indptr.dtype.kind not in "iu":  # float offsets would be truncated: values moved to other cells
        raise DataValueError(
            f"{where} are {indptr.dtype} values, not integers: store them as integers (in memory: "
            "X.indptr = X.indptr.astype(np.int64), after checking they are whole numbers)"
        )
    if indptr.ndim != 1 or indptr.size != n_rows + 1:
        raise DataValueError(f"{where} hold {indptr.size} offsets for {n_rows} rows (expected {n_rows + 1})")
    if indptr[0] != 0:
        raise DataValueError(f"{where} start at {int(indptr[0])}, not 0")
    falls = np.flatnonzero(np.diff(indptr.astype(np.int64, copy=False)) < 0)
    if falls.size:
        row = int(falls[0])
        raise DataValueError(
            f"{where} decrease at row {row} ({int(indptr[row])} -> {int(indptr[row + 1])}): "
            f"{falls.size} row(s) would have a negative number of values"
        )
    for name, size in stored.items():
        if int(indptr[-1]) != size:
            raise DataValueError(f"{where} end at {int(indptr[-1])} but {name} holds {size} values")


def check_dtype(dataset: str, dtype: np.dtype) -> None:
    """Accept integer and float32/float64 values; reject what we cannot store faithfully."""
    if dtype.kind in "iu" or dtype in (np.float32, np.float64):
        return
    raise DataValueError(
        f"dataset {dataset!r}: unsupported matrix dtype {dtype}; use an integer type, float32 or float64"
    )
