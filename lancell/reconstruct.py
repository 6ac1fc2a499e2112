"""Reconstruction: cells from many ragged zarr groups -> one AnnData over a joined feature set.

Each group has its own local feature order (its layout). The output columns are the union (or intersection)
of the groups' global feature indices, ordered by global index. Each group's rows are read in one batched
pass, their local indices remapped to output columns, and scattered into one CSR matrix whose rows follow the
query order. ``adata.varm["presence"]`` (features x datasets, booleans) records which features each dataset
measured, so an unmeasured gene is distinguishable from a measured zero (see :func:`presence_matrix`).
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


@dataclass
class _Group:
    zarr_group: str
    dataset_uid: str
    global_index: np.ndarray
    layer_dtype: np.dtype
    rows: np.ndarray


def _groups(
    atlas: RaggedAtlas, groups: np.ndarray, rows_of: dict[str, np.ndarray], layer: str | None
) -> tuple[list[_Group], str | None]:
    """Describe the selected groups; a group without ``layer`` is left out (its cells measured nothing)."""
    datasets = atlas._tables.datasets.to_arrow().select(["uid", "zarr_group", "layout_uid"]).to_pylist()
    by_group = {d["zarr_group"]: d for d in datasets}
    layers_of = {}
    for name in groups:
        if name not in by_group:
            raise QueryError(f"zarr group {name!r} has no dataset record (an interrupted ingestion?)")
        layers_of[name] = (atlas._group_attrs(name) or {}).get("layers", {})
    if layer is None:
        present = {lay for layers in layers_of.values() for lay in layers}
        if len(present) > 1:
            per_dataset = {by_group[n]["uid"]: sorted(layers_of[n]) for n in groups}
            raise QueryError(
                f"the selected datasets store different layers {per_dataset}; choose one with .layers()"
            )
        layer = present.pop() if present else None
    out = []
    for name in groups:
        record = by_group[name]
        if layer not in layers_of[name]:
            log.warning("dataset %s has no layer %r; its cells are returned unmeasured", record["uid"], layer)
            continue
        _, global_index = read_layout(atlas._tables.layouts, record["layout_uid"])
        out.append(_Group(name, record["uid"], global_index, np.dtype(layers_of[name][layer]), rows_of[name]))
    return out, layer


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


def reconstruct(
    atlas: RaggedAtlas, cells: pa.Table, feature_space: str, layer: str | None, join: Join = "union"
) -> ad.AnnData:
    """Build the AnnData of ``cells`` (rows in the given order) for one feature space."""
    space = atlas.feature_spaces[feature_space]
    pointer = cells.column(feature_space).combine_chunks()
    valid = pointer.is_valid().to_numpy(zero_copy_only=False)
    group_of = pc.struct_field(pointer, "zarr_group").fill_null("").to_numpy(zero_copy_only=False)
    names = np.unique(group_of[valid])
    rows_of = {name: np.flatnonzero(valid & (group_of == name)) for name in names}
    groups, layer = _groups(atlas, names, rows_of, layer)
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
    var = _var(atlas, feature_space, columns)
    adata = ad.AnnData(X=matrix, obs=obs, var=var)
    adata.varm["presence"] = _presence(groups, columns, var.index)
    adata.uns["lancell"] = {"feature_space": feature_space, "layer": layer or "", "join": join}
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
        keep_feature = (out_col < columns.size) & (
            columns[np.minimum(out_col, columns.size - 1)] == g.global_index
        )
        keep = keep_feature[idx] if columns.size else np.zeros(idx.size, dtype=bool)
        row_local = np.repeat(np.arange(g.rows.size), lengths)
        kept_per_row = np.bincount(row_local[keep], minlength=g.rows.size)
        row_nnz[g.rows] = kept_per_row
        pieces.append((g.rows, kept_per_row, out_col[idx[keep]], vals[keep]))
    indptr = np.concatenate(([0], np.cumsum(row_nnz))).astype(np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int64)
    data = np.empty(int(indptr[-1]), dtype=dtype)
    for rows, kept, cols, vals in pieces:
        dest = np.repeat(indptr[rows], kept) + (
            np.arange(cols.size) - np.repeat(np.cumsum(kept) - kept, kept)
        )
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
        keep = (out_col < columns.size) & (
            columns[np.minimum(out_col, max(columns.size - 1, 0))] == g.global_index
        )
        out[np.ix_(g.rows, out_col[keep])] = block[:, keep]
    return out


def _var(atlas: RaggedAtlas, feature_space: str, columns: np.ndarray) -> pd.DataFrame:
    registry = atlas._tables.registry(feature_space).to_arrow()
    frame = registry.to_pandas().set_index("global_index").reindex(columns)
    frame.index = pd.Index(frame.pop("uid").astype(str), name=None)
    frame["global_index"] = columns
    return frame


def _presence(groups: list[_Group], columns: np.ndarray, var_names: pd.Index) -> pd.DataFrame:
    """features x datasets booleans: True where the dataset's panel has the feature."""
    mask = {g.dataset_uid: np.isin(columns, g.global_index) for g in groups}
    return pd.DataFrame(mask, index=var_names, dtype=bool)


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
