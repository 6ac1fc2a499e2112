"""GEO series as a data product: SOFT file + mirrored supplementary 10x files -> landed dataset files.

``geo_series`` (one partition per series) writes one ``<GSM>.h5ad`` + sidecar per sample into the landing
zone; the landing-zone sensor then turns each into a ``dataset_group`` partition like any other file.
"""

import json

import dagster as dg

from lancell_assets.metadata import OWNERS
from lancell_assets.warnings_log import logged_warnings
from resources import LandingZone

geo_series_partitions = dg.DynamicPartitionsDefinition(name="lancell_geo_series")


@dg.asset(
    partitions_def=geo_series_partitions,
    group_name="ingest",
    kinds={"geo"},
    owners=OWNERS,
    pool="geo_landing",  # one series at a time: a SuperSeries and its SubSeries share samples
)
def geo_series(context: dg.AssetExecutionContext, landing_zone: LandingZone) -> dg.MaterializeResult:
    """The landing files of one GEO series (one per sample with a 10x supplementary file).

    Raises
    ------
    lancell.errors.GeoError
        No SOFT file in ``<landing>/geo/`` gives the partition's series key any more, or several do.
    """
    from lancell.errors import GeoError
    from lancell.ingest.geo_landing import land_geo_series

    key = context.partition_key
    if key in landing_zone.soft_conflicts():
        raise GeoError(f"series {key}: several SOFT files give it: {landing_zone.soft_conflicts()[key]}")
    soft = landing_zone.soft_files().get(key)
    if soft is None:
        raise GeoError(f"series {key}: no SOFT file for it in {landing_zone.path}/geo/ (removed?)")
    with logged_warnings(context) as warned:  # (samples left out: no 10x file, ...)
        landed = land_geo_series(soft, landing_zone.path, mirror=landing_zone.geo_mirror)
    context.log.info(f"{key}: landed {landed}")
    metadata = {"samples": dg.MetadataValue.json(landed), "soft_file": dg.MetadataValue.path(str(soft))}
    return dg.MaterializeResult(
        metadata=metadata | ({"warnings": dg.MetadataValue.json(warned)} if warned else {})
    )


geo_series_job = dg.define_asset_job(
    "geo_series_job",
    selection=[geo_series],
    description="Land one GEO series' samples as .h5ad files (the landing-zone sensor ingests them).",
)


@dg.sensor(job=geo_series_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def geo_series_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZone) -> dg.SensorResult:
    """Each new landing of a SOFT file in ``<landing>/geo/`` (a new file, or one copied in again or changed:
    ``touch`` it, a file moved out and back is the same file) is one landing run of its series partition; a
    new series key is added as a partition first. A run lands the samples not landed yet (a series whose
    run failed, once its mirror holds the files); samples already landed keep their files (a correction of
    their metadata does not reach them: warned, see :func:`lancell.ingest.geo_landing.land_geo_series`).
    The cursor holds each key's stamp (:meth:`LandingZone.soft_stamp`); a key the cursor does not know yet
    (the sensor's first tick) with a partition already gets no run. Keys that two files give are named
    (warning) and not run.
    """
    known = set(context.instance.get_dynamic_partitions(geo_series_partitions.name))
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    stamps = {}
    for key, path in landing_zone.soft_files().items():
        try:
            stamps[key] = landing_zone.soft_stamp(path)
        except FileNotFoundError:  # removed since the listing: not landed any more
            continue
    new = [key for key in stamps if key not in known]
    changed = [key for key in stamps if key in known and seen.get(key, stamps[key]) != stamps[key]]
    conflicts = landing_zone.soft_conflicts()
    if conflicts:
        context.log.warning(f"GEO series given by several SOFT files, not landed: {conflicts}")
    runs = [dg.RunRequest(run_key=f"geo:{key}:{stamps[key]}", partition_key=key) for key in new + changed]
    return dg.SensorResult(
        run_requests=runs,
        skip_reason=None if runs else "no new or changed SOFT file",
        cursor=json.dumps(seen | stamps, sort_keys=True),
        dynamic_partitions_requests=[geo_series_partitions.build_add_request(new)] if new else [],
    )
