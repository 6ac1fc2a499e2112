"""Atomic ingestion of AnnData into a :class:`~lancell.atlas.RaggedAtlas`.

Order (DESIGN §4): validate everything that can be checked up front (feature space and layer, shapes,
dtypes, obs -> Arrow, feature uids against the registry, dataset uid), then stream the matrix into a zarr
group under a fresh unique name (values are checked block by block; a bad block deletes the group), then the
feature layout, the cell rows (one commit) and the dataset row (one commit). Any failure removes what this
call wrote, so readers, ``validate()`` and ``snapshot()`` see the atlas exactly as before.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from lancell.csc import CSC_BUDGET, CSC_MIN_VALUES, CsrBlocks, write_csc
from lancell.errors import (
    DataValueError,
    DuplicateDatasetError,
    DuplicateFeaturesError,
    IngestError,
    LancellError,
    ShapeMismatchError,
    UnknownFeaturesError,
)
from lancell.feature_spaces import FeatureSpace, resolve_feature_space
from lancell.groups import DenseGroupWriter, SparseGroupWriter, new_group_name
from lancell.ingest_blocks import checked_values, stored_csr_blocks
from lancell.obs import obs_to_arrow
from lancell.registry import ensure_layout, layout_uid_for, registry_index, sql_literal
from lancell.schema import (
    DatasetRecord,
    check_dataset_uid,
    obs_fields,
    pointer_arrow_type,
    pointer_fields_from_arrow,
    vector_fields,
)
from lancell.sources import MatrixSource, matrix_source
from lancell.visibility import claim_dataset

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["add_from_anndata"]

log = logging.getLogger(__name__)

CELL_BATCH = 65_536


def add_from_anndata(
    atlas: RaggedAtlas,
    adata: ad.AnnData | str | os.PathLike[str],
    *,
    feature_space: str,
    zarr_layer: str,
    dataset_record: DatasetRecord | None = None,
    layer: str | None = None,
    var_uid_column: str | None = None,
    obsm_columns: Mapping[str, str] | None = None,
    csc: bool | None = None,
    progress: bool = True,
) -> DatasetRecord:
    """Ingest one AnnData (in memory, backed, or a path to ``.h5ad`` read in backed mode) as one dataset.

    Parameters
    ----------
    atlas
        A writable atlas.
    adata
        The data; a path is opened with ``backed="r"`` and streamed in bounded memory.
    feature_space
        The feature space (pointer field) the matrix belongs to.
    zarr_layer
        The layer name to store the matrix under (must be allowed by the feature space).
    dataset_record
        Provenance and the dataset uid; storage fields are filled in. A fresh record if omitted.
    layer
        Read ``adata.layers[layer]`` instead of ``adata.X``.
    var_uid_column
        The ``var`` column holding registry uids; the var index by default.
    obsm_columns
        ``{obsm key: vector column}``: embeddings stored as ``FixedSizeList<float32>`` cell columns (found
        with ``query().search(vector)``).
    csc
        Also write the feature-major (CSC) copy used by feature-filtered reads; by default for sparse
        datasets of at least ``lancell.csc.CSC_MIN_VALUES`` stored values (``lancell.csc.add_csc`` adds it
        later).
    progress
        Show a progress bar while the matrix is written.

    Returns
    -------
    DatasetRecord
        The stored record (``zarr_group``, ``n_cells``, ``nnz``, ``layout_uid`` filled in).

    Raises
    ------
    IngestError
        Any invalid input (subclasses say which); the atlas is unchanged.
    """
    atlas._require_writable()
    if isinstance(adata, str | os.PathLike):
        path = Path(adata)
        if not path.exists():
            raise IngestError(f"no such file: {path}")
        try:
            adata = ad.read_h5ad(path, backed="r")
        except (OSError, KeyError, ValueError) as exc:
            raise IngestError(f"cannot read {path} as .h5ad: {exc}") from exc
    record = (dataset_record or atlas.dataset_schema()).model_copy()
    space = resolve_feature_space(atlas.feature_spaces, feature_space)
    space.check_layer(zarr_layer)
    plan = _plan(atlas, adata, space, zarr_layer, record, layer, var_uid_column)
    plan.vectors = _vectors(atlas, adata, record.uid, obsm_columns or {})
    started = time.perf_counter()
    zarr_group = new_group_name(record.uid)
    cells_written = False
    with claim_dataset(atlas, record.uid):
        try:
            written = None
            if space.kind == "sparse" and (plan.nnz >= CSC_MIN_VALUES if csc is None else csc):
                written = CsrBlocks(len(plan.feature_uids), keep=plan.nnz <= CSC_BUDGET)
            indptr = _write_group(atlas, plan, space, zarr_layer, zarr_group, progress, written)
            if written is not None:
                write_csc(atlas._zarr_root[zarr_group], zarr_layer, written=written)
                del written  # the kept blocks
            with atlas._lock("layouts"):
                ensure_layout(atlas._tables.layouts, plan.layout_uid, plan.feature_uids, plan.global_index)
            batches = _cell_batches(atlas, plan, space, zarr_group, indptr)
            atlas._tables.cells.add(pa.RecordBatchReader.from_batches(atlas._cell_arrow, batches))
            cells_written = True
            record = record.model_copy(
                update={
                    "zarr_group": zarr_group,
                    "feature_space": space.name,
                    "layer": zarr_layer,
                    "n_cells": plan.n_cells,
                    "n_features": len(plan.feature_uids),
                    "nnz": plan.nnz,
                    "layout_uid": plan.layout_uid,
                }
            )
            row = pa.Table.from_pylist([record.model_dump()], schema=atlas._dataset_arrow)
            atlas._tables.datasets.add(row)  # the commit point (lancell.visibility)
        except BaseException:
            _roll_back(atlas, record.uid, zarr_group, cells_written)
            raise
    elapsed = time.perf_counter() - started
    log.info(
        "ingested %s: %d cells, %d nnz in %.2f s (%.0f cells/s)",
        record.uid,
        plan.n_cells,
        plan.nnz,
        elapsed,
        plan.n_cells / max(elapsed, 1e-9),
    )
    return record


class _Plan:
    """Everything validated before the first write."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)

    source: MatrixSource
    obs: pd.DataFrame
    obs_names: pd.Index
    feature_uids: list[str]  # in stored (local) order: increasing global index
    global_index: np.ndarray
    stored_column: np.ndarray | None  # var column -> stored local index; None when var is in that order
    layout_uid: str
    n_cells: int
    nnz: int
    dataset: str
    store_dtype: np.dtype
    vectors: dict[str, np.ndarray]


def _plan(
    atlas: RaggedAtlas,
    adata: ad.AnnData,
    space: FeatureSpace,
    zarr_layer: str,
    record: DatasetRecord,
    layer: str | None,
    var_uid_column: str | None,
) -> _Plan:
    dataset = record.uid
    check_dataset_uid(dataset)
    if atlas._tables.datasets.count_rows(f"uid = {sql_literal(dataset)}") > 0:
        raise DuplicateDatasetError(f"dataset {dataset!r} is already in the atlas")
    n_obs, n_vars = adata.n_obs, adata.n_vars
    if n_obs == 0:
        raise IngestError(f"dataset {dataset!r} has no cells")
    if n_vars == 0:
        raise IngestError(f"dataset {dataset!r} has no features")
    if layer is not None and layer not in adata.layers:
        raise IngestError(f"dataset {dataset!r}: no layer {layer!r} in adata.layers {list(adata.layers)}")
    where = "X" if layer is None else f"layers[{layer!r}]"
    try:  # a backed file opens its matrix only now
        matrix = adata.X if layer is None else adata.layers[layer]
    except (KeyError, OSError) as exc:
        raise IngestError(
            f"dataset {dataset!r}: cannot read adata.{where} from {adata.filename}: {exc}"
        ) from exc
    if matrix is None:
        raise IngestError(f"dataset {dataset!r}: adata.{where} is empty")
    source = matrix_source(dataset, matrix)
    if source.shape != (n_obs, n_vars):
        raise ShapeMismatchError(
            f"dataset {dataset!r}: adata.{where} has shape {source.shape} but obs x var is {(n_obs, n_vars)}"
        )
    if var_uid_column is None:
        feature_uids = adata.var_names.astype(str).tolist()
    elif var_uid_column not in adata.var.columns:
        raise IngestError(f"dataset {dataset!r}: var has no column {var_uid_column!r}")
    else:
        column = adata.var[var_uid_column]
        if column.isna().any():
            raise IngestError(
                f"dataset {dataset!r}: var[{var_uid_column!r}] has {int(column.isna().sum())} NaN"
            )
        feature_uids = column.astype(str).tolist()
    uids = pd.Index(feature_uids)
    if uids.has_duplicates:
        raise DuplicateFeaturesError(dataset, uids[uids.duplicated()].unique().tolist())
    registry = registry_index(atlas._tables.registry(space.name))
    known = uids.isin(registry.index)
    if not known.all():
        raise UnknownFeaturesError(dataset, space.name, uids[~known].tolist())
    global_index = registry.reindex(uids).to_numpy()
    if pd.isna(global_index).any():
        raise IngestError(f"dataset {dataset!r}: registry features without a global index; run optimize()")
    obs_names = adata.obs_names
    if obs_names.has_duplicates:
        raise IngestError(
            f"dataset {dataset!r}: duplicate obs names {obs_names[obs_names.duplicated()][:5].tolist()}; "
            "call adata.obs_names_make_unique() first"
        )
    fields = obs_fields(atlas._cell_arrow)
    for start in range(0, n_obs, CELL_BATCH):  # convert once up front to validate; kept batch by batch later
        obs_to_arrow(dataset, adata.obs.iloc[start : start + CELL_BATCH], fields)
    store_dtype = np.dtype(np.uint32) if source.dtype.kind in "iu" else np.dtype(np.float32)
    # features are stored in global-index order, so that a row read back maps to increasing output columns
    # and queries never sort rows (var order is only how the input happened to list them)
    order = np.argsort(global_index.astype(np.int64), kind="stable")
    stored_column = None
    if (order != np.arange(order.size)).any():
        stored_column = np.empty(order.size, dtype=np.int64)
        stored_column[order] = np.arange(order.size)
    feature_uids = [feature_uids[i] for i in order]
    return _Plan(
        source=source,
        obs=adata.obs,
        obs_names=obs_names,
        feature_uids=feature_uids,
        global_index=global_index.astype(np.int64)[order],
        stored_column=stored_column,
        layout_uid=layout_uid_for(feature_uids),
        n_cells=n_obs,
        nnz=source.nnz if space.kind == "sparse" else n_obs * n_vars,
        dataset=dataset,
        store_dtype=store_dtype,
    )


def _vectors(
    atlas: RaggedAtlas, adata: ad.AnnData, dataset: str, obsm_columns: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Check and convert the embeddings named by ``obsm_columns`` (float32, finite, the declared width)."""
    declared = vector_fields(atlas._cell_arrow)
    vectors = {}
    for key, column in obsm_columns.items():
        if key not in adata.obsm:
            raise IngestError(f"dataset {dataset!r}: no obsm[{key!r}] (obsm has {list(adata.obsm)})")
        if column not in declared:
            raise IngestError(
                f"dataset {dataset!r}: {column!r} is not a vector column of the cell schema {declared}"
            )
        values = np.asarray(adata.obsm[key])
        if values.ndim != 2 or values.shape != (adata.n_obs, declared[column]):
            raise ShapeMismatchError(
                f"dataset {dataset!r}: obsm[{key!r}] has shape {values.shape}, "
                f"column {column!r} needs ({adata.n_obs}, {declared[column]})"
            )
        if values.dtype.kind not in "fiu" or not np.isfinite(values).all():
            raise DataValueError(f"dataset {dataset!r}: obsm[{key!r}] must be finite numbers")
        vectors[column] = values.astype(np.float32)
    return vectors


def _write_group(
    atlas: RaggedAtlas,
    plan: _Plan,
    space: FeatureSpace,
    zarr_layer: str,
    zarr_group: str,
    progress: bool,
    written: CsrBlocks | None = None,
) -> np.ndarray:
    """Stream the matrix into a new zarr group; return the per-cell element offsets (indptr). Sparse blocks
    are also recorded in ``written`` (for the CSC copy) when given."""
    n_features = len(plan.feature_uids)
    bar = tqdm(
        total=plan.n_cells, desc=f"ingest {plan.dataset}", unit="cell", disable=not progress, leave=False
    )
    with bar:
        if space.kind == "sparse":
            writer = SparseGroupWriter(
                atlas._zarr_root,
                zarr_group,
                n_cells=plan.n_cells,
                n_features=n_features,
                nnz=plan.nnz,
                layer=zarr_layer,
                dtype=plan.store_dtype,
            )
            for _, indptr, indices, values in stored_csr_blocks(plan.source, zarr_layer, plan.stored_column):
                writer.append(indptr, indices, values)
                if written is not None:
                    written.add(indices, values)
                bar.update(indptr.size - 1)
            indptr = writer.close(_group_attrs(plan, space))
        else:
            writer = DenseGroupWriter(
                atlas._zarr_root,
                zarr_group,
                n_cells=plan.n_cells,
                n_features=n_features,
                layer=zarr_layer,
                dtype=plan.store_dtype,
            )
            for row0, block in plan.source.dense_blocks():
                values = checked_values(plan.dataset, zarr_layer, block.ravel(), row0).reshape(block.shape)
                if plan.stored_column is not None:
                    values = values[:, np.argsort(plan.stored_column)]
                writer.append(values)
                bar.update(block.shape[0])
            writer.close(_group_attrs(plan, space))
            indptr = np.arange(plan.n_cells + 1, dtype=np.int64) * n_features
    if int(indptr[-1]) != plan.nnz:
        raise IngestError(f"dataset {plan.dataset!r}: wrote {int(indptr[-1])} values, expected {plan.nnz}")
    return indptr


def _group_attrs(plan: _Plan, space: FeatureSpace) -> dict[str, object]:
    return {
        "feature_space": space.name,
        "layout_uid": plan.layout_uid,
        "n_features": len(plan.feature_uids),
        "dataset_uid": plan.dataset,
    }


def _cell_batches(
    atlas: RaggedAtlas, plan: _Plan, space: FeatureSpace, zarr_group: str, indptr: np.ndarray
) -> Iterator[pa.RecordBatch]:
    """Cell rows in batches of ``CELL_BATCH`` (streamed into one commit, so memory stays flat)."""
    schema = atlas._cell_arrow
    fields = obs_fields(schema)
    pointers = pointer_fields_from_arrow(schema)
    for start in range(0, plan.n_cells, CELL_BATCH):
        stop = min(start + CELL_BATCH, plan.n_cells)
        n = stop - start
        names = plan.obs_names[start:stop]
        columns: dict[str, pa.Array] = {
            "uid": pa.array((plan.dataset + ":" + names.astype(str)).tolist(), pa.string()),
            "dataset_uid": pa.array(np.full(n, plan.dataset, dtype=object), pa.string()),
        }
        for name, kind in pointers.items():
            if name != space.name:
                columns[name] = pa.nulls(n, schema.field(name).type)
                continue
            fields_of = {
                "feature_space": pa.array(np.full(n, space.name, dtype=object), pa.string()),
                "zarr_group": pa.array(np.full(n, zarr_group, dtype=object), pa.string()),
            }
            if kind == "sparse":
                fields_of |= {
                    "start": pa.array(indptr[start:stop], pa.int64()),
                    "end": pa.array(indptr[start + 1 : stop + 1], pa.int64()),
                    "zarr_row": pa.array(np.arange(start, stop), pa.int64()),
                }
            else:
                fields_of["position"] = pa.array(np.arange(start, stop), pa.int64())
            struct_type = pointer_arrow_type(kind)
            children = [struct_type.field(i) for i in range(struct_type.num_fields)]
            columns[name] = pa.StructArray.from_arrays([fields_of[c.name] for c in children], fields=children)
        columns |= obs_to_arrow(plan.dataset, plan.obs.iloc[start:stop], fields)
        for name, width in vector_fields(schema).items():
            if name in plan.vectors:
                flat = pa.array(plan.vectors[name][start:stop].ravel(), pa.float32())
                columns[name] = pa.FixedSizeListArray.from_arrays(flat, width).cast(schema.field(name).type)
            else:
                columns[name] = pa.nulls(n, schema.field(name).type)
        yield pa.record_batch([columns[f.name] for f in schema], schema=schema)


def _roll_back(atlas: RaggedAtlas, dataset: str, zarr_group: str, cells_written: bool) -> None:
    """Undo what a failed ingestion wrote; the original error is re-raised by the caller."""
    try:
        if cells_written:
            atlas._tables.cells.delete(f"dataset_uid = {sql_literal(dataset)}")
        atlas._delete_group(zarr_group)
    except (LancellError, OSError) as exc:
        log.error("roll-back of dataset %s left debris (vacuum() removes it): %s", dataset, exc)
