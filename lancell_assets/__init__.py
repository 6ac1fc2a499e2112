"""Dagster assets, checks, partitions, sensors, schedules and jobs of the lancell platform."""

from lancell_assets.atlas_assets import atlas_snapshot, feature_registry, optimized_atlas
from lancell_assets.automation import (
    ingest_dataset_job,
    landing_zone_sensor,
    nightly_snapshot_schedule,
    rebuild_atlas_job,
    snapshot_job,
)
from lancell_assets.datasets import dataset_group
from lancell_assets.partitions import dataset_partitions, snapshot_partitions

ASSETS = [dataset_group, feature_registry, optimized_atlas, atlas_snapshot]
JOBS = [ingest_dataset_job, rebuild_atlas_job, snapshot_job]

__all__ = [
    "ASSETS",
    "JOBS",
    "dataset_partitions",
    "landing_zone_sensor",
    "nightly_snapshot_schedule",
    "snapshot_partitions",
]
