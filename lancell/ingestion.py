"""Atomic ingestion of AnnData into a :class:`~lancell.atlas.RaggedAtlas`.

Order: validate everything that can be checked up front (:mod:`lancell.ingest_plan`: feature space and
layer, the caller's record, shapes, dtypes, obs -> Arrow, feature uids against the registry, dataset uid),
then stream the matrix into a zarr group under a fresh unique name (values are checked and the content
fingerprint computed block by block; a bad block deletes the group), then the feature layout, the cell rows
(one commit) and, unless the same content is already in the atlas (:mod:`lancell.fingerprint`), the dataset
row (one commit). Any failure removes what this call wrote, so readers, ``validate()`` and ``snapshot()``
see the atlas exactly as before.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from lancell.csc import CSC_BUDGET, CSC_MIN_VALUES, CsrBlocks, write_csc
from lancell.errors import DroppedColumnsWarning, DuplicateContentWarning, IngestError, LancellError
from lancell.feature_spaces import FeatureSpace, resolve_feature_space
from lancell.fingerprint import ContentHasher, OnDuplicate, check_on_duplicate, content_claim
from lancell.groups import DenseGroupWriter, SparseGroupWriter
from lancell.ingest_blocks import checked_values, stored_csr_blocks
from lancell.ingest_plan import CELL_BATCH, IngestPlan, embedding_vectors, plan_ingest
from lancell.obs import obs_to_arrow
from lancell.registry import ensure_layout, sql_literal
from lancell.schema import (
    DatasetRecord,
    obs_fields,
    pointer_arrow_type,
    pointer_fields_from_arrow,
    vector_fields,
)
from lancell.visibility import claim_dataset

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["CELL_BATCH", "add_from_anndata"]

log = logging.getLogger(__name__)


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
    on_duplicate: OnDuplicate = "error",
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
        Provenance and the dataset uid; the storage fields (``lancell.schema.ASSIGNED_FIELDS``:
        ``zarr_group``, ``n_cells``, ...) are assigned by lancell and must be left unset. A fresh record if
        omitted.
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
    on_duplicate
        What to do when the same content (matrix, obs names, layer and feature panel: the
        ``content_fingerprint``) is already in the atlas as another dataset: ``"error"`` raises
        :class:`~lancell.errors.DuplicateContentError`; ``"skip"`` warns
        (:class:`~lancell.errors.DuplicateContentWarning`) and returns that dataset's record, leaving the
        atlas unchanged; ``"allow"`` stores it again.
    progress
        Show a progress bar while the matrix is written.

    Returns
    -------
    DatasetRecord
        The stored record (``zarr_group``, ``n_cells``, ``nnz``, ``layout_uid``, ``content_fingerprint``
        filled in; ``dropped_obs_columns`` lists the obs columns the cell schema does not declare, which are
        not stored and are warned about with :class:`~lancell.errors.DroppedColumnsWarning`).

    Raises
    ------
    IngestError
        Any invalid input (subclasses say which), a record that sets a field lancell assigns, a read error
        while streaming a backed file; the atlas is unchanged.
    DuplicateContentError
        The content is already in the atlas (``on_duplicate="error"``); the atlas is unchanged.
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
    check_on_duplicate(record.uid, on_duplicate)
    plan = plan_ingest(atlas, adata, space, zarr_layer, record, layer, var_uid_column)
    plan.vectors = embedding_vectors(atlas, adata, record.uid, obsm_columns or {})
    duplicate_of = None
    started = time.perf_counter()
    zarr_group = atlas.group_claims.claim_new(record.uid)
    cells_written = False
    with claim_dataset(atlas, record.uid) as claim:
        try:
            written = None
            if space.kind == "sparse" and (plan.nnz >= CSC_MIN_VALUES if csc is None else csc):
                written = CsrBlocks(len(plan.feature_uids), keep=plan.nnz <= CSC_BUDGET)
            with ContentHasher(space.kind, plan.store_dtype, plan.source.shape) as hasher:
                indptr = _write_group(atlas, plan, space, zarr_layer, zarr_group, progress, written, hasher)
                fingerprint = hasher.finish(
                    obs_names=plan.obs_names,
                    feature_space=space.name,
                    layer=zarr_layer,
                    feature_uids=plan.feature_uids,
                )
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
                    "dropped_obs_columns": plan.dropped_obs_columns,
                    "content_fingerprint": fingerprint,
                }
            )
            row = pa.Table.from_pylist([record.model_dump()], schema=atlas._dataset_arrow)
            with content_claim(atlas, record.uid, fingerprint, on_duplicate) as duplicate_of:
                if duplicate_of is None:
                    claim.check()  # LockLostError if another process took the claim over
                    atlas._tables.datasets.add(row)  # the commit point (lancell.visibility)
        except BaseException:
            _roll_back(atlas, record.uid, zarr_group, cells_written)
            raise
        if duplicate_of is not None:
            _roll_back(atlas, record.uid, zarr_group, cells_written)
    if duplicate_of is not None:
        warnings.warn(
            f"dataset {record.uid!r}: the same content is already in the atlas as dataset "
            f"{duplicate_of.uid!r}; nothing was ingested (on_duplicate='skip')",
            DuplicateContentWarning,
            stacklevel=2,
        )
        return duplicate_of
    if plan.dropped_obs_columns:
        warnings.warn(
            f"dataset {record.uid!r}: obs columns {plan.dropped_obs_columns} are not in the cell schema and "
            "were not stored (listed on the record as dropped_obs_columns)",
            DroppedColumnsWarning,
            stacklevel=2,
        )
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


def _write_group(
    atlas: RaggedAtlas,
    plan: IngestPlan,
    space: FeatureSpace,
    zarr_layer: str,
    zarr_group: str,
    progress: bool,
    written: CsrBlocks | None = None,
    hasher: ContentHasher | None = None,
) -> np.ndarray:
    """Stream the matrix into a new zarr group; return the per-cell element offsets (indptr). Sparse blocks
    are also recorded in ``written`` (for the CSC copy) and stored blocks fed to ``hasher`` when given."""
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
                atlas_id=atlas.group_claims.atlas_id,
            )
            for _, indptr, indices, values in stored_csr_blocks(plan.source, zarr_layer, plan.stored_column):
                writer.append(indptr, indices, values)
                if hasher is not None:
                    hasher.add_csr(indptr, indices, values)
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
                atlas_id=atlas.group_claims.atlas_id,
            )
            for row0, block in plan.source.dense_blocks():
                values = checked_values(plan.dataset, zarr_layer, block.ravel(), row0).reshape(block.shape)
                if plan.stored_column is not None:
                    values = values[:, np.argsort(plan.stored_column)]
                writer.append(values)
                if hasher is not None:
                    hasher.add_dense(values)
                bar.update(block.shape[0])
            writer.close(_group_attrs(plan, space))
            indptr = np.arange(plan.n_cells + 1, dtype=np.int64) * n_features
    if int(indptr[-1]) != plan.nnz:
        raise IngestError(f"dataset {plan.dataset!r}: wrote {int(indptr[-1])} values, expected {plan.nnz}")
    return indptr


def _group_attrs(plan: IngestPlan, space: FeatureSpace) -> dict[str, object]:
    return {
        "feature_space": space.name,
        "layout_uid": plan.layout_uid,
        "n_features": len(plan.feature_uids),
        "dataset_uid": plan.dataset,
    }


def _cell_batches(
    atlas: RaggedAtlas, plan: IngestPlan, space: FeatureSpace, zarr_group: str, indptr: np.ndarray
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
