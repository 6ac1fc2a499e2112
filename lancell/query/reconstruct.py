"""Reconstruction: cells from many ragged zarr groups -> one AnnData over a joined feature set.

Each group has its own local feature order (its layout). The output columns are the union (or intersection)
of the groups' global feature indices, ordered by global index. Each group's rows are read in one batched
pass, their local indices remapped to output columns, and scattered into one CSR matrix whose rows follow the
query order. ``adata.varm["presence"]`` (features x datasets, booleans) records which features each dataset
measured, so an unmeasured gene is distinguishable from a measured zero (see :func:`presence_matrix`).
Several requested layers are read on the same cells and columns: the first is ``X``, the others
``adata.layers[name]``; a layer's zeros that pad the group's shared pattern are left out
(:mod:`lancell.ingest.layer_blocks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import zarr
from tqdm.auto import tqdm

from kernels.scatter import keep_mapped, scatter_rows, scatter_rows_by_column
from lancell.query.plan import PlannedGroup, ReconstructionPlan
from lancell.storage.csc import read_csc_features
from lancell.storage.nodes import checked_indices
from lancell.storage.reader import read_element_ranges, read_rows
from lancell.tables.obs_read import arrow_to_obs
from lancell.tables.stored_fields import pointer_fields_from_arrow, vector_fields

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["presence_matrix", "reconstruct", "reconstruct_batches"]

_FILTER_SLICE = 8_000_000  # stored values read at once when most of them are dropped
_MAP_SLICE = 1 << 20  # stored indices mapped to output columns at once (:func:`_mapped`)


def reconstruct(
    core: AtlasCore,
    cells: pa.Table,
    plan: ReconstructionPlan,
    categories: Mapping[str, Sequence[str]] | None = None,
    bar: tqdm | None = None,
) -> ad.AnnData:
    """Build the AnnData of ``cells`` (rows in the given order) following ``plan``; ``categories``: the
    categories of text obs columns (default: each column's own values, sorted); ``bar`` (reset here)
    advances by each group's cells as each layer of them is read."""
    pointer = cells.column(plan.feature_space).combine_chunks()
    valid = pointer.is_valid().to_numpy(zero_copy_only=False)
    rows_of = _rows_by_group(pointer, valid, plan)
    n_cells = cells.num_rows
    layers = plan.layers or [None]
    if bar is not None:  # (each layer of each cell)
        bar.reset(total=sum(rows.size for rows in rows_of.values()) * len(layers))
    matrices = {}
    for layer in layers:
        mine = {name: rows for name, rows in rows_of.items() if layer in plan.groups[name].layer_dtypes}
        if plan.kind == "sparse":
            starts = pc.struct_field(pointer, "start").fill_null(0).to_numpy()
            ends = pc.struct_field(pointer, "end").fill_null(0).to_numpy()
            zarr_rows = pc.struct_field(pointer, "zarr_row").fill_null(0).to_numpy()
            matrices[layer] = _sparse(core, plan, layer, mine, starts, ends, zarr_rows, n_cells, bar)
        else:
            positions = pc.struct_field(pointer, "position").fill_null(0).to_numpy()
            matrices[layer] = _dense(core, plan, layer, mine, positions, n_cells, bar)
        if bar is not None:  # (the cells of groups without this layer)
            bar.update(sum(rows.size for name, rows in rows_of.items() if name not in mine))
    vectors = vector_fields(cells.schema)
    obs = arrow_to_obs(
        cells.drop_columns([*pointer_fields_from_arrow(cells.schema), *vectors]), categories=categories
    )
    first, *others = matrices
    adata = ad.AnnData(
        X=matrices[first], obs=obs, var=plan.var.copy(), layers={name: matrices[name] for name in others}
    )
    for name, width in vectors.items():
        adata.obsm[name] = _vector_matrix(cells.column(name).combine_chunks(), width)
    adata.varm["presence"] = plan.presence.copy()
    adata.uns["lancell"] = plan.uns()
    return adata


def reconstruct_batches(
    core: AtlasCore,
    batches: Iterable[pa.RecordBatch],
    plan: ReconstructionPlan,
    batch_size: int,
    categories: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[ad.AnnData]:
    """:func:`reconstruct` the cell rows of ``batches`` (in order, any sizes) in AnnData batches of
    ``batch_size`` cells (the last may be smaller), keeping only the rows ``plan`` selects; every batch's
    text obs columns have ``categories`` (those of all the rows: one code means one label in every batch)."""
    pending: list[pa.RecordBatch] = []
    buffered = 0
    for batch in batches:
        batch = plan.select(batch)
        pending.append(batch)
        buffered += batch.num_rows
        while buffered >= batch_size:
            table = pa.Table.from_batches(pending)
            yield reconstruct(core, table.slice(0, batch_size), plan, categories)
            rest = table.slice(batch_size)
            pending, buffered = rest.to_batches(), rest.num_rows
    if buffered:
        yield reconstruct(core, pa.Table.from_batches(pending), plan, categories)


def _rows_by_group(
    pointer: pa.StructArray, valid: np.ndarray, plan: ReconstructionPlan
) -> dict[str, np.ndarray]:
    """Positions of the cells of each planned zarr group (increasing), from the pointers' group names."""
    encoded = pc.dictionary_encode(pc.struct_field(pointer, "zarr_group"))
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    codes[~valid] = -1
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(encoded.dictionary) + 1))
    rows_of = {}
    for code, name in enumerate(encoded.dictionary.to_pylist()):
        if name in plan.groups and bounds[code + 1] > bounds[code]:
            rows_of[name] = order[bounds[code] : bounds[code + 1]]
    return dict(sorted(rows_of.items()))


def _csc_is_cheaper(core: AtlasCore, root: zarr.Group, g: PlannedGroup, layer: str, csr_values: int) -> bool:
    """Plan by values read: the CSC copy when the kept features hold fewer values than the cells' rows."""
    if layer not in root.attrs.get("csc_layers", []) or (g.out_col >= 0).all():
        return False
    indptr = core.csc_offsets(g.zarr_group)
    kept = np.flatnonzero(g.out_col >= 0)
    return int((indptr[kept + 1] - indptr[kept]).sum()) < csr_values


def _read_by_feature(
    core: AtlasCore, root: zarr.Group, g: PlannedGroup, layer: str, rows: np.ndarray, zarr_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cells' kept features from the CSC copy: (sorted output rows, per-row counts, cols, vals)."""
    local = np.flatnonzero(g.out_col >= 0)
    group_rows, features, values = read_csc_features(
        core.csc_offsets(g.zarr_group),  # read whole once per handle (8 B per feature)
        core.node(f"{g.zarr_group}/csc/indices"),
        core.node(f"{g.zarr_group}/csc/layers/{layer}"),
        local,
    )
    out_row = np.full(int(root.attrs["n_cells"]), -1, dtype=np.int64)
    out_row[zarr_rows] = rows
    mapped = out_row[checked_indices(group_rows, out_row.size, f"{g.zarr_group}/csc/indices")]
    keep = mapped >= 0
    mapped, cols, values = mapped[keep], g.out_col[features[keep]], values[keep]
    order = np.lexsort((cols, mapped))
    mapped, cols, values = mapped[order], cols[order], values[order]
    rows = np.sort(rows)
    per_row = np.bincount(mapped, minlength=int(rows.max(initial=-1)) + 1)[rows]
    return rows, per_row, cols, values


def _without_fill(
    kept_per_row: np.ndarray, cols: np.ndarray, vals: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows' values less the zeros padding a layer's shared indices (:mod:`lancell.ingest.layer_blocks`)."""
    keep = vals != 0
    row_of = np.repeat(np.arange(kept_per_row.size), kept_per_row)
    return np.bincount(row_of[keep], minlength=kept_per_row.size), cols[keep], vals[keep]


def _mapped(out_col: np.ndarray, local: np.ndarray) -> np.ndarray:
    """``out_col[local]``, as int32 where the columns fit, mapped ``_MAP_SLICE`` values at a time: numpy's
    intp copy of the indices it gathers by is then one reused slice, not 8 new bytes per value (new memory
    costs a page fault per 4 KiB, on small pages more: :mod:`lancell.storage.small_pages`). ``local`` is
    checked below ``out_col.size`` by the caller, so the gather clips (numpy buffers ``out`` otherwise)."""
    dtype = np.int32 if out_col.size and out_col.max() < np.iinfo(np.int32).max else np.int64
    narrow = out_col.astype(dtype)
    cols = np.empty(local.size, dtype)
    for lo in range(0, local.size, _MAP_SLICE):
        np.take(narrow, local[lo : lo + _MAP_SLICE], out=cols[lo : lo + _MAP_SLICE], mode="clip")
    return cols


def _read_filtered(
    core: AtlasCore, name: str, layer: str, g: PlannedGroup, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows' kept values from the CSR copy, read ``_FILTER_SLICE`` stored values at a time.

    Returns the kept count of each row and the kept values' output columns and values.
    """
    indices, values = core.node(f"{name}/csr/indices"), core.node(f"{name}/csr/layers/{layer}")
    reach = np.cumsum(ends - starts)
    marks = np.arange(_FILTER_SLICE, int(reach[-1]) if reach.size else 0, _FILTER_SLICE)
    bounds = np.unique(np.concatenate(([0], np.searchsorted(reach, marks, side="right"), [starts.size])))
    counts, cols, vals = [], [], []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        idx, lengths = read_element_ranges(indices, starts[lo:hi], ends[lo:hi])
        stored, _ = read_element_ranges(values, starts[lo:hi], ends[lo:hi])
        checked_indices(idx, g.out_col.size, f"{name}/csr/indices")
        kept = keep_mapped(lengths.astype(np.int64), idx, stored, g.out_col)
        counts.append(kept[0])
        cols.append(kept[1].copy())  # keep_mapped's outputs are views of slice-sized buffers
        vals.append(kept[2].copy())
        del idx, stored, kept  # not alive while the next slice is read
    if not counts:
        return np.zeros(starts.size, np.int64), np.zeros(0, np.int64), np.zeros(0, g.layer_dtypes[layer])
    return np.concatenate(counts), np.concatenate(cols), np.concatenate(vals)


def _sparse(
    core: AtlasCore,
    plan: ReconstructionPlan,
    layer: str | None,
    rows_of: dict[str, np.ndarray],
    starts: np.ndarray,
    ends: np.ndarray,
    zarr_rows: np.ndarray,
    n_cells: int,
    bar: tqdm | None,
) -> sp.csr_matrix:
    row_nnz = np.zeros(n_cells, dtype=np.int64)
    pieces = []
    for name, rows in _read_in_turn(rows_of, bar):
        g = plan.groups[name]
        if not (g.out_col >= 0).any():  # none of its features is asked for: its cells' rows stay empty
            continue
        root = core.node(name)
        if _csc_is_cheaper(core, root, g, layer, int((ends[rows] - starts[rows]).sum())):
            rows, kept_per_row, cols, vals = _read_by_feature(core, root, g, layer, rows, zarr_rows[rows])
            in_order = True  # sorted by (row, column)
        else:
            lo, hi = starts[rows], ends[rows]
            if (g.out_col < 0).any():  # some features dropped: read in slices, memory follows the result
                kept_per_row, cols, vals = _read_filtered(core, name, layer, g, lo, hi)
            else:
                idx, kept_per_row = read_element_ranges(core.node(f"{name}/csr/indices"), lo, hi)
                cols = _mapped(g.out_col, checked_indices(idx, g.out_col.size, f"{name}/csr/indices"))
                del idx  # (not held beside the values and the output)
                vals, _ = read_element_ranges(core.node(f"{name}/csr/layers/{layer}"), lo, hi)
            kept_cols = g.out_col[g.out_col >= 0]  # stored rows are in local order
            in_order = bool((kept_cols[1:] > kept_cols[:-1]).all())
        if layer in g.zero_fill:
            kept_per_row, cols, vals = _without_fill(kept_per_row, cols, vals)
        row_nnz[rows] = kept_per_row
        pieces.append((rows, kept_per_row, cols, vals, in_order))
    total = int(row_nnz.sum())
    index_dtype = np.int32 if max(total, plan.columns.size) < np.iinfo(np.int32).max else np.int64
    indptr = np.concatenate(([0], np.cumsum(row_nnz))).astype(index_dtype)  # scipy's own choice: no copy
    dtype = plan.dtypes.get(layer, plan.dtype)
    if len(pieces) == 1 and pieces[0][4] and pieces[0][0].size == n_cells and _consecutive(pieces[0][0]):
        _, _, cols, vals, _ = pieces.pop()  # every cell, of one group, in order: its arrays are the matrix's
        matrix = sp.csr_matrix(
            (vals.astype(dtype, copy=False), cols.astype(index_dtype, copy=False), indptr),
            shape=(n_cells, plan.columns.size),
        )
        matrix.has_sorted_indices = True
        return matrix
    indices = np.empty(total, dtype=index_dtype)
    data = np.empty(int(indptr[-1]), dtype=dtype)
    for i, piece in enumerate(pieces):
        pieces[i] = None  # this group's arrays let go once copied (not all held until the matrix is filled)
        rows, kept, cols, vals, in_order = piece
        if in_order and _consecutive(rows):  # a dataset's cells in scan order: one slice, no kernel to load
            lo, hi = indptr[rows[0]], indptr[rows[-1] + 1]
            indices[lo:hi] = cols
            data[lo:hi] = vals
            continue
        args = (
            indptr,
            rows.astype(np.int64, copy=False),
            kept.astype(np.int64, copy=False),
            cols.astype(np.int64, copy=False),
            vals.astype(data.dtype, copy=False),
        )
        if in_order:
            scatter_rows(*args, indices, data)
        else:  # the output feature order differs from this group's local order: sort every row
            scatter_rows_by_column(*args, plan.columns.size, indices, data)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n_cells, plan.columns.size))
    matrix.has_sorted_indices = True
    return matrix


def _read_in_turn(rows_of: dict[str, np.ndarray], bar: tqdm | None) -> Iterator[tuple[str, np.ndarray]]:
    """``rows_of``'s groups and their cells, ``bar`` advanced by a group's cells once the caller is done with
    it (asks for the next)."""
    for name, rows in rows_of.items():
        yield name, rows
        if bar is not None:
            bar.update(rows.size)


def _consecutive(rows: np.ndarray) -> bool:
    """Whether ``rows`` are consecutive output rows: a group's kept values then fill one slice of the output
    in order, what :func:`kernels.scatter.scatter_rows` writes, without loading that kernel in a fresh
    process (~0.03-0.1 s of a first query)."""
    return rows.size > 0 and bool((np.diff(rows) == 1).all())


def _dense(
    core: AtlasCore,
    plan: ReconstructionPlan,
    layer: str | None,
    rows_of: dict[str, np.ndarray],
    positions: np.ndarray,
    n_cells: int,
    bar: tqdm | None,
) -> np.ndarray:
    out = np.zeros((n_cells, plan.columns.size), dtype=plan.dtypes.get(layer, plan.dtype))
    for name, rows in _read_in_turn(rows_of, bar):
        g = plan.groups[name]
        keep = g.out_col >= 0
        if not keep.any():  # none of its features is asked for
            continue
        block = read_rows(core.node(f"{name}/layers/{layer}"), positions[rows])
        out[np.ix_(rows, g.out_col[keep])] = block[:, keep]
    return out


def _vector_matrix(column: pa.FixedSizeListArray, width: int) -> np.ndarray:
    """(n_cells, width) float32; rows of cells without the embedding are NaN."""
    out = np.full((len(column), width), np.nan, dtype=np.float32)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if valid.any():
        out[valid] = column.filter(column.is_valid()).flatten().to_numpy().reshape(-1, width)
    return out


def presence_matrix(adata: ad.AnnData) -> sp.csr_matrix:
    """Boolean cells x features matrix: True where the cell's dataset measured the feature.

    A zero in ``adata.X`` at a True position is a measured zero; at a False position the feature was not
    part of that dataset's panel. Built from ``adata.varm["presence"]`` (features x datasets) and
    ``adata.obs["dataset_uid"]``, both of which follow AnnData subsetting.
    """
    presence = adata.varm["presence"]
    by_dataset = sp.csr_matrix(
        np.vstack([presence.to_numpy(dtype=bool).T, np.zeros((1, adata.n_vars), bool)])
    )
    row_of = pd.Index(presence.columns).get_indexer(adata.obs["dataset_uid"].astype(str))
    return by_dataset[np.where(row_of < 0, len(presence.columns), row_of)]
