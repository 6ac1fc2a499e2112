"""Feature-major (CSC) copies of dataset groups, for reads of a few features over many cells.

``<group>/csc/indptr`` (n_features + 1), ``csc/indices`` (uint32 row numbers within the group, BP-128
delta) and ``csc/layers/<layer>`` (the CSR layer's dtype and codec: integers stay integers, floats stay
floats). Built in bounded memory: each feature's nonzeros are counted (by ingestion as it writes the CSR
arrays, else by one pass over the stored indices), then feature ranges holding at most ``budget`` values are
filled from the CSR row blocks (kept in memory by ingestion for datasets of at most ``budget`` values, else
read back from the store), each block in one linear pass (:mod:`kernels.transpose`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import zarr
import zarr.codecs

from kernels.transpose import count_features, fill_feature_runs
from lancell.groups import DEFAULT_GEOMETRY, INDPTR_CODECS, ShardBuffer, value_codecs
from lancell.reader import read_element_ranges

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["CSC_MIN_CELLS", "CsrBlocks", "add_csc", "write_csc"]

log = logging.getLogger(__name__)

CSC_MIN_CELLS = 5_000
CSC_BUDGET = 16_000_000
_ROW_BLOCK_VALUES = 4_000_000

# (first row, indptr of the block's rows, their column indices, their values)
Block = tuple[int, np.ndarray, np.ndarray, np.ndarray]


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
        self.rows = 0

    def add(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> None:
        """Record the next block of rows: a local CSR triple (``indptr[0] == 0``) as stored."""
        count_features(indices, self.counts)
        if self.blocks is not None:
            self.blocks.append((self.rows, indptr.astype(np.int64, copy=False), indices, values))
        self.rows += indptr.size - 1


def _row_blocks(indptr: np.ndarray) -> list[tuple[int, int]]:
    blocks, start = [], 0
    n = indptr.size - 1
    while start < n:
        stop = int(np.searchsorted(indptr, indptr[start] + _ROW_BLOCK_VALUES, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        blocks.append((start, stop))
        start = stop
    return blocks


def _read(array: zarr.Array, start: int, stop: int) -> np.ndarray:
    """``array[start:stop]`` through the batched shard reader where it applies."""
    return read_element_ranges(array, np.array([start], np.int64), np.array([stop], np.int64))[0]


def _stored_blocks(indptr: np.ndarray, indices: zarr.Array, values: zarr.Array) -> Iterator[Block]:
    """The stored CSR arrays, read back row block by row block."""
    for start, stop in _row_blocks(indptr):
        lo, hi = int(indptr[start]), int(indptr[stop])
        yield start, indptr[start : stop + 1], _read(indices, lo, hi), _read(values, lo, hi)


def write_csc(
    group: zarr.Group, layer: str, *, budget: int = CSC_BUDGET, written: CsrBlocks | None = None
) -> None:
    """Write the CSC copy of ``group``'s CSR ``layer`` (overwriting an earlier one).

    Memory is bounded by ``budget`` values (8 bytes each: row + value) plus one row block; a dataset with
    more nonzeros than ``budget`` is read ``ceil(nnz / budget)`` times (from ``written.blocks`` when they
    were kept, else from the stored arrays). ``written``: what ingestion recorded while writing the CSR
    arrays (the feature counts, and the blocks when kept); without it the stored arrays are read once more
    to count.
    """
    csr = group["csr"]
    indptr = np.asarray(csr["indptr"][:])
    n_features = int(group.attrs["n_features"])
    indices_array, values_array = csr["indices"], csr[f"layers/{layer}"]
    if written is None:
        counts = np.zeros(n_features, dtype=np.int64)
        for start, stop in _row_blocks(indptr):
            counts += np.bincount(
                _read(indices_array, int(indptr[start]), int(indptr[stop])), minlength=n_features
            )
    else:
        counts = written.counts
    kept = None if written is None else written.blocks

    def blocks() -> Iterator[Block]:
        return iter(kept) if kept is not None else _stored_blocks(indptr, indices_array, values_array)

    csc_indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    nnz = int(csc_indptr[-1])
    geometry = DEFAULT_GEOMETRY
    chunk = min(geometry.sparse_chunk, max(nnz, 1))
    shard = min(geometry.sparse_shard, -(-max(nnz, 1) // chunk) * chunk)
    target = group.require_group("csc")
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
    vals_out = ShardBuffer(
        target.require_group("layers").create_array(
            layer,
            shape=(nnz,),
            dtype=values_array.dtype,
            chunks=(chunk,),
            shards=(shard,),
            overwrite=True,
            **value_codecs(values_array.dtype, "values"),
        ),
        shard,
    )
    feature = 0
    while feature < n_features:  # feature ranges whose values fit the budget
        stop = int(np.searchsorted(csc_indptr, csc_indptr[feature] + budget, side="right")) - 1
        stop = min(max(stop, feature + 1), n_features)
        base = csc_indptr[feature]
        size = int(csc_indptr[stop] - base)
        rows = np.empty(size, dtype=np.uint32)
        vals = np.empty(size, dtype=values_array.dtype)
        fill = csc_indptr[feature:stop] - base
        for row0, block_indptr, indices, values in blocks():  # rows stay increasing within each feature
            fill_feature_runs(block_indptr, indices, values, row0, feature, stop, fill, rows, vals)
        rows_out.append(rows)
        vals_out.append(vals)
        feature = stop
    rows_out.close()
    vals_out.close()
    target.create_array(
        "indptr",
        shape=csc_indptr.shape,
        dtype="int64",
        chunks=(min(csc_indptr.size, 65_536),),
        compressors=INDPTR_CODECS,
        overwrite=True,
    )[:] = csc_indptr
    group.attrs["csc_layers"] = sorted({*group.attrs.get("csc_layers", []), layer})


def add_csc(atlas: RaggedAtlas, dataset_uid: str) -> None:
    """Write the CSC copy of every stored layer of a dataset (for datasets ingested without one)."""
    atlas._require_writable()
    record = atlas.list_datasets().set_index("uid").loc[dataset_uid]
    group = atlas._zarr_root[record["zarr_group"]]
    for layer in (atlas._group_attrs(record["zarr_group"]) or {}).get("layers", {}):
        write_csc(group, layer)
    atlas._nodes.clear()  # this handle's opened groups predate the copy
    log.info("wrote the CSC copy of %s", dataset_uid)


def read_csc_features(
    group: zarr.Group, layer: str, local_features: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, local_feature, values)`` of every stored value of ``local_features`` (group-local rows)."""
    indptr = group["csc/indptr"]
    starts = np.asarray(indptr.get_coordinate_selection(local_features))
    ends = np.asarray(indptr.get_coordinate_selection(local_features + 1))
    rows, lengths = read_element_ranges(group["csc/indices"], starts, ends)
    values, _ = read_element_ranges(group[f"csc/layers/{layer}"], starts, ends)
    return rows.astype(np.int64), np.repeat(local_features, lengths), values
