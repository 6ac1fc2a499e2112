"""Feature-major (CSC) copies of dataset groups, for reads of a few features over many cells.

``<group>/csc/indptr`` (n_features + 1), ``csc/indices`` (uint32 row numbers within the group, BP-128
delta), both shared by every layer as the CSR ones are, and ``csc/layers/<layer>`` per layer (the CSR
layer's dtype and codec: integers stay integers, floats stay floats).
Built in bounded memory: each feature's nonzeros are counted (by ingestion as it writes the CSR
arrays, else by one pass over the stored indices), then feature ranges holding at most ``budget`` values are
filled from the CSR row blocks (kept in memory by ingestion for datasets of at most ``budget`` values, else
read back from the store), each block in one linear pass (:mod:`kernels.transpose`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import zarr
import zarr.codecs

from kernels.transpose import count_features, fill_feature_runs
from lancell.storage.groups import (
    DEFAULT_GEOMETRY,
    INDPTR_CODECS,
    ShardBuffer,
    create_value_array,
    value_codecs,
)
from lancell.storage.reader import array_reader, read_element_ranges

__all__ = ["CSC_MIN_VALUES", "CsrBlocks", "read_csc_features", "write_csc"]

log = logging.getLogger(__name__)

# Ingestion writes the CSC copy of sparse datasets with at least this many stored values by default. Reading
# a dataset's whole rows costs ~2.5 ms per million values (indices and values decoded), so below this a
# feature-major copy saves under a millisecond per query; above it, it is what makes feature queries cheap.
CSC_MIN_VALUES = 250_000
CSC_BUDGET = 16_000_000
_READ_VALUES = 4_000_000  # elements per read of an unsharded (or otherwise laid out) array

# (first element, the column indices and each layer's values of the elements from there)
Block = tuple[int, np.ndarray, Mapping[str, np.ndarray]]


class CsrBlocks:
    """The CSR blocks of a dataset as ingestion writes them, so that :func:`write_csc` reads nothing back.

    Parameters
    ----------
    n_features
        Features (columns) of the dataset.
    keep
        Whether to keep the blocks themselves (ingestion keeps them for datasets of at most ``CSC_BUDGET``
        values); each feature's number of values is always counted.
    """

    def __init__(self, n_features: int, *, keep: bool) -> None:
        self.counts = np.zeros(n_features, dtype=np.int64)
        self.blocks: list[Block] | None = [] if keep else None
        self.nnz = 0

    def add(self, indices: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        """Record the next block of rows: column indices (sorted within each row) and each layer's values
        as stored."""
        count_features(indices, self.counts)
        if self.blocks is not None:
            self.blocks.append((self.nnz, indices, values))
        self.nnz += indices.size


def _stored_blocks(indices: zarr.Array, values: Mapping[str, zarr.Array]) -> Iterator[Block]:
    """The stored CSR arrays (``values`` empty: the indices alone), read back shard by shard
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

    Memory is bounded by ``budget`` values (8 bytes each: row + value) plus one shard of each CSR array; a
    dataset with more nonzeros than ``budget`` is read ``ceil(nnz / budget)`` times (from
    ``written.blocks`` when they were kept, else from the stored arrays). ``written``: what ingestion
    recorded while writing the CSR arrays (the feature counts, and the blocks when kept); without it the
    stored indices are read once more to count.
    """
    csr = group["csr"]
    indptr = np.asarray(csr["indptr"][:], dtype=np.int64)
    n_features = int(group.attrs["n_features"])
    indices_array = csr["indices"]
    values_arrays = {layer: csr[f"layers/{layer}"] for layer in layers}
    if written is None:
        counts = np.zeros(n_features, dtype=np.int64)
        for _, stored, _ in _stored_blocks(indices_array, {}):
            count_features(stored, counts)
    else:
        counts = written.counts
    kept = None if written is None else written.blocks

    def blocks() -> Iterator[Block]:
        return iter(kept) if kept is not None else _stored_blocks(indices_array, values_arrays)

    csc_indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    nnz = int(csc_indptr[-1])
    geometry = DEFAULT_GEOMETRY
    chunk = min(geometry.sparse_chunk, max(nnz, 1))
    shard = min(geometry.sparse_shard, -(-max(nnz, 1) // chunk) * chunk)
    target = group.require_group("csc")
    rows_out = None
    if indices:
        rows_out = ShardBuffer(
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
    parent = target.require_group("layers")
    vals_out = {
        layer: ShardBuffer(create_value_array(parent, layer, (nnz,), array.dtype, (chunk,), (shard,)), shard)
        for layer, array in values_arrays.items()
    }
    feature = 0
    while feature < n_features:  # feature ranges whose values fit the budget
        stop = int(np.searchsorted(csc_indptr, csc_indptr[feature] + budget, side="right")) - 1
        stop = min(max(stop, feature + 1), n_features)
        base = csc_indptr[feature]
        size = int(csc_indptr[stop] - base)
        rows = {layer: np.empty(size, dtype=np.uint32) for layer in values_arrays}
        vals = {layer: np.empty(size, dtype=array.dtype) for layer, array in values_arrays.items()}
        fill = {layer: csc_indptr[feature:stop] - base for layer in values_arrays}
        for start, stored, values in blocks():  # rows stay increasing within each feature
            for layer in values_arrays:  # ingestion writes rows sorted; an older group's are scanned whole
                fill_feature_runs(
                    indptr,
                    start,
                    stored,
                    values[layer],
                    feature,
                    stop,
                    written is not None,
                    fill[layer],
                    rows[layer],
                    vals[layer],
                )
        if rows_out is not None:  # the same rows for every layer
            rows_out.append(next(iter(rows.values())))
        for layer, buffer in vals_out.items():
            buffer.append(vals[layer])
        feature = stop
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
    group.attrs["csc_layers"] = sorted({*group.attrs.get("csc_layers", []), *layers})


def read_csc_features(
    indptr: np.ndarray, indices: zarr.Array, values: zarr.Array, local_features: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, local_feature, values)`` of every stored value of ``local_features`` (group-local rows),
    from a group's CSC ``indptr`` (read whole), ``csc/indices`` and one layer's ``csc/layers/<layer>``."""
    starts, ends = indptr[local_features], indptr[local_features + 1]
    rows, lengths = read_element_ranges(indices, starts, ends)
    stored, _ = read_element_ranges(values, starts, ends)
    return rows.astype(np.int64), np.repeat(local_features, lengths), stored
