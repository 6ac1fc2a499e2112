"""Feature-major (CSC) copies of dataset groups, for reads of a few features over many cells.

``<group>/csc/indptr`` (n_features + 1), ``csc/indices`` (uint32 row numbers within the group, BP-128
delta), both shared by every layer as the CSR ones are, and ``csc/layers/<layer>`` per layer (the CSR
layer's dtype and codec: integers stay integers, floats stay floats).
Built in bounded memory from :class:`CsrBlocks`: ingestion adds each CSR block as it writes it (else one pass
reads the stored arrays back), which sorts the block's elements by feature bucket as runs of one row (a row
number per run, a bucket-local feature and a narrowed value per element: ~3 bytes per count) and counts each
feature's values; the sorted blocks are kept in memory for datasets of at most ``budget`` values, else
spilled to a temporary file. Each bucket is then filled into its features' runs (:mod:`kernels.transpose`),
in feature ranges holding at most ``budget`` values (docs/architecture.md, "A dataset's zarr group").
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
import zarr
import zarr.codecs

from kernels.transpose import partition_runs, scatter_runs
from lancell.storage.groups import (
    DEFAULT_GEOMETRY,
    INDPTR_CODECS,
    ShardBuffer,
    create_value_array,
    value_codecs,
)
from lancell.storage.reader import array_reader, read_element_ranges

__all__ = ["CSC_MIN_VALUES", "CsrBlocks", "read_csc_features", "spill_dtype", "write_csc"]

log = logging.getLogger(__name__)

# Ingestion writes the CSC copy of sparse datasets with at least this many stored values by default. Reading
# a dataset's whole rows costs ~2.5 ms per million values (indices and values decoded), so below this a
# feature-major copy saves under a millisecond per query; above it, it is what makes feature queries cheap.
CSC_MIN_VALUES = 250_000
CSC_BUDGET = 16_000_000
_READ_VALUES = 4_000_000  # elements per read of an unsharded (or otherwise laid out) array
# features per bucket (the runs one scatter writes to at a time): 256 while a row's run in a bucket still
# averages _RUN_VALUES values (the outputs of half as many features stay in cache: the scatter of 50k cells x
# 2,000 values took 0.7 s instead of 1.3 s), else 512 (fewer, longer runs: at ~500 values per row the sort
# of 256-feature buckets cost more than the scatter saved)
_BUCKET_FEATURES = (256, 512)
_RUN_VALUES = 16

# (first element, the column indices and each layer's values of the elements from there)
Block = tuple[int, np.ndarray, Mapping[str, np.ndarray]]
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
    """A dataset's CSR blocks sorted by feature bucket, for :func:`write_csc`.

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
        self._blocks: list[_Sorted] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lancell-csc")
        self._pending: Future[None] | None = None

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

        The block is sorted (and spilled) by a helper thread while the caller goes on (the kernel releases
        the GIL, as file writes do), one block at a time: its arrays must not change until the next
        ``add`` or :meth:`done` returns (:func:`lancell.ingest.blocks.stored_csr_blocks`' alternating
        buffers keep them so). An error of that sort is raised there.
        """
        self.done()
        self.nnz += indices.size
        self._pending = self._pool.submit(self._add, row0, indptr, indices, dict(values), start)

    def done(self) -> None:
        """Wait for the last :meth:`add`'s sort; raise its error."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

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
        if self._file is not None:
            block.position = self._file.tell()
            for part in block.parts:
                self._file.write(memoryview(part))
            block.parts = None
        self._blocks.append(block)

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
                    raw = os.pread(
                        self._file.fileno(), (b - a) * dtype.itemsize, position + a * dtype.itemsize
                    )
                    parts.append(np.frombuffer(raw, dtype))
                    position += size * dtype.itemsize
            yield parts[0], parts[1], parts[2], dict(zip(self.dtypes, parts[3:], strict=True))

    def close(self) -> None:
        """Drop the kept blocks and the spill file (after the helper thread's last sort, whose error, if
        any, :meth:`done` raises: a close after a failure does not replace the caller's error with it)."""
        self._pool.shutdown(wait=True)
        self._pending = None
        self._blocks.clear()
        if self._file is not None:
            self._file.close()


def _stored_blocks(indices: zarr.Array, values: Mapping[str, zarr.Array]) -> Iterator[Block]:
    """The stored CSR arrays, read back shard by shard
    (:meth:`lancell.storage.shard_reader.ShardedArrayReader.read_shard`) where both have the batched reader's
    layout with the same shards, else in ranges of ``_READ_VALUES`` through :mod:`lancell.storage.reader`."""
    arrays = [indices, *values.values()]
    readers = [array_reader(a) for a in arrays]
    whole_shards = all(r is not None and r.layout.shard_shape == indices.shards for r in readers)
    step = indices.shards[0] if whole_shards else _READ_VALUES
    nnz = indices.shape[0]
    for start in range(0, nnz, step):
        stop = min(start + step, nnz)
        if whole_shards:
            parts = [reader.read_shard(start // step) for reader in readers]
        else:
            bounds = np.array([start], np.int64), np.array([stop], np.int64)
            parts = [read_element_ranges(a, *bounds)[0] for a in arrays]
        yield start, parts[0], dict(zip(values, parts[1:], strict=True))


def write_csc(
    group: zarr.Group,
    layers: Sequence[str],
    *,
    budget: int = CSC_BUDGET,
    written: CsrBlocks | None = None,
    indices: bool = True,
) -> None:
    """Write the CSC copy of ``group``'s CSR ``layers`` (overwriting an earlier one).

    ``indices=False`` writes the layers' values only, on the shared ``csc/indices`` and ``csc/indptr``
    already stored (a layer added to a dataset: :mod:`lancell.ingest.add_layer`; readers of earlier snapshots
    keep reading those arrays while it is written).

    Memory is bounded by ``budget`` values (8 bytes each: row + value; two output sets of half of it, one
    filled while the other is encoded and stored) plus one block's bucket, and by ``written``'s kept blocks
    (spilled to a temporary file above ``budget`` values). ``written``: what ingestion recorded while
    writing the CSR arrays (it stays the caller's to close); without it the stored arrays are read back
    once.
    """
    csr = group["csr"]
    n_features = int(group.attrs["n_features"])
    values_arrays = {layer: csr[f"layers/{layer}"] for layer in layers}
    blocks = written
    if blocks is None:
        indptr = np.asarray(csr["indptr"][:], dtype=np.int64)
        dtypes = {layer: array.dtype for layer, array in values_arrays.items()}
        blocks = CsrBlocks(
            n_features,
            dtypes,
            spill=int(indptr[-1]) > budget,
            values_per_row=int(indptr[-1]) / max(indptr.size - 1, 1),
        )
        for start, stored, values in _stored_blocks(csr["indices"], values_arrays):
            blocks.add(0, indptr, stored, values, start)
    try:
        blocks.done()  # every block sorted and counted
        _write_buckets(group.require_group("csc"), blocks, values_arrays, budget, indices)
    finally:
        if written is None:
            blocks.close()
    group.attrs["csc_layers"] = sorted({*group.attrs.get("csc_layers", []), *layers})


def _write_buckets(
    target: zarr.Group,
    blocks: CsrBlocks,
    values_arrays: Mapping[str, zarr.Array],
    budget: int,
    indices: bool,
) -> None:
    """Fill ``blocks``' buckets into the CSC arrays under ``target``, in feature ranges of at most
    ``budget / 2`` values (at least one feature)."""
    csc_indptr = np.concatenate(([0], np.cumsum(blocks.counts))).astype(np.int64)
    nnz = int(csc_indptr[-1])
    geometry = DEFAULT_GEOMETRY
    chunk = min(geometry.sparse_chunk, max(nnz, 1))
    shard = min(geometry.sparse_shard, -(-max(nnz, 1) // chunk) * chunk)
    # a shard is stored while the next is encoded: every store is waited for on any exit
    with ExitStack() as outputs:
        rows_out = None
        if indices:
            rows_out = outputs.enter_context(
                ShardBuffer(
                    target.create_array(
                        "indices",
                        shape=(nnz,),
                        dtype="uint32",
                        chunks=(chunk,),
                        shards=(shard,),
                        overwrite=True,
                        **value_codecs(np.dtype("uint32"), "indices"),
                    ),
                    shard,
                )
            )
        parent = target.require_group("layers")
        vals_out = {
            layer: outputs.enter_context(
                ShardBuffer(create_value_array(parent, layer, (nnz,), array.dtype, (chunk,), (shard,)), shard)
            )
            for layer, array in values_arrays.items()
        }
        # two output sets for ranges of at most budget / 2 values: this thread scatters into one while a
        # helper appends the other (ShardBuffer encodes it, and stores each full shard; the kernels release
        # the GIL). One range's set is appended before the range after next reuses it.
        step = max(budget // 2, 1)
        largest = max(
            (int(csc_indptr[stop] - csc_indptr[f]) for _, f, stop in _ranges(blocks, csc_indptr, step)),
            default=0,
        )
        sets = [
            (
                np.empty(largest if rows_out is not None else 0, dtype=np.uint32),
                {layer: np.empty(largest, dtype=array.dtype) for layer, array in values_arrays.items()},
            )
            for _ in range(2)
        ]

        def store(rows: np.ndarray, vals: dict[str, np.ndarray], size: int) -> None:
            if rows_out is not None:
                rows_out.append(rows[:size])
            for layer, buffer in vals_out.items():
                buffer.append(vals[layer][:size])

        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lancell-csc-write")
        in_flight: deque[Future[None]] = deque()
        try:
            for i, (bucket, feature, stop) in enumerate(_ranges(blocks, csc_indptr, step)):
                if len(in_flight) == 2:
                    in_flight.popleft().result()
                rows, vals = sets[i % 2]
                base = csc_indptr[feature]
                fills = {layer: csc_indptr[feature:stop] - base for layer in values_arrays}
                offset = int(blocks.bounds[bucket]) - feature  # a bucket-local feature's place in the range
                for run_rows, run_lengths, features, values in blocks.segments(bucket):
                    for j, layer in enumerate(values_arrays):  # the rows once, with the first layer
                        scatter_runs(
                            run_rows,
                            run_lengths,
                            features,
                            values[layer],
                            offset,
                            stop - feature,
                            fills[layer],
                            rows if j == 0 else rows[:0],
                            vals[layer],
                        )
                in_flight.append(writer.submit(store, rows, vals, int(csc_indptr[stop] - base)))
            while in_flight:
                in_flight.popleft().result()
        finally:  # nothing left in flight for a roll-back to race with
            writer.shutdown(wait=True, cancel_futures=True)
        if rows_out is not None:
            rows_out.close()
        for buffer in vals_out.values():
            buffer.close()
    if indices:
        target.create_array(
            "indptr",
            shape=csc_indptr.shape,
            dtype="int64",
            chunks=(min(csc_indptr.size, 65_536),),
            compressors=INDPTR_CODECS,
            overwrite=True,
        )[:] = csc_indptr


def _ranges(blocks: CsrBlocks, csc_indptr: np.ndarray, budget: int) -> Iterator[tuple[int, int, int]]:
    """``(bucket, feature, stop)``: each bucket's features in ranges ``[feature, stop)`` of at most
    ``budget`` values (at least one feature), in feature order."""
    for bucket in range(blocks.bounds.size - 1):
        feature, last = int(blocks.bounds[bucket]), int(blocks.bounds[bucket + 1])
        while feature < last:
            stop = int(np.searchsorted(csc_indptr, csc_indptr[feature] + budget, side="right")) - 1
            stop = min(max(stop, feature + 1), last)
            yield bucket, feature, stop
            feature = stop


def read_csc_features(
    indptr: np.ndarray, indices: zarr.Array, values: zarr.Array, local_features: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, local_feature, values)`` of every stored value of ``local_features`` (group-local rows),
    from a group's CSC ``indptr`` (read whole), ``csc/indices`` and one layer's ``csc/layers/<layer>``."""
    starts, ends = indptr[local_features], indptr[local_features + 1]
    rows, lengths = read_element_ranges(indices, starts, ends)
    stored, _ = read_element_ranges(values, starts, ends)
    return rows.astype(np.int64), np.repeat(local_features, lengths), stored
