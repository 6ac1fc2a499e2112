"""Partitions: one per dataset zarr group, one per snapshot (training assets share snapshot partitions).

Asset checks are scoped to these partitions too (``AssetCheckSpec(partitions_def=...)``, a Dagster preview
feature in 1.13, whose warning is silenced here once, for that message only).
"""

import warnings

import dagster as dg

warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

dataset_partitions = dg.DynamicPartitionsDefinition(name="lancell_datasets")
snapshot_partitions = dg.DynamicPartitionsDefinition(name="lancell_snapshots")
