"""Feature-major (CSC) copies of dataset groups, for reads of a few features over many cells.

``<group>/csc/indptr`` (n_features + 1), ``csc/indices`` (uint32 row numbers within the group, BP-128
delta), both shared by every layer as the CSR ones are, and ``csc/layers/<layer>`` per layer (the CSR
layer's dtype and codec: integers stay integers, floats stay floats).
Built in bounded memory from :class:`~lancell.storage.csc_blocks.CsrBlocks`: ingestion adds each CSR block as
it writes it (else one pass reads the stored arrays back), which sorts the block's elements by feature bucket
as runs of one row (a row number per run, a bucket-local feature and a narrowed value per element: ~2-3 bytes
per count) and counts each feature's values; the sorted blocks are kept in memory for datasets of at most
``budget`` values, else spilled to a temporary file. Each bucket is then filled into its features' runs
(:mod:`kernels.transpose`), in feature ranges holding at most ``budget`` values, from its runs read in parts
of consecutive blocks by a helper thread one part ahead (docs/architecture.md, "A dataset's zarr group").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
import zarr
from tqdm.auto import tqdm

from kernels.transpose import scatter_runs
from lancell.storage.csc_blocks import CsrBlocks, Part, ReadBuffer, Segment
from lancell.storage.groups import create_value_array, current_geometry, value_codecs
from lancell.storage.offsets import read_offsets, write_offsets
from lancell.storage.reader import array_reader, read_element_ranges
from lancell.storage.shard_buffer import ShardBuffer

__all__ = ["CSC_BUDGET", "CSC_MIN_VALUES", "read_csc_features", "write_csc"]

# Ingestion writes the CSC copy of sparse datasets with at least this many stored values by default. Reading
# a dataset's whole rows costs ~2.5 ms per million values (indices and values decoded), so below this a
# feature-major copy saves under a millisecond per query; above it, it is what makes feature queries cheap.
CSC_MIN_VALUES = 250_000
CSC_BUDGET = 16_000_000
_READ_VALUES = 4_000_000  # elements per read of an unsharded (or otherwise laid out) array

# (first element, the column indices and each layer's values of the elements from there)
Block = tuple[int, np.ndarray, Mapping[str, np.ndarray]]


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
    guard: Callable[[], None] | None = None,
    progress: bool = False,
) -> None:
    """Write the CSC copy of ``group``'s CSR ``layers`` (overwriting an earlier one).

    ``indices=False`` writes the layers' values only, on the shared ``csc/indices`` and ``csc/indptr``
    already stored (a layer added to a dataset: :mod:`lancell.ingest.add_layer`; readers of earlier snapshots
    keep reading those arrays while it is written).

    Memory is bounded by ``budget`` values (8 bytes each: row + value; one output set of half of it) plus
    two read buffers, each for the largest part of a bucket (``_PART_VALUES`` values, or one block's bucket),
    and by ``written``'s kept blocks (spilled to a temporary file above ``budget`` values). ``written``: what
    ingestion recorded while writing the CSR arrays (it stays the caller's to close); without it the stored
    arrays are read back once. ``guard`` is called before each shard is stored (a lease's check).
    ``progress`` shows a bar of the values read back (without ``written``), then of the values written.
    """
    csr = group["csr"]
    n_features = int(group.attrs["n_features"])
    values_arrays = {layer: csr[f"layers/{layer}"] for layer in layers}
    label = f"CSC copy {group.attrs.get('dataset_uid', group.path)}"
    blocks = written
    with tqdm(desc=label, bar_format="{desc}", disable=not progress, leave=False) as bar:
        bar.bar_format, bar.unit, bar.unit_scale = None, "value", True  # (drawn once a total is set)
        if blocks is None:
            indptr = read_offsets(csr["indptr"], group.attrs, "csr")
            dtypes = {layer: array.dtype for layer, array in values_arrays.items()}
            blocks = CsrBlocks(
                n_features,
                dtypes,
                spill=int(indptr[-1]) > budget,
                values_per_row=int(indptr[-1]) / max(indptr.size - 1, 1),
            )
            bar.set_description(f"{label}: reading", refresh=False)
            bar.reset(total=int(indptr[-1]))
            for start, stored, values in _stored_blocks(csr["indices"], values_arrays):
                blocks.add(0, indptr, stored, values, start)
                bar.update(stored.size)
        try:
            blocks.done()  # every block sorted and counted
            bar.set_description(label, refresh=False)
            bar.reset(total=blocks.nnz)
            _write_buckets(group.require_group("csc"), blocks, values_arrays, budget, indices, guard, bar)
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
    guard: Callable[[], None] | None,
    bar: tqdm,
) -> None:
    """Fill ``blocks``' buckets into the CSC arrays under ``target``, in feature ranges of at most
    ``budget / 2`` values (at least one feature); ``bar`` advances by each range's values."""
    csc_indptr = np.concatenate(([0], np.cumsum(blocks.counts))).astype(np.int64)
    nnz = int(csc_indptr[-1])
    chunk, shard = current_geometry().sparse_shape(nnz)  # (the CSR arrays' own)
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
                    guard,
                )
            )
        parent = target.require_group("layers")
        vals_out = {
            layer: outputs.enter_context(
                ShardBuffer(
                    create_value_array(parent, layer, (nnz,), array.dtype, (chunk,), (shard,)), shard, guard
                )
            )
            for layer, array in values_arrays.items()
        }
        # one output set for ranges of at most budget / 2 values, scattered, then appended (ShardBuffer
        # encodes it, and stores each full shard while the next is encoded): the rows on a helper thread
        # while this one appends the values (the kernels release the GIL). A second set, filled while the
        # first was appended, ran the scatter 1.7x slower: the two no longer stayed in cache.
        step = max(budget // 2, 1)
        ranges = list(_ranges(blocks, csc_indptr, step))
        largest = max((int(csc_indptr[stop] - csc_indptr[f]) for _, f, stop in ranges), default=0)
        rows = np.empty(largest if rows_out is not None else 0, dtype=np.uint32)
        vals = {layer: np.empty(largest, dtype=array.dtype) for layer, array in values_arrays.items()}
        parts = {bucket: blocks.parts(bucket) for bucket in {bucket for bucket, _, _ in ranges}}
        helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lancell-csc-rows")
        segments = _read_ahead(blocks, [part for bucket, _, _ in ranges for part in parts[bucket]])
        try:
            for bucket, feature, stop in ranges:
                base = csc_indptr[feature]
                fills = {layer: csc_indptr[feature:stop] - base for layer in values_arrays}
                offset = int(blocks.bounds[bucket]) - feature  # a bucket-local feature's place in the range
                for _ in parts[bucket]:
                    run_rows, run_lengths, features, values = next(segments)
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
                size = int(csc_indptr[stop] - base)
                appended = None if rows_out is None else helper.submit(rows_out.append, rows[:size])
                try:
                    for layer, buffer in vals_out.items():
                        buffer.append(vals[layer][:size])
                finally:  # (the rows' append is over before any exit)
                    if appended is not None:
                        appended.result()
                bar.update(size)
        finally:  # (the reader's read in flight is over before any exit, or the spill file's close)
            segments.close()
            helper.shutdown(wait=True)
        if rows_out is not None:
            rows_out.close()
        for buffer in vals_out.values():
            buffer.close()
    if indices:
        write_offsets(target, csc_indptr)


def _read_ahead(blocks: CsrBlocks, parts: list[Part]) -> Iterator[Segment]:
    """``parts`` read in turn, each read on a helper thread while the one before is used (two buffers,
    alternating: a segment is valid until the next one is asked for). The scatter and this read of the spill
    file, one after the other, took 0.17 + 0.10 s of the copy of 100M values."""
    if not parts:
        return
    buffers = (ReadBuffer.for_parts(parts), ReadBuffer.for_parts(parts))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lancell-csc-read") as reader:
        pending = reader.submit(blocks.read, parts[0], buffers[0])
        for i in range(len(parts)):
            segment = pending.result()
            if i + 1 < len(parts):
                pending = reader.submit(blocks.read, parts[i + 1], buffers[(i + 1) % 2])
            yield segment


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
