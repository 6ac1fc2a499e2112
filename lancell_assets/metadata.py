"""Materialization metadata shared by the assets: cells, nnz, bytes, bytes/nnz, durations, Lance versions,
the cell table's column schema, and the owners every asset names."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # lancell is imported at first use: loading the definitions must stay fast
    from lancell.atlas import RaggedAtlas
    from lancell.tables.schema import DatasetRecord

OWNERS = ["team:atlas"]


def group_metadata(atlas: RaggedAtlas, record: DatasetRecord, seconds: float | None) -> dict[str, object]:
    """Metadata of one dataset group."""
    from lancell.layer_entries import layer_entries
    from lancell.storage.stores import prefix_nbytes

    nbytes = prefix_nbytes(atlas.store, record.zarr_group)
    out: dict[str, object] = {
        "dataset_uid": record.uid,
        "zarr_group": record.zarr_group,
        "layer": record.layer,
        "layers": dg.MetadataValue.json(layer_entries(atlas.core, record)),
        "cells": dg.MetadataValue.int(record.n_cells),
        "features": dg.MetadataValue.int(record.n_features),
        "nnz": dg.MetadataValue.int(record.nnz),
        "bytes": dg.MetadataValue.int(nbytes),
        "bytes_per_nnz": dg.MetadataValue.float(round(nbytes / max(record.nnz, 1), 3)),
        "lance_versions": dg.MetadataValue.json(atlas.table_versions()),
    }
    if seconds is not None:
        out["duration_s"] = dg.MetadataValue.float(round(seconds, 3))
        out["cells_per_s"] = dg.MetadataValue.float(round(record.n_cells / max(seconds, 1e-9), 1))
    return out


def datasets_table(atlas: RaggedAtlas) -> dg.MetadataValue:
    """A markdown table of the atlas' datasets."""
    frame = atlas.list_datasets()
    frame["layers"] = frame["layers"].map(", ".join)
    columns = ["uid", "layers", "n_cells", "n_features", "nnz"]
    return dg.MetadataValue.md(frame[columns].to_markdown(index=False))


def column_schema(atlas: RaggedAtlas) -> dg.TableSchemaMetadataValue:
    """The cell table's columns and Arrow types (shown as ``dagster/column_schema``)."""
    columns = [dg.TableColumn(name=f.name, type=str(f.type)) for f in atlas.cell_arrow_schema]
    return dg.MetadataValue.table_schema(dg.TableSchema(columns=columns))
