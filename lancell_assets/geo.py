"""GEO series as a data product: SOFT file + mirrored supplementary 10x files -> landed dataset files.

``geo_series`` (one partition per series) writes one ``<GSM>.h5ad`` + sidecar per sample into the landing
zone; the landing-zone sensor then turns each into a ``dataset_group`` partition like any other file.
"""

import dagster as dg

from lancell_assets.metadata import OWNERS
from resources import LandingZone

geo_series_partitions = dg.DynamicPartitionsDefinition(name="lancell_geo_series")


@dg.asset(partitions_def=geo_series_partitions, group_name="ingest", kinds={"geo"}, owners=OWNERS)
def geo_series(context: dg.AssetExecutionContext, landing_zone: LandingZone) -> dg.MaterializeResult:
    """The landing files of one GEO series (one per sample with a 10x supplementary file)."""
    from lancell.ingest.geo_landing import land_geo_series

    soft = landing_zone.soft_files()[context.partition_key]
    landed = land_geo_series(soft, landing_zone.path, mirror=landing_zone.geo_mirror)
    context.log.info(f"{context.partition_key}: landed {landed}")
    return dg.MaterializeResult(
        metadata={"samples": dg.MetadataValue.json(landed), "soft_file": dg.MetadataValue.path(str(soft))}
    )


geo_series_job = dg.define_asset_job(
    "geo_series_job",
    selection=[geo_series],
    description="Land one GEO series' samples as .h5ad files (the landing-zone sensor ingests them).",
)


@dg.sensor(job=geo_series_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def geo_series_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZone) -> dg.SensorResult:
    """A SOFT file dropped into ``<landing>/geo/`` becomes a series partition and one landing run."""
    known = set(context.instance.get_dynamic_partitions(geo_series_partitions.name))
    new = [key for key in landing_zone.soft_files() if key not in known]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"geo:{key}", partition_key=key) for key in new],
        dynamic_partitions_requests=[geo_series_partitions.build_add_request(new)] if new else [],
    )
