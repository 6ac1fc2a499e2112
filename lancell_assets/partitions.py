"""Partitions: one per dataset zarr group, one per snapshot (training assets share snapshot partitions)."""

import dagster as dg

dataset_partitions = dg.DynamicPartitionsDefinition(name="lancell_datasets")
snapshot_partitions = dg.DynamicPartitionsDefinition(name="lancell_snapshots")
