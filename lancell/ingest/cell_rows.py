"""The cell-table rows a write transaction commits, and the null pointers its roll-back writes back.

A new dataset adds one row per cell (uid, dataset uid, the input's obs name where the table has the
``obs_name`` column, its pointer, obs columns typed by the schema, embeddings); a further modality fills its
pointer column on the cells that exist (one ``merge_insert``).
Both are built in batches of ``CELL_BATCH`` rows and streamed into LanceDB, the new rows in commits of
``ROWS_PER_COMMIT`` rows, so memory stays flat (docs/architecture.md, "Ingestion").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lancell.ingest.plan import CELL_BATCH, IngestPlan
from lancell.tables.obs import obs_to_arrow
from lancell.tables.registry import sql_literal
from lancell.tables.schema import (
    CELL_UID_SEPARATOR,
    OBS_NAME,
    PointerKind,
    obs_fields,
    pointer_arrow_type,
    pointer_fields_from_arrow,
    vector_fields,
)

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["cell_batches", "detach_pointers", "null_structs", "pointer_batches", "pointer_column"]


def pointer_column(
    kind: PointerKind, feature_space: str, zarr_group: str, indptr: np.ndarray, start: int, stop: int
) -> pa.StructArray:
    """The ``feature_space`` pointers of stored rows ``start..stop`` of ``zarr_group``."""
    n = stop - start
    values = {
        "feature_space": pa.repeat(pa.scalar(feature_space, pa.string()), n),
        "zarr_group": pa.repeat(pa.scalar(zarr_group, pa.string()), n),
        "start": pa.array(indptr[start:stop], pa.int64()),
        "end": pa.array(indptr[start + 1 : stop + 1], pa.int64()),
        "zarr_row": pa.array(np.arange(start, stop), pa.int64()),
        "position": pa.array(np.arange(start, stop), pa.int64()),
    }
    struct_type = pointer_arrow_type(kind)
    children = [struct_type.field(i) for i in range(struct_type.num_fields)]
    return pa.StructArray.from_arrays([values[c.name] for c in children], fields=children)


def cell_batches(
    schema: pa.Schema, plan: IngestPlan, feature_space: str, zarr_group: str, indptr: np.ndarray
) -> Iterator[pa.RecordBatch]:
    """The new cell rows of ``plan``'s dataset (cell table ``schema``), ``CELL_BATCH`` rows at a time."""
    fields = obs_fields(schema)
    pointers = pointer_fields_from_arrow(schema)
    for start in range(0, plan.n_cells, CELL_BATCH):
        stop = min(start + CELL_BATCH, plan.n_cells)
        n = stop - start
        names = pa.array(plan.obs_names[start:stop].astype(str), pa.string())  # (no Python list: 4x faster)
        columns: dict[str, pa.Array] = {
            "uid": pc.binary_join_element_wise(plan.dataset + CELL_UID_SEPARATOR, names, ""),
            "dataset_uid": pa.repeat(pa.scalar(plan.dataset, pa.string()), n),
        }
        if OBS_NAME in schema.names:  # atlases created before the column existed lack it
            columns[OBS_NAME] = names.cast(schema.field(OBS_NAME).type)
        for name, kind in pointers.items():
            if name == feature_space:
                columns[name] = pointer_column(kind, feature_space, zarr_group, indptr, start, stop)
            else:
                columns[name] = pa.nulls(n, schema.field(name).type)
        columns |= obs_to_arrow(plan.dataset, plan.obs.iloc[start:stop], fields)
        for name, width in vector_fields(schema).items():
            if name in plan.vectors:
                flat = pa.array(plan.vectors[name][start:stop].ravel(), pa.float32())
                columns[name] = pa.FixedSizeListArray.from_arrays(flat, width).cast(schema.field(name).type)
            else:
                columns[name] = pa.nulls(n, schema.field(name).type)
        yield pa.record_batch([columns[f.name] for f in schema], schema=schema)


def pointer_batches(
    uids: np.ndarray, kind: PointerKind, feature_space: str, zarr_group: str, indptr: np.ndarray
) -> Iterator[pa.RecordBatch]:
    """``(uid, feature_space)`` rows pointing cells ``uids`` (in stored row order) into ``zarr_group``."""
    for start in range(0, uids.size, CELL_BATCH):
        stop = min(start + CELL_BATCH, uids.size)
        pointer = pointer_column(kind, feature_space, zarr_group, indptr, start, stop)
        yield pa.record_batch(
            [pa.array(uids[start:stop].tolist(), pa.string()), pointer], names=["uid", feature_space]
        )


def detach_pointers(core: AtlasCore, feature_space: str, zarr_group: str) -> int:
    """Null the ``feature_space`` pointer of every cell pointing into ``zarr_group``; return how many.

    The update is conditional on the pointer still leading into ``zarr_group`` when it is written: an
    attachment that set a cell's pointer into its own group meanwhile keeps it."""
    cells, schema = core.tables.cells, core.cell_arrow
    into = f"{feature_space}.zarr_group = {sql_literal(zarr_group)}"
    rows = cells.search().where(into).select(["uid"]).to_arrow()
    if rows.num_rows:
        field = schema.field(feature_space)
        nulls = pa.table(
            [rows.column("uid"), null_structs(field.type, rows.num_rows)],
            schema=pa.schema([schema.field("uid"), field]),
        )
        cells.merge_insert("uid").when_matched_update_all(where=f"target.{into}").execute(nulls)
    return rows.num_rows


def null_structs(struct_type: pa.StructType, n: int) -> pa.StructArray:
    """``n`` null structs whose (hidden) children are valid, as non-nullable children require."""
    children = [struct_type.field(i) for i in range(struct_type.num_fields)]
    filler = [pa.array([""] * n if pa.types.is_string(c.type) else np.zeros(n), c.type) for c in children]
    return pa.StructArray.from_arrays(filler, fields=children, mask=pa.array(np.ones(n, dtype=bool)))
