"""Several modalities per cell: attach a second feature space (e.g. protein) to cells already ingested.

The first modality creates the cell rows (:func:`lancell.ingestion.add_from_anndata`); every further one
writes its own zarr group and dataset record (``cells_of`` names the first dataset) and fills its pointer
column on the existing rows with one ``merge_insert`` commit. A failure before the dataset record is
written puts the pointers back to null, so readers see the atlas as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import IngestError, LancellError
from lancell.feature_spaces import resolve_feature_space
from lancell.ingest_plan import CELL_BATCH, plan_ingest
from lancell.ingestion import _write_group, add_from_anndata
from lancell.registry import ensure_layout, sql_literal
from lancell.schema import DatasetRecord, pointer_arrow_type

if TYPE_CHECKING:
    from mudata import MuData

    from lancell.atlas import RaggedAtlas

__all__ = ["add_from_mudata", "attach_modality", "detach_pointers"]

log = logging.getLogger(__name__)


def _existing_cells(atlas: RaggedAtlas, cells_of: str, feature_space: str) -> pa.Table:
    where = f"dataset_uid = {sql_literal(cells_of)}"
    return atlas._tables.cells.search().where(where).select(["uid", feature_space]).to_arrow()


def attach_modality(
    atlas: RaggedAtlas,
    adata: ad.AnnData,
    *,
    cells_of: str,
    feature_space: str,
    zarr_layer: str,
    dataset_record: DatasetRecord | None = None,
    layer: str | None = None,
    var_uid_column: str | None = None,
    progress: bool = True,
) -> DatasetRecord:
    """Store ``adata`` as feature space ``feature_space`` of the cells of dataset ``cells_of``.

    ``adata.obs_names`` must be obs names of that dataset (any subset, any order); those cells must not
    already carry a pointer in ``feature_space``. ``dataset_record`` gives provenance and the uid; the fields
    lancell assigns (``zarr_group``, ...) must be unset and ``cells_of`` unset or equal to ``cells_of``.

    Raises
    ------
    IngestError
        Unknown dataset, cells not in it, cells that already have this modality, a record that sets a field
        lancell assigns, or any input error that :func:`~lancell.ingestion.add_from_anndata` would raise. The
        atlas is unchanged.
    """
    atlas._require_writable()
    space = resolve_feature_space(atlas.feature_spaces, feature_space)
    space.check_layer(zarr_layer)
    if atlas._tables.datasets.count_rows(f"uid = {sql_literal(cells_of)}") == 0:
        raise IngestError(f"cannot attach {feature_space!r}: no dataset {cells_of!r} in the atlas")
    record = (dataset_record or atlas.dataset_schema(uid=f"{cells_of}/{feature_space}")).model_copy()
    plan = plan_ingest(atlas, adata, space, zarr_layer, record, layer, var_uid_column, cells_of=cells_of)
    existing = _existing_cells(atlas, cells_of, feature_space)
    wanted = np.asarray([f"{cells_of}:{name}" for name in plan.obs_names], dtype=object)
    known = np.isin(wanted, np.asarray(existing.column("uid").to_pylist(), dtype=object))
    if not known.all():
        raise IngestError(
            f"dataset {record.uid!r}: {int((~known).sum())} obs names are not cells of {cells_of!r}, "
            f"e.g. {[n.split(':', 1)[1] for n in wanted[~known][:5]]}"
        )
    taken = existing.filter(pc.is_valid(existing.column(feature_space)))
    if taken.num_rows and np.isin(wanted, np.asarray(taken.column("uid").to_pylist(), dtype=object)).any():
        raise IngestError(f"cells of {cells_of!r} already carry a {feature_space!r} pointer")
    zarr_group = atlas.group_claims.claim_new(record.uid)
    pointers_written = False
    try:
        indptr = _write_group(atlas, plan, space, zarr_layer, zarr_group, progress)
        with atlas._lock("layouts"):
            ensure_layout(atlas._tables.layouts, plan.layout_uid, plan.feature_uids, plan.global_index)
        batches = _pointer_batches(wanted, space.name, space.kind, zarr_group, indptr)
        schema = pa.schema([atlas._cell_arrow.field("uid"), atlas._cell_arrow.field(space.name)])
        atlas._tables.cells.merge_insert("uid").when_matched_update_all().execute(
            pa.RecordBatchReader.from_batches(schema, batches)
        )
        pointers_written = True
        record = record.model_copy(
            update={
                "zarr_group": zarr_group,
                "feature_space": space.name,
                "layer": zarr_layer,
                "n_cells": plan.n_cells,
                "n_features": len(plan.feature_uids),
                "nnz": plan.nnz,
                "layout_uid": plan.layout_uid,
                "cells_of": cells_of,
            }
        )
        atlas._tables.datasets.add(pa.Table.from_pylist([record.model_dump()], schema=atlas._dataset_arrow))
    except BaseException:
        _detach(atlas, space.name, zarr_group, pointers_written)
        raise
    return record


def _pointer_batches(
    uids: np.ndarray, feature_space: str, kind: str, zarr_group: str, indptr: np.ndarray
) -> Iterator[pa.RecordBatch]:
    struct_type = pointer_arrow_type(kind)
    children = [struct_type.field(i) for i in range(struct_type.num_fields)]
    for start in range(0, uids.size, CELL_BATCH):
        stop = min(start + CELL_BATCH, uids.size)
        n = stop - start
        values = {
            "feature_space": pa.array(np.full(n, feature_space, dtype=object), pa.string()),
            "zarr_group": pa.array(np.full(n, zarr_group, dtype=object), pa.string()),
            "start": pa.array(indptr[start:stop], pa.int64()),
            "end": pa.array(indptr[start + 1 : stop + 1], pa.int64()),
            "zarr_row": pa.array(np.arange(start, stop), pa.int64()),
            "position": pa.array(np.arange(start, stop), pa.int64()),
        }
        pointer = pa.StructArray.from_arrays([values[c.name] for c in children], fields=children)
        yield pa.record_batch(
            [pa.array(uids[start:stop].tolist(), pa.string()), pointer], names=["uid", feature_space]
        )


def _detach(atlas: RaggedAtlas, feature_space: str, zarr_group: str, written: bool) -> None:
    """Undo a failed attachment: null the pointers again and delete the group."""
    try:
        if written:
            detach_pointers(atlas, feature_space, zarr_group)
        atlas._delete_group(zarr_group)
    except (LancellError, OSError) as exc:
        log.error("roll-back of %s pointers left debris: %s", feature_space, exc)


def detach_pointers(atlas: RaggedAtlas, feature_space: str, zarr_group: str) -> int:
    """Null the ``feature_space`` pointer of every cell pointing into ``zarr_group``; return how many."""
    cells = (
        atlas._tables.cells.search()
        .where(f"{feature_space}.zarr_group = {sql_literal(zarr_group)}")
        .select(["uid"])
        .to_arrow()
    )
    if cells.num_rows:
        field = atlas._cell_arrow.field(feature_space)
        schema = pa.schema([atlas._cell_arrow.field("uid"), field])
        nulls = pa.table([cells.column("uid"), null_structs(field.type, cells.num_rows)], schema=schema)
        atlas._tables.cells.merge_insert("uid").when_matched_update_all().execute(nulls)
    return cells.num_rows


def null_structs(struct_type: pa.StructType, n: int) -> pa.StructArray:
    """``n`` null structs whose (hidden) children are valid, as non-nullable children require."""
    children = [struct_type.field(i) for i in range(struct_type.num_fields)]
    filler = [pa.array([""] * n if pa.types.is_string(c.type) else np.zeros(n), c.type) for c in children]
    return pa.StructArray.from_arrays(filler, fields=children, mask=pa.array(np.ones(n, dtype=bool)))


def add_from_mudata(
    atlas: RaggedAtlas,
    mdata: MuData,
    modalities: Mapping[str, tuple[str, str]],
    *,
    dataset_record: DatasetRecord | None = None,
    progress: bool = True,
) -> list[DatasetRecord]:
    """Ingest a MuData: ``modalities`` maps modality name -> ``(feature_space, zarr_layer)``.

    The first modality creates the cells (with ``mdata.obs`` columns the schema declares); the others are
    attached to them. Returns one record per modality.
    """
    names = list(modalities)
    if not names:
        raise IngestError("add_from_mudata needs at least one modality")
    missing = [m for m in names if m not in mdata.mod]
    if missing:
        raise IngestError(f"modalities {missing} are not in the MuData (it has {list(mdata.mod)})")
    first = mdata.mod[names[0]].copy()
    shared = [c for c in mdata.obs.columns if c not in first.obs.columns and ":" not in c]
    first.obs = first.obs.join(mdata.obs[shared]) if shared else first.obs
    space, layer = modalities[names[0]]
    records = [
        add_from_anndata(
            atlas,
            first,
            feature_space=space,
            zarr_layer=layer,
            dataset_record=dataset_record,
            progress=progress,
        )
    ]
    for name in names[1:]:
        space, layer = modalities[name]
        records.append(
            attach_modality(
                atlas,
                mdata.mod[name],
                cells_of=records[0].uid,
                feature_space=space,
                zarr_layer=layer,
                progress=progress,
            )
        )
    return records
