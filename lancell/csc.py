"""Feature-major (CSC) copies of dataset groups, for reads of a few features over many cells.

``<group>/csc/indptr`` (n_features + 1), ``csc/indices`` (uint32 row numbers within the group, BP-128
delta) and ``csc/layers/<layer>`` (the CSR layer's dtype and codec: integers stay integers, floats stay
floats). Built from the stored CSR arrays in bounded memory: one pass counts each feature's nonzeros, then
feature ranges holding at most ``budget`` values are filled by streaming the CSR rows again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import zarr
import zarr.codecs

from lancell.groups import DEFAULT_GEOMETRY, INDPTR_CODECS, ShardBuffer, value_codecs
from lancell.reader import read_element_ranges

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["CSC_MIN_CELLS", "add_csc", "write_csc"]

log = logging.getLogger(__name__)

CSC_MIN_CELLS = 5_000
CSC_BUDGET = 16_000_000
_ROW_BLOCK_VALUES = 4_000_000


def _row_blocks(indptr: np.ndarray) -> list[tuple[int, int]]:
    blocks, start = [], 0
    n = indptr.size - 1
    while start < n:
        stop = int(np.searchsorted(indptr, indptr[start] + _ROW_BLOCK_VALUES, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        blocks.append((start, stop))
        start = stop
    return blocks


def write_csc(group: zarr.Group, layer: str, *, budget: int = CSC_BUDGET) -> None:
    """Write the CSC copy of ``group``'s CSR ``layer`` (overwriting an earlier one).

    Memory is bounded by ``budget`` values (8 bytes each: row + value) plus one row block; a dataset with
    more nonzeros than ``budget`` is read ``ceil(nnz / budget)`` times.
    """
    csr = group["csr"]
    indptr = np.asarray(csr["indptr"][:])
    n_features = int(group.attrs["n_features"])
    indices_array, values_array = csr["indices"], csr[f"layers/{layer}"]
    blocks = _row_blocks(indptr)
    counts = np.zeros(n_features, dtype=np.int64)
    for start, stop in blocks:
        counts += np.bincount(np.asarray(indices_array[indptr[start] : indptr[stop]]), minlength=n_features)
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
        fill = csc_indptr[feature:stop].copy() - base
        for start, end in blocks:
            lo, hi = indptr[start], indptr[end]
            cols = np.asarray(indices_array[lo:hi]).astype(np.int64)
            keep = (cols >= feature) & (cols < stop)
            if not keep.any():
                continue
            cells = np.repeat(np.arange(start, end, dtype=np.uint32), np.diff(indptr[start : end + 1]))[keep]
            cols = cols[keep] - feature
            block_vals = np.asarray(values_array[lo:hi])[keep]
            order = np.argsort(cols, kind="stable")  # rows stay increasing within each feature
            cols, cells, block_vals = cols[order], cells[order], block_vals[order]
            per_col = np.bincount(cols, minlength=stop - feature)
            first = np.concatenate(([0], np.cumsum(per_col)[:-1]))
            dest = fill[cols] + (np.arange(cols.size) - first[cols])
            rows[dest] = cells
            vals[dest] = block_vals
            fill += per_col
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
