"""Jobs, the landing-zone sensor, the sensor refreshing the registry and the optimized tables, and the nightly
snapshot sensor.

Sensors add dynamic partitions only through the result they return (``SensorResult``'s
``dynamic_partitions_requests``), which Dagster applies when it commits the tick: evaluating or previewing
a sensor in the UI changes nothing on the instance.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from lancell_assets.atlas_assets import atlas_snapshot, feature_registry, optimized_atlas
from lancell_assets.datasets import dataset_group
from lancell_assets.duplicates import stale_duplicates
from lancell_assets.partitions import dataset_partitions, snapshot_partitions
from lancell_assets.snapshot_sensor import deleted_labels
from lancell_assets.training import cell_type_classifier
from resources import AtlasResource, LandingZone
from resources.landing import LandingEntry

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

# Dagster creates its default automation sensor stopped: the registry and the optimized tables would not
# refresh after new datasets, as the README says they do, until someone switched it on in the UI
atlas_refresh_sensor = dg.AutomationConditionSensorDefinition(
    "atlas_refresh_sensor",
    target=dg.AssetSelection.assets(feature_registry, optimized_atlas),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Refreshes feature_registry and optimized_atlas after new datasets (their eager conditions).",
)

NIGHTLY_HOUR_UTC = 2
NIGHTLY_ATTEMPTS = 3  # runs of one night's snapshot, the first included


@dg.sensor(job=ingest_dataset_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_zone_sensor(
    context: dg.SensorEvaluationContext, landing_zone: LandingZone, atlas: AtlasResource
) -> dg.SensorResult | dg.SkipReason:
    """Each new landing of an ``.h5ad`` (a new file, or a file or sidecar landed again or changed) is one
    ingestion run of its dataset partition; a new dataset uid is added as a partition first.

    Files are read one by one: a file whose sidecar is malformed still gets its partition and run, which
    fails naming the sidecar's problem; every other file proceeds. Fixing the sidecar is a new landing: its
    run follows (a sidecar fixed to name another uid makes a new partition; the old one, never ingested, is
    removed). A partition that is already ingested and whose file changes gets a run that compares the file
    with the one ingested (``dataset_group``). The cursor holds a digest of each partition's landing stamps
    (``LandingEntry.stamp``); a partition the cursor does not know yet (the sensor's first tick) is recorded
    without a run. A missing
    landing folder is a skip naming it; entries that are not landing files are named (warning and skip).
    """
    from lancell.errors import IngestError

    try:
        entries, ignored = landing_zone.entries(), landing_zone.ignored()
    except IngestError as exc:
        context.log.warning(f"{exc}; nothing is requested")
        return dg.SkipReason(str(exc))
    known = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    stamps = _stamps(entries)
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    new = [uid for uid in stamps if uid not in known]
    changed = [uid for uid in stamps if uid in known and seen.get(uid, stamps[uid]) != stamps[uid]]
    for entry in entries:
        if entry.error is not None and (entry.uid in new or entry.uid in changed or entry.shared_uid):
            context.log.warning(f"{entry.path.name}: {entry.error} (its run fails; other files proceed)")
    if new:
        context.log.info(f"new landing files: {new}")
    if changed:
        context.log.info(f"landing files landed again or changed: {changed}")
    skip = None
    if ignored:
        skip = (
            f"landing folder {landing_zone.path}: not landing files, ignored: {ignored} (a landing file is "
            "an .h5ad, a Cell Ranger .h5 or a 10x Matrix Market folder, with an optional <stem>.json "
            "sidecar: convert other formats to .h5ad first)"
        )
        context.log.warning(skip)
    # a partition no landing file names any more and never materialized (its sidecar now names another uid,
    # or its file was removed before it was ingested) goes; an ingested one stays, file or not
    materialized = context.instance.get_materialized_partitions(dataset_group.key)
    # an empty listing (a volume not mounted) removes nothing
    stale = _not_ingested(context, atlas, sorted(known - set(stamps) - materialized)) if entries else []
    if stale:
        context.log.info(f"partitions without a landing file, never ingested, to remove: {stale}")
    requests = [dataset_partitions.build_add_request(new)] if new else []
    runs = [dg.RunRequest(run_key=f"dataset:{uid}:{stamps[uid]}", partition_key=uid) for uid in new + changed]
    runs += _duplicate_runs(context)
    # a partition's last stamp stays while its file is gone, so that a file landing again gets a run
    cursor = {uid: stamp for uid, stamp in seen.items() if uid in known and uid not in stale} | stamps
    if not runs:  # (a tick with no reason reads "Sensor function returned an empty result")
        done = [f"no new or changed landing file ({len(stamps)} in {landing_zone.path})"]
        done += [f"partitions without a file, never ingested, removed: {stale}"] if stale else []
        skip = "; ".join(done + ([skip] if skip else []))
    return dg.SensorResult(
        run_requests=runs,
        skip_reason=None if runs else skip,
        cursor=json.dumps(cursor, sort_keys=True),
        dynamic_partitions_requests=requests
        + ([dataset_partitions.build_delete_request(stale)] if stale else []),
    )


def _not_ingested(context: dg.SensorEvaluationContext, atlas: AtlasResource, uids: list[str]) -> list[str]:
    """``uids`` (partitions never materialized) of which the atlas holds no dataset: a run stopped once its
    dataset was committed (killed during its checks) recorded no materialization, yet ingested it."""
    from lancell.errors import AtlasNotFoundError, LancellError

    if not uids:
        return uids
    try:
        held = atlas.dataset_uids()
    except AtlasNotFoundError:  # (no atlas yet: nothing was ingested)
        return uids
    except LancellError as exc:
        context.log.warning(
            f"partitions {uids} are kept: the atlas cannot be read to tell whether they hold datasets ({exc})"
        )
        return []
    if kept := [uid for uid in uids if uid in held]:
        context.log.info(
            f"partitions without a landing file whose datasets the atlas holds (a run stopped before it "
            f"recorded them), kept: {kept}"
        )
    return [uid for uid in uids if uid not in held]


def _duplicate_runs(context: dg.SensorEvaluationContext) -> list[dg.RunRequest]:
    """A run of each partition whose content was that of a dataset ingested anew since
    (:mod:`lancell_assets.duplicates`): it ingests the content, or finds it a duplicate again (a run whose
    landing file is gone fails naming it). Once per such ingestion, and only after it, so the dataset's own
    run is never overtaken (its content would then land as this partition's)."""
    runs = [
        dg.RunRequest(run_key=f"dataset:{uid}:after:{original}:{storage_id}", partition_key=uid)
        for uid, (original, storage_id) in sorted(
            stale_duplicates(context.instance, dataset_group.key).items()
        )
    ]
    if runs:
        context.log.info(
            f"duplicates of datasets ingested anew, run again: {[run.partition_key for run in runs]}"
        )
    return runs


def _stamps(entries: list[LandingEntry]) -> dict[str, str]:
    """``{dataset uid: digest of the stamps of the files that land as it}`` (``LandingEntry.stamp``)."""
    files: dict[str, list[str]] = {}
    for entry in entries:
        files.setdefault(entry.uid, []).append(entry.stamp)
    return {uid: hashlib.blake2b(" ".join(p).encode(), digest_size=8).hexdigest() for uid, p in files.items()}


def nightly_label(now: datetime) -> str:
    """``nightly-YYYY-MM-DD`` of the latest nightly tick (02:00 UTC) at or before ``now``."""
    return f"nightly-{(now.astimezone(UTC) - timedelta(hours=NIGHTLY_HOUR_UTC)):%Y-%m-%d}"


@dg.sensor(job=snapshot_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED)
def nightly_snapshot_sensor(
    context: dg.SensorEvaluationContext, atlas: AtlasResource
) -> dg.SensorResult | dg.SkipReason:
    """Every night after 02:00 UTC: re-number, optimize, take a snapshot labelled ``nightly-YYYY-MM-DD`` and
    train on it.

    A sensor rather than a schedule because a schedule cannot add the snapshot partition through its
    result. Started, it takes the latest tick's snapshot if that partition does not exist yet. A night is
    done when a run of the whole ``snapshot_job`` for it succeeded: a night whose run failed (or was
    cancelled), in any step (training included, after the snapshot was taken), is run again at the next
    evaluation, up to ``NIGHTLY_ATTEMPTS`` runs; a run of part of the job (``take_snapshot --no-train``)
    neither does the night nor counts as one of them.
    """
    label = nightly_label(datetime.now(UTC))
    instance = context.instance
    if not instance.has_dynamic_partition(snapshot_partitions.name, label):
        if label in deleted_labels(atlas):  # taken, then deleted: its label is never given again
            return dg.SkipReason(f"snapshot {label!r} was taken and deleted: not taken again")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=label, partition_key=label)],
            dynamic_partitions_requests=[snapshot_partitions.build_add_request([label])],
        )
    runs = instance.get_runs(dg.RunsFilter(job_name=snapshot_job.name, tags={"dagster/partition": label}))
    if any(not run.is_finished for run in runs):
        return dg.SkipReason(f"snapshot {label!r} is being taken")
    # only a run that trained did the night: one of a subset without training (take_snapshot --no-train)
    # did not (a run of the whole job records no selection, or an empty one)
    trained = cell_type_classifier.key
    whole = [run for run in runs if not run.asset_selection or trained in run.asset_selection]
    succeeded = [run.run_id for run in whole if run.status == dg.DagsterRunStatus.SUCCESS]
    if succeeded:
        return dg.SkipReason(f"snapshot {label!r} was taken (run {succeeded[0]} succeeded)")
    attempts = len(whole)  # every one finished, none succeeded
    if attempts >= NIGHTLY_ATTEMPTS:
        return dg.SkipReason(
            f"snapshot {label!r} failed {attempts} times; not retried (run snapshot_job for it once fixed)"
        )
    if len(runs) > attempts:
        context.log.info("snapshot %s: runs of part of the job only; running the whole job", label)
    if attempts:
        context.log.warning("snapshot %s: %d failed run(s); running it again", label, attempts)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"{label}:retry-{len(runs)}", partition_key=label)]
    )
