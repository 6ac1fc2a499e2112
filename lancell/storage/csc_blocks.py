"""A dataset's CSR blocks sorted by feature bucket, kept in memory or spilled to a temporary file: the input
of :func:`lancell.storage.csc.write_csc` (docs/architecture.md, "A dataset's zarr group").

Each block is sorted as it arrives (:func:`kernels.transpose.partition_runs`) on a helper thread, and a
spilled block is written out by another while the next one is sorted.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from kernels.transpose import partition_runs

__all__ = ["CsrBlocks", "Segment", "spill_dtype"]

_IOV_MAX = 1024  # buffers per pwritev (Linux's IOV_MAX)

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
    """One block sorted by bucket: bucket ``b``'s runs ``[runs[b], runs[b + 1])`` and elements
    ``[elements[b], elements[b + 1])`` of ``parts`` (run rows, run lengths, features, then each layer's
    values), kept in memory, or spilled at file ``position`` bucket after bucket (each bucket's slices of
    the parts one after another, from byte ``starts[b]``: one read gets a bucket's segment, into
    ``buffers``). The offsets are Python lists: each is read once per bucket, a numpy scalar cost more."""

    def __init__(self, run_offsets: np.ndarray, offsets: np.ndarray, parts: list[np.ndarray]) -> None:
        self.runs: list[int] = run_offsets.tolist()
        self.elements: list[int] = offsets.tolist()
        self.dtypes = [part.dtype for part in parts]
        self.parts: list[np.ndarray] | None = parts
        self.buffers: list[np.ndarray] = []
        self.position = -1
        sizes = [part.dtype.itemsize for part in parts]
        per_bucket = np.diff(run_offsets) * sum(sizes[:2]) + np.diff(offsets) * sum(sizes[2:])
        self.starts: list[int] = np.concatenate(([0], np.cumsum(per_bucket))).tolist()

    def slices(self, bucket: int, parts: list[np.ndarray], *, read: bool = False) -> list[np.ndarray]:
        """Bucket ``bucket``'s slices of ``parts`` (laid out as this block's), or with ``read`` their
        sizes' first elements of each of ``parts`` (the buffers read into)."""
        r0, r1, e0, e1 = (
            self.runs[bucket],
            self.runs[bucket + 1],
            self.elements[bucket],
            self.elements[bucket + 1],
        )
        if read:
            r0, r1, e0, e1 = 0, r1 - r0, 0, e1 - e0
        rows, lengths, *per_element = parts
        return [rows[r0:r1], lengths[r0:r1], *(part[e0:e1] for part in per_element)]

    def largest(self, part: int) -> int:
        """The most elements of part ``part`` in one bucket."""
        edges = self.runs if part < 2 else self.elements
        return max(b - a for a, b in itertools.pairwise(edges))


class CsrBlocks:
    """A dataset's CSR blocks sorted by feature bucket, for :func:`lancell.storage.csc.write_csc`.

    Each block is kept as runs (:func:`kernels.transpose.partition_runs`): 6 bytes per run of one row in
    one bucket, and per value 2 bytes (its feature within the bucket) plus the value in the narrowest dtype
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
        if self._file is not None:
            self._share_buffers()

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
        features = np.empty(n, np.uint16)
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
            self._spilled += block.starts[-1]
            self._written()
            self._writing = self._spill.submit(self._write, block)
        self._blocks.append(block)

    def _write(self, block: _Sorted) -> None:
        """Spill ``block`` bucket after bucket (see :class:`_Sorted`)."""
        slices = [
            memoryview(part).cast("B")
            for bucket in range(len(block.starts) - 1)
            for part in block.slices(bucket, block.parts)
            if part.size
        ]
        position = block.position
        while slices:
            written = os.pwritev(self._file.fileno(), slices[:_IOV_MAX], position)
            position += written
            while slices and written >= slices[0].nbytes:  # drop what was written, keep a partial rest
                written -= slices.pop(0).nbytes
            if written:
                slices[0] = slices[0][written:]
        block.parts = None

    def segments(self, bucket: int) -> Iterator[Segment]:
        """Every block's runs of ``bucket``, in row order (one block's in memory at a time: a spilled
        block's segment is read into buffers that the next segment reuses)."""
        self.done()
        for block in self._blocks:
            if block.runs[bucket] == block.runs[bucket + 1]:
                continue
            if block.parts is not None:
                parts = block.slices(bucket, block.parts)
            else:  # one read of the bucket's bytes into the reused buffers
                parts = block.slices(bucket, block.buffers, read=True)
                lo, hi = block.starts[bucket], block.starts[bucket + 1]
                got = os.preadv(self._file.fileno(), parts, block.position + lo)
                if got != hi - lo:
                    raise OSError(f"the CSC spill file ends {hi - lo - got} bytes early (bucket {bucket})")
            yield parts[0], parts[1], parts[2], dict(zip(self.dtypes, parts[3:], strict=True))

    def _share_buffers(self) -> None:
        """Give each spilled block its read buffers: one per part and dtype, for the largest bucket of any
        spilled block (writable: the scatter kernel ran 1.5x slower on read-only arrays, np.frombuffer of
        bytes)."""
        spilled = [block for block in self._blocks if block.parts is None and not block.buffers]
        largest: dict[tuple[int, np.dtype], int] = {}
        for block in spilled:
            for key in enumerate(block.dtypes):
                largest[key] = max(largest.get(key, 0), block.largest(key[0]))
        buffers = {key: np.empty(size, key[1]) for key, size in largest.items()}
        for block in spilled:
            block.buffers = [buffers[key] for key in enumerate(block.dtypes)]

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
