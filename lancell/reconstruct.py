"""Reconstruction: cells from many ragged zarr groups -> one AnnData over a joined feature set.

Each group has its own local feature order (its layout). The output columns are the union (or intersection)
of the groups' global feature indices, ordered by global index. Each group's rows are read in one batched
pass, their local indices remapped to output columns, and scattered into one CSR matrix whose rows follow the
query order. ``adata.uns["lancell"]["presence"]`` records which features each dataset measured, so an
unmeasured gene is distinguishable from a measured zero (see :func:`presence_matrix`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from lancell.errors import QueryError
from lancell.obs import arrow_to_obs
from lancell.reader import read_element_ranges, read_rows
from lancell.registry import read_layout
from lancell.schema import pointer_fields_from_arrow

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["presence_matrix", "reconstruct"]

Join = Literal["union", "intersection"]


@dataclass
class _Group:
    zarr_group: str
    dataset_uid: str
    global_index: np.ndarray
    layer_dtype: np.dtype
    rows: np.ndarray


def _groups(atlas: RaggedAtlas, groups: np.ndarray, rows_of: dict[str, np.ndarray], layer: str) -> list[_Group]:
    datasets = atlas._tables.datasets.to_arrow().select(["uid", "zarr_group", "layout_uid"]).to_pylist()
    by_group = {d["zarr_group"]: d for d in datasets}
    out = []
    for name in groups:
        record = by_group.get(name)
        if record is None:
            raise QueryError(f"zarr group {name!r} has no dataset record (an interrupted ingestion?)")
        attrs = atlas._group_attrs(name) or {}
        layers = attrs.get("layers", {})
        if layer not in layers:
            raise QueryError(f"dataset {record['uid']!r} has no layer {layer!r} (it has {sorted(layers)})")
        _, global_index = read_layout(atlas._tables.layouts, record["layout_uid"])
        out.append(_Group(name, record["uid"], global_index, np.dtype(layers[layer]), rows_of[name]))
    return out


def _output_dtype(groups: list[_Group]) -> np.dtype:
    if any(g.layer_dtype.kind == "f" for g in groups):
        return np.dtype(np.float32)
    return np.dtype(np.int64)


def _join_columns(groups: list[_Group], join: Join) -> np.ndarray:
    if not groups:
        return np.zeros(0, dtype=np.int64)
    if join == "union":
        return np.unique(np.concatenate([g.global_index for g in groups]))
    common = groups[0].global_index
    for g in groups[1:]:
        common = np.intersect1d(common, g.global_index)
    return np.unique(common)


def default_layer(atlas: RaggedAtlas, feature_space: str) -> str:
    """The layer most datasets of ``feature_space`` have (the first allowed one on ties)."""
    frame = atlas._tables.datasets.to_arrow().select(["feature_space", "layer"]).to_pandas()
    layers = frame.loc[frame["feature_space"] == feature_space, "layer"].value_counts()
    if layers.empty:
        return atlas.feature_spaces[feature_space].layers[0]
    return str(layers.index[0])


def reconstruct(
    atlas: RaggedAtlas, cells: pa.Table, feature_space: str, layer: str | None, join: Join = "union"
) -> ad.AnnData:
    """Build the AnnData of ``cells`` (rows in the given order) for one feature space."""
    space = atlas.feature_spaces[feature_space]
    layer = layer or default_layer(atlas, feature_space)
    pointer = cells.column(feature_space).combine_chunks()
    valid = pointer.is_valid().to_numpy(zero_copy_only=False)
    group_of = pc.struct_field(pointer, "zarr_group").fill_null("").to_numpy(zero_copy_only=False)
    names = np.unique(group_of[valid])
    rows_of = {name: np.flatnonzero(valid & (group_of == name)) for name in names}
    groups = _groups(atlas, names, rows_of, layer)
    columns = _join_columns(groups, join)
    dtype = _output_dtype(groups)
    n_cells = cells.num_rows
    if space.kind == "sparse":
        starts = pc.struct_field(pointer, "start").fill_null(0).to_numpy()
        ends = pc.struct_field(pointer, "end").fill_null(0).to_numpy()
        matrix = _sparse(atlas, groups, columns, starts, ends, layer, dtype, n_cells)
    else:
        positions = pc.struct_field(pointer, "position").fill_null(0).to_numpy()
        matrix = _dense(atlas, groups, columns, positions, layer, dtype, n_cells)
    pointer_names = list(pointer_fields_from_arrow(cells.schema))
    obs = arrow_to_obs(cells.drop_columns(pointer_names))
    adata = ad.AnnData(X=matrix, obs=obs, var=_var(atlas, feature_space, columns))
    adata.uns["lancell"] = {
        "feature_space": feature_space,
        "layer": layer,
        "join": join,
        "presence": _presence(groups, columns),
    }
    return adata


def _sparse(
    atlas: RaggedAtlas,
    groups: list[_Group],
    columns: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    layer: str,
    dtype: np.dtype,
    n_cells: int,
) -> sp.csr_matrix:
    row_nnz = np.zeros(n_cells, dtype=np.int64)
    pieces = []
    for g in groups:
        root = atlas._zarr_root[g.zarr_group]
        idx, lengths = read_element_ranges(root["csr/indices"], starts[g.rows], ends[g.rows])
        vals, _ = read_element_ranges(root[f"csr/layers/{layer}"], starts[g.rows], ends[g.rows])
        out_col = np.searchsorted(columns, g.global_index)
        keep_feature = (out_col < columns.size) & (columns[np.minimum(out_col, columns.size - 1)] == g.global_index)
        keep = keep_feature[idx] if columns.size else np.zeros(idx.size, dtype=bool)
        row_local = np.repeat(np.arange(g.rows.size), lengths)
        kept_per_row = np.bincount(row_local[keep], minlength=g.rows.size)
        row_nnz[g.rows] = kept_per_row
        pieces.append((g.rows, kept_per_row, out_col[idx[keep]], vals[keep]))
    indptr = np.concatenate(([0], np.cumsum(row_nnz))).astype(np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int64)
    data = np.empty(int(indptr[-1]), dtype=dtype)
    for rows, kept, cols, vals in pieces:
        dest = np.repeat(indptr[rows], kept) + (np.arange(cols.size) - np.repeat(np.cumsum(kept) - kept, kept))
        indices[dest] = cols
        data[dest] = vals
    index_dtype = np.int32 if columns.size < np.iinfo(np.int32).max and indices.size < 2**31 else np.int64
    return sp.csr_matrix(
        (data, indices.astype(index_dtype), indptr.astype(index_dtype)), shape=(n_cells, columns.size)
    )


def _dense(
    atlas: RaggedAtlas,
    groups: list[_Group],
    columns: np.ndarray,
    positions: np.ndarray,
    layer: str,
    dtype: np.dtype,
    n_cells: int,
) -> np.ndarray:
    out = np.zeros((n_cells, columns.size), dtype=dtype)
    for g in groups:
        block = read_rows(atlas._zarr_root[g.zarr_group][f"layers/{layer}"], positions[g.rows])
        out_col = np.searchsorted(columns, g.global_index)
        keep = (out_col < columns.size) & (columns[np.minimum(out_col, max(columns.size - 1, 0))] == g.global_index)
        out[np.ix_(g.rows, out_col[keep])] = block[:, keep]
    return out


def _var(atlas: RaggedAtlas, feature_space: str, columns: np.ndarray) -> pd.DataFrame:
    registry = atlas._tables.registry(feature_space).to_arrow()
    frame = registry.to_pandas().set_index("global_index").reindex(columns)
    frame.index = pd.Index(frame.pop("uid").astype(str), name=None)
    frame["global_index"] = columns
    return frame


def _presence(groups: list[_Group], columns: np.ndarray) -> dict[str, object]:
    datasets = [g.dataset_uid for g in groups]
    rows, cols = [], []
    for i, g in enumerate(groups):
        hit = np.flatnonzero(np.isin(columns, g.global_index))
        rows.append(np.full(hit.size, i))
        cols.append(hit)
    mask = sp.csr_matrix(
        (np.ones(sum(r.size for r in rows), dtype=bool), (np.concatenate(rows or [[]]), np.concatenate(cols or [[]]))),
        shape=(len(groups), columns.size),
    )
    return {"dataset_uid": np.asarray(datasets, dtype=object), "mask": mask}


def presence_matrix(adata: ad.AnnData) -> sp.csr_matrix:
    """Boolean cells x features matrix: True where the cell's dataset measured the feature.

    A zero in ``adata.X`` at a True position is a measured zero; at a False position the feature was not
    part of that dataset's panel.
    """
    presence = adata.uns["lancell"]["presence"]
    datasets = list(presence["dataset_uid"])
    mask = sp.csr_matrix(presence["mask"])
    row_of = pd.Index(datasets).get_indexer(adata.obs["dataset_uid"].astype(str))
    empty = sp.csr_matrix((1, adata.n_vars), dtype=bool)
    stacked = sp.vstack([mask, empty]).tocsr()
    return stacked[np.where(row_of < 0, len(datasets), row_of)]
