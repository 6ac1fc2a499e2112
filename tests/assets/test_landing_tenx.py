"""A 10x output in the landing zone is a dataset partition like an ``.h5ad``: ingested with its checks
green (its cells counted from its barcodes), compared with the file it was ingested from when it is
materialized again (a Matrix Market folder whose matrix changed fails ``content_matches``)."""

import shutil
from pathlib import Path

import dagster as dg
from test_landing_present import FINE, checks, failure, ingest
from test_landing_sensor import DATA, tick

import definitions
from lancell.atlas import RaggedAtlas


def test_a_10x_h5_and_folder_land_as_datasets_and_are_compared_again(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copyfile(DATA / "10x_v3" / "filtered_feature_bc_matrix.h5", landing / "s1.h5")
    shutil.copytree(DATA / "10x_v2" / "hg19_chr21", landing / "s2")
    defs = definitions.build_definitions(tmp_path)
    with dg.instance_for_test() as instance:
        assert sorted(r.partition_key for r in tick(defs, instance).run_requests) == ["s1", "s2"]
        for uid, cells in (("s1", 1107), ("s2", 12)):
            done = ingest(defs, instance, uid)
            assert done.success and checks(done) == FINE | {"content_matches": True}
            meta = done.asset_materializations_for_node("dataset_group")[0].metadata
            assert meta["dagster/row_count"].value == cells and meta["outcome"].value == "ingested"
        atlas = RaggedAtlas.open(str(tmp_path / "db"))
        assert atlas.query().count() == 1119 and atlas.validate() == []
        again = ingest(defs, instance, "s2")
        assert again.success and checks(again) == FINE | {"content_matches": True}
        matrix = landing / "s2" / "matrix.mtx"
        lines = matrix.read_text().splitlines()
        row, column, value = lines[-1].split()
        lines[-1] = f"{row} {column} {int(value) + 1}"
        matrix.write_text("\n".join(lines) + "\n")
        changed = ingest(defs, instance, "s2")
        assert not changed.success and checks(changed) == FINE | {"content_matches": False}
        assert failure(changed).description.startswith("dataset s2 is in the atlas (left as it was), but ")


def test_a_bad_sidecar_keeps_the_partition_its_file_lands_as(tmp_path: Path) -> None:
    """A 10x output under Cell Ranger's own name whose sidecar could not be read got its file stem as
    partition, another than once the sidecar is fixed."""
    from resources.landing import LandingZone

    zone = tmp_path / "run3"
    zone.mkdir()
    shutil.copyfile(DATA / "10x_v3" / "filtered_feature_bc_matrix.h5", zone / "filtered_feature_bc_matrix.h5")
    (zone / "filtered_feature_bc_matrix.json").write_text("{not json")
    [broken] = LandingZone(path=str(zone)).entries()
    (zone / "filtered_feature_bc_matrix.json").write_text('{"organism": "Homo sapiens"}')
    [fixed] = LandingZone(path=str(zone)).entries()
    assert broken.error is not None and fixed.error is None
    assert broken.uid == fixed.uid == "run3"


def test_what_the_library_warns_was_not_stored_is_in_the_runs_log_and_metadata(tmp_path: Path) -> None:
    """A CITE-seq run's antibody features, left out for want of a feature space, were named on stderr only:
    the run was green with nothing in its event log or metadata."""
    import h5py
    import numpy as np

    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copyfile(DATA / "10x_v3" / "filtered_feature_bc_matrix.h5", landing / "cite1.h5")
    with h5py.File(landing / "cite1.h5", "r+") as f:  # the last 20 features: antibodies
        types = f["matrix/features/feature_type"][:].astype("S16")
        types[-20:] = b"Antibody Capture"
        del f["matrix/features/feature_type"]
        f["matrix/features/feature_type"] = np.array(types, dtype="S16")
    defs = definitions.build_definitions(tmp_path)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("lancell_datasets", ["cite1"])
        done = ingest(defs, instance, "cite1")
        assert done.success
        told = "20 'Antibody Capture' features (1536 nonzero values) not stored"
        meta = done.asset_materializations_for_node("dataset_group")[0].metadata
        assert [told in message for message in meta["warnings"].value] == [True]
        logged = [r.user_message for r in instance.all_logs(done.run_id) if told in (r.user_message or "")]
        assert len(logged) == 1
