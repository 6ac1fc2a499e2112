"""GEO in the platform: a SOFT file in the landing zone -> geo_series -> landed samples -> datasets."""

import gzip
import shutil
from pathlib import Path

import dagster as dg
import pytest

import definitions
from lancell.atlas import RaggedAtlas
from lancell.ingest.geo import supplementary_key
from lancell_assets import dataset_partitions, geo_series_partitions, landing_zone_sensor
from lancell_assets.geo import geo_series_sensor

DATA = Path(__file__).resolve().parents[2] / "data"
H5_URL = "ftp://ftp.ncbi.nlm.nih.gov/geo/samples/GSM9000nnn/GSM9000011/suppl/GSM9000011_filtered_feature_bc_matrix.h5"
SERIES = f"""^SERIES = GSE900001
!Series_title = Lung single-cell test series
!Series_geo_accession = GSE900001
!Series_sample_id = GSM9000011
!Series_sample_id = GSM9000012
^SAMPLE = GSM9000011
!Sample_title = donor A, lung
!Sample_geo_accession = GSM9000011
!Sample_organism_ch1 = Homo sapiens
!Sample_characteristics_ch1 = age: 45
!Sample_characteristics_ch1 = tissue: lung
!Sample_supplementary_file_1 = {H5_URL}
^SAMPLE = GSM9000012
!Sample_title = donor B, bulk
!Sample_geo_accession = GSM9000012
!Sample_organism_ch1 = Homo sapiens
!Sample_characteristics_ch1 = age: 61
!Sample_characteristics_ch1 = tissue: blood
!Sample_supplementary_file_1 = NONE
"""
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def test_soft_file_to_dataset_partitions(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / supplementary_key(H5_URL)).parent.mkdir(parents=True)
    shutil.copy(DATA / "10x_v3" / "filtered_feature_bc_matrix.h5", mirror / supplementary_key(H5_URL))
    (tmp_path / "landing" / "geo").mkdir(parents=True)
    (tmp_path / "landing" / "geo" / "GSE900001_family.soft").write_text(SERIES)
    monkeypatch.setenv("LANCELL_GEO_MIRROR", mirror.as_uri())
    defs = definitions.build_definitions(tmp_path)
    assets = list(defs.assets)
    with dg.instance_for_test() as instance:
        result = geo_series_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
        assert [r.partition_key for r in result.run_requests] == ["GSE900001"]
        instance.add_dynamic_partitions(geo_series_partitions.name, ["GSE900001"])
        landed = dg.materialize(
            assets,
            selection=["geo_series"],
            partition_key="GSE900001",
            instance=instance,
            resources=defs.resources,
            run_config=QUIET,
        )
        samples = landed.asset_materializations_for_node("geo_series")[0].metadata["samples"].value
        assert samples == ["GSM9000011"]  # the bulk sample has no 10x file
        again = geo_series_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
        assert again.run_requests == []

        found = landing_zone_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
        assert [r.partition_key for r in found.run_requests] == ["GSM9000011"]
        instance.add_dynamic_partitions(dataset_partitions.name, ["GSM9000011"])
        ingested = dg.materialize(
            assets,
            selection=["dataset_group"],
            partition_key="GSM9000011",
            instance=instance,
            resources=defs.resources,
            run_config=QUIET,
        )
        assert all(c.passed for c in ingested.get_asset_check_evaluations())
    atlas = RaggedAtlas.open(str(tmp_path / "db"))
    record = atlas.list_datasets().set_index("uid").loc["GSM9000011"]
    assert record["accession"] == "GSM9000011" and record["source"] == H5_URL
    assert record["n_cells"] == 1107
    assert atlas.query().where("organism = 'Homo sapiens'").count() == 1107


def test_a_soft_file_dropped_again_or_changed_gets_a_run_and_a_missing_one_a_typed_error(tmp_path):
    """The series sensor ran each key once: a SOFT file dropped again after its run failed (its mirror
    lacked a file), or changed, got no run; a removed one failed with a bare KeyError; GSE_family.soft and
    .soft.gz gave one key silently."""
    from lancell.errors import GeoError

    geo = tmp_path / "landing" / "geo"
    geo.mkdir(parents=True)
    soft = geo / "GSE900001_family.soft"
    soft.write_text(SERIES)
    defs = definitions.build_definitions(tmp_path)
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None) -> dg.SensorResult:
            context = dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor)
            result = geo_series_sensor(context)
            for request in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            return result

        first = tick(None)
        assert [r.partition_key for r in first.run_requests] == ["GSE900001"]
        assert tick(first.cursor).run_requests == []
        soft.write_text(SERIES.replace("donor A", "donor A, corrected"))  # a new landing of the series
        changed = tick(first.cursor)
        assert [r.partition_key for r in changed.run_requests] == ["GSE900001"]
        assert changed.run_requests[0].run_key != first.run_requests[0].run_key
        (geo / "GSE900001_family.soft.gz").write_bytes(gzip.compress(SERIES.encode()))
        conflicted = tick(changed.cursor)
        assert conflicted.run_requests == []
        assert defs.resources["landing_zone"].soft_conflicts() == {
            "GSE900001": ["GSE900001_family.soft", "GSE900001_family.soft.gz"]
        }
        for name in ("GSE900001_family.soft", "GSE900001_family.soft.gz"):
            (geo / name).unlink()
        with pytest.raises(GeoError, match=r"series GSE900001: no SOFT file for it in .*/geo/"):
            dg.materialize(
                list(defs.assets),
                selection=["geo_series"],
                partition_key="GSE900001",
                instance=instance,
                resources=defs.resources,
                run_config=QUIET,
            )
