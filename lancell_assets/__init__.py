"""Dagster assets, checks, partitions, sensors and jobs of the lancell platform.

Only Dagster is imported here: lancell modules are imported inside the asset bodies and resource methods,
so loading the definitions stays fast (see docs/architecture.md, "Dagster platform").
"""

from lancell_assets.atlas_assets import atlas_snapshot, feature_registry, optimized_atlas
from lancell_assets.automation import (
    atlas_refresh_sensor,
    ingest_dataset_job,
    landing_zone_sensor,
    nightly_snapshot_sensor,
    rebuild_atlas_job,
    snapshot_job,
)
from lancell_assets.datasets import dataset_group
from lancell_assets.geo import geo_series, geo_series_job, geo_series_partitions, geo_series_sensor
from lancell_assets.partitions import dataset_partitions, snapshot_partitions
from lancell_assets.snapshot_sensor import snapshot_partitions_sensor
from lancell_assets.training import cell_type_classifier

ASSETS = [geo_series, dataset_group, feature_registry, optimized_atlas, atlas_snapshot, cell_type_classifier]
JOBS = [geo_series_job, ingest_dataset_job, rebuild_atlas_job, snapshot_job]
SENSORS = [
    geo_series_sensor,
    landing_zone_sensor,
    atlas_refresh_sensor,
    nightly_snapshot_sensor,
    snapshot_partitions_sensor,
]

__all__ = [
    "ASSETS",
    "JOBS",
    "SENSORS",
    "dataset_partitions",
    "geo_series_partitions",
    "landing_zone_sensor",
    "nightly_snapshot_sensor",
    "snapshot_partitions",
    "snapshot_partitions_sensor",
]
