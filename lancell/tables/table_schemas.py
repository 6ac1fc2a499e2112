"""Names and Arrow schemas of the tables every atlas has besides its cell, dataset and registry tables.

The cell table, the dataset table and each feature registry take their schemas from the user's
:mod:`lancell.tables.schema` models; these four are lancell's own: ``datasets`` (its name only), the feature
layouts (each dataset's local -> global feature index), the feature spaces and the snapshot versions.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "DATASETS_TABLE",
    "FEATURE_SPACES_SCHEMA",
    "FEATURE_SPACES_TABLE",
    "LAYOUTS_SCHEMA",
    "LAYOUTS_TABLE",
    "VERSIONS_SCHEMA",
    "VERSIONS_TABLE",
]

DATASETS_TABLE = "datasets"
FEATURE_SPACES_TABLE = "_feature_spaces"
LAYOUTS_TABLE = "_feature_layouts"
VERSIONS_TABLE = "atlas_versions"

LAYOUTS_SCHEMA = pa.schema(
    [
        pa.field("layout_uid", pa.string(), nullable=False),
        pa.field("feature_uid", pa.string(), nullable=False),
        pa.field("local_index", pa.int64(), nullable=False),
        pa.field("global_index", pa.int64(), nullable=False),
    ]
)


VERSIONS_SCHEMA = pa.schema(
    [
        pa.field("version", pa.int64(), nullable=False),
        pa.field("tables", pa.string(), nullable=False),
        pa.field("total_cells", pa.int64(), nullable=False),
        pa.field("n_datasets", pa.int64(), nullable=False),
        pa.field("store_url", pa.string(), nullable=False),
        pa.field("store_config", pa.string(), nullable=False),
        pa.field("lancell_format", pa.int64(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("note", pa.string()),
        # set when the snapshot is deleted (absent from tables created before deletion existed)
        pa.field("deleted_at", pa.timestamp("us", tz="UTC")),
    ]
)


FEATURE_SPACES_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("layers", pa.list_(pa.string()), nullable=False),
        pa.field("registry_table", pa.string(), nullable=False),
    ]
)
