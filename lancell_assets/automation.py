"""Jobs, the landing-zone sensor and the nightly snapshot schedule."""

import dagster as dg

from lancell_assets.atlas_assets import atlas_snapshot, feature_registry, optimized_atlas
from lancell_assets.datasets import dataset_group
from lancell_assets.partitions import dataset_partitions, snapshot_partitions
from resources import LandingZone

ingest_dataset_job = dg.define_asset_job(
    "ingest_dataset_job", selection=[dataset_group], partitions_def=dataset_partitions
)
rebuild_atlas_job = dg.define_asset_job(
    "rebuild_atlas_job",
    selection=dg.AssetSelection.assets(feature_registry, optimized_atlas),
    description="Re-number the registries and re-optimize every table (datasets are rebuilt per partition).",
)
snapshot_job = dg.define_asset_job(
    "snapshot_job",
    selection=dg.AssetSelection.assets(feature_registry, optimized_atlas, atlas_snapshot).downstream(),
    partitions_def=snapshot_partitions,
)


@dg.sensor(job=ingest_dataset_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZone) -> dg.SensorResult:
    """A new ``.h5ad`` in the landing zone becomes a dataset partition and one ingestion run."""
    known = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    new = [spec.uid for spec in landing_zone.specs() if spec.uid not in known]
    if new:
        context.log.info(f"new landing files: {new}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"dataset:{uid}", partition_key=uid) for uid in new],
        dynamic_partitions_requests=[dataset_partitions.build_add_request(new)] if new else [],
    )


@dg.schedule(job=snapshot_job, cron_schedule="0 2 * * *", execution_timezone="UTC")
def nightly_snapshot_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Every night: re-number, optimize and take a snapshot labelled ``nightly-YYYY-MM-DD``."""
    label = f"nightly-{context.scheduled_execution_time:%Y-%m-%d}"
    context.instance.add_dynamic_partitions(snapshot_partitions.name, [label])
    return dg.RunRequest(run_key=label, partition_key=label)
