"""A dataset's CSR blocks sorted by feature bucket, kept in memory or spilled to a temporary file: the input
of :func:`lancell.storage.csc.write_csc` (docs/architecture.md, "A dataset's zarr group").

Each block is sorted as it arrives (:func:`kernels.transpose.partition_runs`) on a helper thread, and a
spilled block is written out by another while the next one is sorted.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from kernels.transpose import partition_runs
from lancell.storage.small_pages import pwrite_all

__all__ = ["CsrBlocks", "Segment", "spill_dtype"]

# features per bucket (the runs one scatter writes to at a time): 256 while a row's run in a bucket still
# averages _RUN_VALUES values (the outputs of half as many features stay in cache: the scatter of 50k cells x
# 2,000 values took 0.7 s instead of 1.3 s), else 512 (fewer, longer runs: at ~500 values per row the sort
# of 256-feature buckets cost more than the scatter saved)
_BUCKET_FEATURES = (256, 512)
_RUN_VALUES = 16

# one block's runs of one bucket: (run rows, run lengths, features within the bucket, {layer: values})
Segment = tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]


def spill_dtype(values: np.ndarray) -> np.dtype:
    """The narrowest dtype holding a block's ``values`` exactly: ``uint8`` / ``uint16`` for unsigned
    integers that fit, else their own (a sorted block's values are kept in it and cast back on scatter)."""
    if values.dtype.kind != "u":
        return values.dtype
    top = int(values.max()) if values.size else 0
    if top <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16) if top <= np.iinfo(np.uint16).max else values.dtype


class _Sorted:
    """One block sorted by bucket: bucket ``b``'s runs ``[run_offsets[b], run_offsets[b + 1])`` and elements
    ``[offsets[b], offsets[b + 1])`` of ``parts`` (run rows, run lengths, features, then each layer's
    values), kept in memory, or spilled at file ``position`` (the parts one after another)."""

    def __init__(self, run_offsets: np.ndarray, offsets: np.ndarray, parts: list[np.ndarray]) -> None:
        self.run_offsets, self.offsets = run_offsets, offsets
        self.dtypes = [part.dtype for part in parts]
        self.sizes = [part.size for part in parts]
        self.parts: list[np.ndarray] | None = parts
        self.position = -1


class CsrBlocks:
    """A dataset's CSR blocks sorted by feature bucket, for :func:`lancell.storage.csc.write_csc`.

    Each block is kept as runs (:func:`kernels.transpose.partition_runs`): 6 bytes per run of one row in
    one bucket, and per value its feature within the bucket (1 byte for buckets of at most 256 features: the
    sort ran 3.55 -> 3.25 ns per value and spills a byte less; else 2) plus the value in the narrowest dtype
    that holds the block's values (:func:`spill_dtype`; counts mostly take 1 byte).

    Parameters
    ----------
    n_features
        Features (columns) of the dataset.
    dtypes
        Each stored layer's dtype.
    spill
        Keep the sorted blocks in a temporary file instead of memory; ingestion spills datasets of more
        than ``CSC_BUDGET`` values.
    values_per_row
        The dataset's mean stored values per row: it sets the features per bucket (see
        ``_BUCKET_FEATURES``; None: the wider).
    """

    def __init__(
        self,
        n_features: int,
        dtypes: Mapping[str, np.dtype],
        *,
        spill: bool,
        values_per_row: float | None = None,
    ) -> None:
        self.counts = np.zeros(n_features, dtype=np.int64)
        narrow, wide = _BUCKET_FEATURES
        runs_long = values_per_row is not None and values_per_row * narrow >= _RUN_VALUES * n_features
        n_buckets = max(1, -(-n_features // (narrow if runs_long else wide)))
        self.bucket_of = (np.arange(n_features, dtype=np.int64) * n_buckets // max(n_features, 1)).astype(
            np.int32
        )
        self.bounds = np.searchsorted(self.bucket_of, np.arange(n_buckets + 1)).astype(np.int64)
        # a feature within its bucket: one byte where no bucket is wider than 256 features
        self._feature_dtype = np.dtype(np.uint8 if np.diff(self.bounds).max() <= 256 else np.uint16)
        self.dtypes = {layer: np.dtype(dtype) for layer, dtype in dtypes.items()}
        self.nnz = 0
        self._file = tempfile.TemporaryFile(prefix="lancell-csc-") if spill else None
        self._spilled = 0  # bytes of the spill file given to blocks so far
        self._blocks: list[_Sorted] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lancell-csc")
        self._spill = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lancell-csc-spill")
        self._pending: Future[None] | None = None
        self._writing: Future[None] | None = None

    def add(
        self,
        row0: int,
        indptr: np.ndarray,
        indices: np.ndarray,
        values: Mapping[str, np.ndarray],
        start: int = 0,
    ) -> None:
        """Record elements ``[start, start + indices.size)`` of a CSR block of rows from ``row0`` (row
        offsets ``indptr``; a row's features distinct): their column ``indices`` and each layer's
        ``values``, as stored.

        The block is sorted by a helper thread while the caller goes on (the kernel releases the GIL, as
        file writes do), one block at a time, and a spilled block is written out by another while the next
        is sorted: its arrays must not change until the next ``add`` or :meth:`done` returns
        (:func:`lancell.ingest.blocks.stored_csr_blocks`' alternating buffers keep them so). An error of
        that sort or write is raised there.
        """
        self._sorted()  # (which waited for the write before it: one block's write in flight at most)
        self.nnz += indices.size
        self._pending = self._pool.submit(self._add, row0, indptr, indices, dict(values), start)

    def done(self) -> None:
        """Wait for the last :meth:`add`'s sort and spill; raise their error."""
        self._sorted()
        self._written()

    def _sorted(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _written(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def _add(
        self, row0: int, indptr: np.ndarray, indices: np.ndarray, values: dict[str, np.ndarray], start: int
    ) -> None:
        n = indices.size
        first, *others = self.dtypes
        features = np.empty(n, self._feature_dtype)
        sorted_values = {first: np.empty(n, spill_dtype(values[first]))}
        order = np.empty(n if others else 0, np.int64)
        run_rows, run_lengths, run_offsets, offsets = partition_runs(
            indptr,
            row0,
            start,
            indices,
            values[first],
            self.bucket_of,
            self.bounds[:-1],
            self.counts,
            features,
            sorted_values[first],
            order,
        )
        for layer in others:
            sorted_values[layer] = values[layer][order].astype(spill_dtype(values[layer]), copy=False)
        block = _Sorted(run_offsets, offsets, [run_rows, run_lengths, features, *sorted_values.values()])
        if self._file is not None:  # written out while the next block is sorted, one block at a time
            block.position = self._spilled
            self._spilled += sum(part.nbytes for part in block.parts)
            self._written()
            self._writing = self._spill.submit(self._write, block)
        self._blocks.append(block)

    def _write(self, block: _Sorted) -> None:
        position = block.position
        for part in block.parts:
            position = pwrite_all(self._file.fileno(), part, position)
        block.parts = None

    def segments(self, bucket: int) -> Iterator[Segment]:
        """Every block's runs of ``bucket``, in row order (one block's in memory at a time)."""
        self.done()
        for block in self._blocks:
            run_lo, run_hi = int(block.run_offsets[bucket]), int(block.run_offsets[bucket + 1])
            if run_lo == run_hi:
                continue
            lo, hi = int(block.offsets[bucket]), int(block.offsets[bucket + 1])
            if block.parts is not None:
                parts = [part[run_lo:run_hi] for part in block.parts[:2]]
                parts += [part[lo:hi] for part in block.parts[2:]]
            else:
                parts, position = [], block.position
                for i, (dtype, size) in enumerate(zip(block.dtypes, block.sizes, strict=True)):
                    a, b = (run_lo, run_hi) if i < 2 else (lo, hi)
                    part = np.empty(b - a, dtype)  # writable: the scatter kernel ran 1.5x slower on
                    # read-only arrays (np.frombuffer of bytes)
                    got = os.preadv(self._file.fileno(), [part], position + a * dtype.itemsize)
                    if got != part.nbytes:
                        raise OSError(f"the CSC spill file ends {part.nbytes - got} bytes early")
                    parts.append(part)
                    position += size * dtype.itemsize
            yield parts[0], parts[1], parts[2], dict(zip(self.dtypes, parts[3:], strict=True))

    def close(self) -> None:
        """Drop the kept blocks and the spill file (after the helper threads' last sort and write, whose
        error, if any, :meth:`done` raises: a close after a failure does not replace the caller's error
        with it)."""
        self._pool.shutdown(wait=True)
        self._spill.shutdown(wait=True)
        self._pending = self._writing = None
        self._blocks.clear()
        if self._file is not None:
            self._file.close()
