"""The landing-zone and nightly sensors tell what they see: a re-landed or changed file gets a run (with a run
key of its own), an unchanged one none; a missing landing folder and entries the zone does not pick up are
named; a night counts as done only when its run succeeded."""

import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import anndata as ad
import dagster as dg
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import apply_partition_requests

import definitions
from lancell.errors import IngestError
from lancell.ingest.landing import landing_files
from lancell_assets import duplicates, landing_zone_sensor, nightly_snapshot_sensor, snapshot_partitions
from lancell_assets.automation import nightly_label

DATA = Path(__file__).resolve().parents[2] / "data"


def write_h5ad(path: Path, seed: int = 0, n_cells: int = 20) -> None:
    """A small counts file (20 cells x 8 genes)."""
    genes = [f"G{i}" for i in range(8)]
    x = sp.random(n_cells, len(genes), density=0.4, format="csr", random_state=seed, dtype=np.float32)
    x.data = np.floor(x.data * 10) + 1
    obs = pd.DataFrame(index=[f"c{seed}_{i}" for i in range(n_cells)])
    ad.AnnData(X=x, obs=obs, var=pd.DataFrame({"gene_symbol": genes}, index=genes)).write_h5ad(path)


def tick(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None
) -> dg.SensorResult | dg.SkipReason:
    """Evaluate the landing sensor and commit its partition changes, as the daemon does."""
    context = dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor)
    result = landing_zone_sensor(context)
    apply_partition_requests(instance, result)
    return result


@pytest.fixture
def zone(tmp_path: Path):
    """``(defs, instance, landing)`` over an empty landing folder."""
    (tmp_path / "landing").mkdir()
    with dg.instance_for_test() as instance:
        yield definitions.build_definitions(tmp_path), instance, tmp_path / "landing"


def test_a_relanded_file_gets_a_run_key_of_its_own_and_an_unchanged_file_no_run(zone):
    """The run key was ``dataset:<uid>``: a file landed again after its failed first run got the key the
    failed run had used, so the daemon skipped its run, and the partition was never ingested."""
    defs, instance, landing = zone
    write_h5ad(landing / "x.h5ad", seed=1)
    (landing / "x.json").write_text(json.dumps({"zarr_layr": "counts"}))  # its run fails
    write_h5ad(landing / "other.h5ad", seed=2)
    first = tick(defs, instance)
    (failed_key,) = [r.run_key for r in first.run_requests if r.partition_key == "x"]
    (landing / "x.h5ad").unlink()
    (landing / "x.json").unlink()
    gone = tick(defs, instance, first.cursor)  # never ingested, no file: its partition goes
    assert [(type(r).__name__, list(r.partition_keys)) for r in gone.dynamic_partitions_requests] == [
        ("DeleteDynamicPartitionsRequest", ["x"])
    ]
    write_h5ad(landing / "x.h5ad", seed=3)
    relanded = tick(defs, instance, gone.cursor)
    assert [r.partition_key for r in relanded.run_requests] == ["x"]
    assert relanded.run_requests[0].run_key != failed_key
    unchanged = tick(defs, instance, relanded.cursor)
    assert unchanged.run_requests == []
    # a known partition whose sidecar changes (fixed, say) gets one run, with a new key
    (landing / "x.json").write_text(json.dumps({"name": "fixed"}))
    fixed = tick(defs, instance, unchanged.cursor)
    assert [r.partition_key for r in fixed.run_requests] == ["x"]
    assert fixed.run_requests[0].run_key not in {failed_key, relanded.run_requests[0].run_key}
    for path in landing.iterdir():  # a permission pass (an fsGroup mount, a backup tool) changes no file
        path.chmod(path.stat().st_mode)
    assert tick(defs, instance, fixed.cursor).run_requests == []
    # a sensor started on partitions it has no cursor for yet runs nothing again
    assert tick(defs, instance).run_requests == []


@pytest.mark.parametrize("where", ["missing", "a file"])
def test_a_missing_landing_folder_is_a_skip_naming_it(zone, monkeypatch, capfd, where):
    """A landing folder that does not exist (a typo, a volume not mounted) looked like an empty one."""
    _, instance, landing = zone
    write_h5ad(landing / "a.h5ad")
    path = landing.parent / "landng" if where == "missing" else landing / "a.h5ad"
    monkeypatch.setenv("LANCELL_LANDING", str(path))
    defs = definitions.build_definitions(landing.parent)
    result = tick(defs, instance)
    assert isinstance(result, dg.SkipReason)
    assert f"landing folder {path} does not exist or is not a folder" in result.skip_message
    assert f"WARNING - landing folder {path} does not exist" in capfd.readouterr().err
    with pytest.raises(IngestError, match="does not exist or is not a folder"):  # the library's listing
        landing_files(path)


def test_entries_the_zone_does_not_pick_up_are_named(zone, capfd):
    """A stray file or a sidecar without its file dropped in the landing folder got no partition and no
    word; an ``.H5AD`` in upper case was left out too. A 10x output (a Cell Ranger ``.h5``, a Matrix Market
    folder) is a landing file."""
    defs, instance, landing = zone
    write_h5ad(landing / "control.h5ad", seed=1)
    write_h5ad(landing / "UPPER.H5AD", seed=2)
    shutil.copyfile(DATA / "10x_v3" / "filtered_feature_bc_matrix.h5", landing / "s1.h5")
    shutil.copytree(DATA / "10x_v3" / "filtered_feature_bc_matrix", landing / "s2_matrix")
    (landing / "notes.txt").write_text("QC later")
    (landing / "orphan.json").write_text("{}")  # a sidecar without its file
    # in progress (a GEO landing's .part, an upload's hidden temporary file) and GEO's own folder: no word
    (landing / "GSM1.h5ad.part").write_bytes(b"")
    (landing / ".upload.h5ad.tmp").write_bytes(b"")
    (landing / ".hidden.h5ad").write_bytes(b"")
    (landing / "geo").mkdir()
    first = tick(defs, instance)
    landed = ["UPPER", "control", "s1", "s2_matrix"]
    assert sorted(r.partition_key for r in first.run_requests) == landed
    assert [spec.uid for spec in landing_files(landing)] == landed
    ignored = "['notes.txt', 'orphan.json']"
    assert (
        f"WARNING - landing folder {landing}: not landing files, ignored: {ignored}" in capfd.readouterr().err
    )
    second = tick(defs, instance, first.cursor)
    assert second.run_requests == []
    assert second.skip_reason.skip_message.startswith(f"no new or changed landing file (4 in {landing}); ")
    assert f"not landing files, ignored: {ignored}" in second.skip_reason.skip_message
    barcodes = landing / "s2_matrix" / "barcodes.tsv.gz"
    barcodes.write_bytes(barcodes.read_bytes())
    third = tick(defs, instance, second.cursor)  # a file of a folder landed again: the folder's run
    assert [r.partition_key for r in third.run_requests] == ["s2_matrix"]


def _night_run(
    instance: dg.DagsterInstance,
    label: str,
    status: dg.DagsterRunStatus,
    asset_selection: frozenset[dg.AssetKey] | None = None,
) -> None:
    instance.add_run(
        dg.DagsterRun(
            job_name="snapshot_job",
            run_id=str(uuid.uuid4()),
            status=status,
            tags={"dagster/partition": label},
            asset_selection=asset_selection,
        )
    )


def test_a_night_whose_training_failed_runs_again(zone):
    """The snapshot of the night was materialized but its run failed later (training): the sensor took the
    night as done and never ran it again."""
    defs, instance, _ = zone
    label = nightly_label(datetime.now(UTC))
    instance.add_dynamic_partitions(snapshot_partitions.name, [label])
    instance.report_runless_asset_event(dg.AssetMaterialization("atlas_snapshot", partition=label))
    _night_run(instance, label, dg.DagsterRunStatus.FAILURE)
    retry = nightly_snapshot_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert [(r.run_key, r.partition_key) for r in retry.run_requests] == [(f"{label}:retry-1", label)]
    _night_run(instance, label, dg.DagsterRunStatus.SUCCESS)
    done = nightly_snapshot_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert isinstance(done, dg.SkipReason) and f"snapshot {label!r} was taken" in done.skip_message


def test_a_night_snapshotted_without_training_is_not_done(zone):
    """``take_snapshot --no-train`` for tonight's label succeeded: the sensor took the night as done and its
    classifier was never trained. A run of part of the job is neither the night nor one of its attempts."""
    defs, instance, _ = zone
    label = nightly_label(datetime.now(UTC))
    instance.add_dynamic_partitions(snapshot_partitions.name, [label])
    untrained = frozenset(dg.AssetKey(n) for n in ("feature_registry", "optimized_atlas", "atlas_snapshot"))
    _night_run(instance, label, dg.DagsterRunStatus.SUCCESS, untrained)
    whole = nightly_snapshot_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert [(r.run_key, r.partition_key) for r in whole.run_requests] == [(f"{label}:retry-1", label)]
    for _ in range(2):
        _night_run(instance, label, dg.DagsterRunStatus.FAILURE)
    third = nightly_snapshot_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert [r.run_key for r in third.run_requests] == [f"{label}:retry-3"]  # two attempts of three so far
    # a run of the whole job in this process (take_snapshot) records an empty selection
    _night_run(instance, label, dg.DagsterRunStatus.SUCCESS, frozenset())
    done = nightly_snapshot_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert isinstance(done, dg.SkipReason) and f"snapshot {label!r} was taken" in done.skip_message


def test_partitions_beyond_one_fetch_of_the_event_log_are_read_in_pages(zone, monkeypatch):
    """Dagster returns at most 10,000 event records a fetch: the 10,001st materialized dataset partition made
    the landing sensor raise on every tick (and the snapshot's check of datasets still in the atlas)."""
    _, instance, _ = zone
    key = dg.AssetKey("dataset_group")
    partitions = [f"p{i}" for i in range(7)]
    instance.add_dynamic_partitions("lancell_datasets", partitions)
    for i, partition in enumerate(partitions):
        for attempt in range(2):  # the latest of each is the one read
            metadata = {"outcome": "ingested", "attempt": attempt, "i": i}
            instance.report_runless_asset_event(
                dg.AssetMaterialization(key, partition=partition, metadata=metadata)
            )
    whole = duplicates.latest_materializations(instance, key)
    monkeypatch.setattr(duplicates, "_FETCH_LIMIT", 3)  # 7 partitions: pages of 3, 3 and 1
    paged = duplicates.latest_materializations(instance, key)
    assert paged == whole and sorted(paged) == partitions
    assert {p: (meta["attempt"].value, meta["i"].value) for p, (_, meta) in paged.items()} == {
        p: (1, i) for i, p in enumerate(partitions)
    }
