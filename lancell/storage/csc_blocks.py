"""A dataset's CSR blocks sorted by feature bucket, kept in memory or spilled to a temporary file: the input
of :func:`lancell.storage.csc.write_csc` (docs/architecture.md, "A dataset's zarr group").

Each block is sorted as it arrives (:func:`kernels.transpose.partition_runs`) on a helper thread, and a
spilled block is written out by another while the next one is sorted.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from kernels.transpose import partition_runs
from lancell.storage.small_pages import pwrite_all

__all__ = ["CsrBlocks", "Part", "ReadBuffer", "Segment", "spill_dtype"]

# features per bucket (the runs one scatter writes to at a time): 256 while a row's run in a bucket still
# averages _RUN_VALUES values (the outputs of half as many features stay in cache: the scatter of 50k cells x
# 2,000 values took 0.7 s instead of 1.3 s), else 512 (fewer, longer runs: at ~500 values per row the sort
# of 256-feature buckets cost more than the scatter saved)
_BUCKET_FEATURES = (256, 512)
_RUN_VALUES = 16
# elements of one read of a bucket (consecutive blocks' runs, concatenated: one scatter call for them)
_PART_VALUES = 1 << 20

# runs of one bucket, of one block or more: (run rows, run lengths, bucket-local features, {layer: values})
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


@dataclass(frozen=True)
class Part:
    """One read of a bucket: its runs in blocks ``blocks`` (in order, each with runs of the bucket, their
    parts of dtypes ``dtypes``: run rows, run lengths, features, then each layer's values), ``runs`` runs of
    ``values`` elements."""

    bucket: int
    blocks: tuple[int, ...]
    runs: int
    values: int
    dtypes: tuple[np.dtype, ...]


class ReadBuffer:
    """Memory that holds any of ``parts`` read (:meth:`CsrBlocks.read`), reused from read to read."""

    def __init__(self, runs: int, values: int, itemsizes: list[int]) -> None:
        self._runs, self._values, self._itemsizes = runs, values, itemsizes
        self._raw = [
            np.empty((runs if i < 2 else values) * size, np.uint8) for i, size in enumerate(itemsizes)
        ]

    @classmethod
    def for_parts(cls, parts: list[Part]) -> ReadBuffer:
        """A buffer for the largest of ``parts`` (not empty)."""
        itemsizes = [max(part.dtypes[i].itemsize for part in parts) for i in range(len(parts[0].dtypes))]
        return cls(max(part.runs for part in parts), max(part.values for part in parts), itemsizes)

    def views(self, part: Part) -> list[np.ndarray]:
        """The arrays ``part`` is read into: run rows and lengths, features, then each layer's values."""
        wider = [dtype.itemsize > size for dtype, size in zip(part.dtypes, self._itemsizes, strict=True)]
        if part.runs > self._runs or part.values > self._values or any(wider):
            raise ValueError(
                f"a part of {part.runs} runs and {part.values} values (dtypes {list(part.dtypes)}) does not "
                f"fit a buffer for {self._runs} runs and {self._values} values of {self._itemsizes} bytes"
            )
        sizes = [part.runs if i < 2 else part.values for i in range(len(part.dtypes))]
        return [
            raw[: size * dtype.itemsize].view(dtype)
            for raw, size, dtype in zip(self._raw, sizes, part.dtypes, strict=True)
        ]


class _Sorted:
    """One block sorted by bucket: bucket ``b``'s runs ``[run_offsets[b], run_offsets[b + 1])`` and elements
    ``[offsets[b], offsets[b + 1])`` of ``parts`` (run rows, run lengths, features, then each layer's
    values), kept in memory, or spilled at file ``position`` (the parts one after another)."""

    def __init__(self, run_offsets: np.ndarray, offsets: np.ndarray, parts: list[np.ndarray]) -> None:
        self.run_offsets, self.offsets = run_offsets, offsets
        self.dtypes = tuple(part.dtype for part in parts)
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
        try:
            for part in block.parts:
                position = pwrite_all(self._file.fileno(), part, position)
        except OSError as exc:  # (a full disk: not the stores' own, which the caller would be told it was)
            raise OSError(
                exc.errno, f"the CSC copy's spill file in {tempfile.gettempdir()} (TMPDIR): {exc.strerror}"
            ) from exc
        block.parts = None

    def parts(self, bucket: int) -> list[Part]:
        """``bucket``'s runs in row order, as reads of consecutive blocks with the same dtypes, each of at
        most ``_PART_VALUES`` values (or one block's)."""
        self.done()
        parts: list[Part] = []
        for k, block in enumerate(self._blocks):
            runs = int(block.run_offsets[bucket + 1] - block.run_offsets[bucket])
            if not runs:
                continue
            values = int(block.offsets[bucket + 1] - block.offsets[bucket])
            last = parts[-1] if parts else None
            if last and last.dtypes == block.dtypes and last.values + values <= _PART_VALUES:
                parts[-1] = Part(
                    bucket, (*last.blocks, k), last.runs + runs, last.values + values, block.dtypes
                )
            else:
                parts.append(Part(bucket, (k,), runs, values, block.dtypes))
        return parts

    def read(self, part: Part, into: ReadBuffer | None = None) -> Segment:
        """``part``'s runs, its blocks' one after another, in ``into`` (sized for it:
        :meth:`ReadBuffer.for_parts`; valid until its next read) or, without it, in new arrays."""
        into = into or ReadBuffer.for_parts([part])
        arrays = into.views(part)
        run_at = element_at = 0
        for k in part.blocks:
            block, b = self._blocks[k], part.bucket
            run_lo, run_hi = int(block.run_offsets[b]), int(block.run_offsets[b + 1])
            lo, hi = int(block.offsets[b]), int(block.offsets[b + 1])
            targets = [a[run_at : run_at + run_hi - run_lo] for a in arrays[:2]]
            targets += [a[element_at : element_at + hi - lo] for a in arrays[2:]]
            if block.parts is not None:
                sources = [part[run_lo:run_hi] for part in block.parts[:2]]
                sources += [part[lo:hi] for part in block.parts[2:]]
                for target, source in zip(targets, sources, strict=True):
                    target[...] = source
            else:
                self._read_spilled(block, b, targets)
            run_at += run_hi - run_lo
            element_at += hi - lo
        rows, lengths, features, *values = arrays
        return rows, lengths, features, dict(zip(self.dtypes, values, strict=True))

    def _read_spilled(self, block: _Sorted, bucket: int, targets: list[np.ndarray]) -> None:
        """Read ``block``'s runs of ``bucket`` from the spill file into ``targets`` (writable: the scatter
        kernel ran 1.5x slower on read-only arrays, np.frombuffer of bytes)."""
        position = block.position
        for i, (target, dtype, size) in enumerate(zip(targets, block.dtypes, block.sizes, strict=True)):
            first = block.run_offsets[bucket] if i < 2 else block.offsets[bucket]
            got = os.preadv(self._file.fileno(), [target], position + int(first) * dtype.itemsize)
            if got != target.nbytes:
                raise OSError(f"the CSC spill file ends {target.nbytes - got} bytes early")
            position += size * dtype.itemsize

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
