"""The kinds of column a stored cell table holds, read from its Arrow schema (no Python class, no lancedb).

Pointer structs (one per feature space), embedding vectors and the free obs columns. The read path takes
them from a checked-out table's schema; :mod:`lancell.tables.schema` re-exports them for the schema classes.
"""

from __future__ import annotations

import pyarrow as pa

from lancell.storage.groups import PointerKind

__all__ = ["OBS_NAME", "SEARCH_RESULT_COLUMN", "obs_fields", "pointer_fields_from_arrow", "vector_fields"]

OBS_NAME = "obs_name"  # the cell column holding the input's obs name (absent in atlases made before it)
SEARCH_RESULT_COLUMN = {"vector": "distance", "fts": "score", "hybrid": "score"}
"""The column each kind of ``query().search()`` adds to the cells it returns."""


def pointer_fields_from_arrow(schema: pa.Schema) -> dict[str, PointerKind]:
    """Recover pointer fields from a stored cell table schema (no Python class needed)."""
    found: dict[str, PointerKind] = {}
    for field in schema:
        if not pa.types.is_struct(field.type):
            continue
        names = {field.type.field(i).name for i in range(field.type.num_fields)}
        if names == {"feature_space", "zarr_group", "start", "end", "zarr_row"}:
            found[field.name] = "sparse"
        elif names == {"feature_space", "zarr_group", "position"}:
            found[field.name] = "dense"
    return found


def vector_fields(schema: pa.Schema) -> dict[str, int]:
    """Embedding columns (``FixedSizeList<float>``, e.g. ``lancedb.pydantic.Vector(d)``) and their widths."""
    return {
        f.name: f.type.list_size
        for f in schema
        if pa.types.is_fixed_size_list(f.type) and pa.types.is_floating(f.type.value_type)
    }


def obs_fields(schema: pa.Schema) -> list[pa.Field]:
    """The free obs columns: everything but ``uid``, ``dataset_uid``, ``obs_name`` (filled by ingestion),
    pointer structs and vector columns."""
    skip = {"uid", "dataset_uid", OBS_NAME, *pointer_fields_from_arrow(schema), *vector_fields(schema)}
    return [f for f in schema if f.name not in skip]
