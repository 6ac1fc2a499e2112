"""Jobs, the landing-zone sensor and the nightly snapshot sensor.

Sensors add dynamic partitions only through the result they return (``SensorResult``'s
``dynamic_partitions_requests``), which Dagster applies when it commits the tick: evaluating or previewing
a sensor in the UI changes nothing on the instance.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from lancell_assets.atlas_assets import atlas_snapshot, feature_registry, optimized_atlas
from lancell_assets.datasets import dataset_group
from lancell_assets.partitions import dataset_partitions, snapshot_partitions
from resources import LandingZone

ingest_dataset_job = dg.define_asset_job(
    "ingest_dataset_job",
    selection=[dataset_group],
    description="Ingest one landed file as a dataset partition (launched by the landing-zone sensor).",
)
rebuild_atlas_job = dg.define_asset_job(
    "rebuild_atlas_job",
    selection=dg.AssetSelection.assets(feature_registry, optimized_atlas),
    description="Re-number the registries and re-optimize every table (datasets are rebuilt per partition).",
)
snapshot_job = dg.define_asset_job(
    "snapshot_job",
    selection=dg.AssetSelection.assets(feature_registry, optimized_atlas, atlas_snapshot).downstream(),
    description="Re-number, optimize, take the snapshot named by the partition and train on it.",
)

NIGHTLY_HOUR_UTC = 2
NIGHTLY_ATTEMPTS = 3  # runs of one night's snapshot, the first included


@dg.sensor(job=ingest_dataset_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZone) -> dg.SensorResult:
    """Each new ``.h5ad`` in the landing zone becomes a dataset partition and one ingestion run.

    Files are read one by one: a file whose sidecar is malformed still gets its partition and run, which
    fails naming the sidecar's problem; every other file proceeds. Fix the sidecar, then re-materialize
    that partition (a sidecar fixed to name another uid makes a new partition; the old one, never
    ingested, is removed).
    """
    known = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    entries = landing_zone.entries()
    new = [entry for entry in entries if entry.uid not in known]
    for entry in entries:
        if entry.error is not None and (entry.uid not in known or entry.shared_uid):
            context.log.warning(f"{entry.path.name}: {entry.error} (its run fails; other files proceed)")
    uids = list(dict.fromkeys(entry.uid for entry in new))
    if uids:
        context.log.info(f"new landing files: {uids}")
    # a partition no landing file names any more and never materialized (its sidecar now names another uid,
    # or its file was removed before it was ingested) goes; an ingested one stays, file or not
    materialized = context.instance.get_materialized_partitions(dataset_group.key)
    # an empty listing (a volume not mounted) removes nothing
    stale = sorted(known - {entry.uid for entry in entries} - materialized) if entries else []
    if stale:
        context.log.info(f"partitions without a landing file, never ingested, removed: {stale}")
    requests = [dataset_partitions.build_add_request(uids)] if uids else []
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"dataset:{uid}", partition_key=uid) for uid in uids],
        dynamic_partitions_requests=requests
        + ([dataset_partitions.build_delete_request(stale)] if stale else []),
    )


def nightly_label(now: datetime) -> str:
    """``nightly-YYYY-MM-DD`` of the latest nightly tick (02:00 UTC) at or before ``now``."""
    return f"nightly-{(now.astimezone(UTC) - timedelta(hours=NIGHTLY_HOUR_UTC)):%Y-%m-%d}"


@dg.sensor(job=snapshot_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED)
def nightly_snapshot_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Every night after 02:00 UTC: re-number, optimize and take a snapshot labelled ``nightly-YYYY-MM-DD``.

    A sensor rather than a schedule because a schedule cannot add the snapshot partition through its
    result. Started, it takes the latest tick's snapshot if that partition does not exist yet; a night whose
    run failed (or was cancelled) is run again at the next evaluation, up to ``NIGHTLY_ATTEMPTS`` runs.
    """
    label = nightly_label(datetime.now(UTC))
    instance = context.instance
    if not instance.has_dynamic_partition(snapshot_partitions.name, label):
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=label, partition_key=label)],
            dynamic_partitions_requests=[snapshot_partitions.build_add_request([label])],
        )
    if label in instance.get_materialized_partitions(atlas_snapshot.key):
        return dg.SkipReason(f"snapshot {label!r} was taken")
    runs = instance.get_runs(dg.RunsFilter(job_name=snapshot_job.name, tags={"dagster/partition": label}))
    if any(not run.is_finished for run in runs):
        return dg.SkipReason(f"snapshot {label!r} is being taken")
    attempts = sum(run.status != dg.DagsterRunStatus.SUCCESS for run in runs)
    if attempts >= NIGHTLY_ATTEMPTS:
        return dg.SkipReason(
            f"snapshot {label!r} failed {attempts} times; not retried (run snapshot_job for it once fixed)"
        )
    context.log.warning("snapshot %s: %d failed run(s); running it again", label, attempts)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"{label}:retry-{attempts}", partition_key=label)]
    )
