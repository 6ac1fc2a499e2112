"""A snapshot partition names one atlas version for good; a dataset whose shards are gone fails its check."""

from __future__ import annotations

import dagster as dg
import pytest
from helpers import apply_partition_requests

from lancell.atlas import RaggedAtlas
from lancell.errors import DuplicateNoteError, LancellWarning
from lancell_assets import dataset_partitions, snapshot_partitions

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _materialize(defs, instance, selection, partition_key):
    return dg.materialize(
        list(defs.assets),
        selection=selection,
        partition_key=partition_key,
        instance=instance,
        resources=defs.resources,
        run_config=QUIET,
        raise_on_error=False,
    )


def _snapshot_metadata(result) -> dict[str, object]:
    event = result.asset_materializations_for_node("atlas_snapshot")[0]
    return {key: value.value for key, value in event.metadata.items()}


def test_a_snapshot_label_keeps_naming_its_version(platform):
    """``snapshot(note="rel1")`` again re-pointed atlas_snapshot@rel1 (and the classifier trained on it)."""
    defs, instance, root = platform
    instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k", "celltypist_sample"])
    instance.add_dynamic_partitions(snapshot_partitions.name, ["rel1"])
    assert _materialize(defs, instance, ["dataset_group"], "pbmc68k").success
    first = _snapshot_metadata(_materialize(defs, instance, ["atlas_snapshot"], "rel1"))
    assert _materialize(defs, instance, ["dataset_group"], "celltypist_sample").success
    with pytest.raises(DuplicateNoteError, match=f"snapshot {first['snapshot_version']} already has"):
        RaggedAtlas.open(str(root / "db")).snapshot(note="rel1")  # as `lancell snapshot --note rel1` does
    again = _snapshot_metadata(_materialize(defs, instance, ["atlas_snapshot"], "rel1"))
    assert (first["snapshot_version"], first["cells"]) == (0, 700)
    assert (again["snapshot_version"], again["cells"]) == (0, 700)


def test_a_dataset_whose_shard_objects_are_gone_fails_dataset_consistent(platform):
    defs, instance, root = platform
    instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k"])
    assert _materialize(defs, instance, ["dataset_group"], "pbmc68k").success
    group = RaggedAtlas.open(str(root / "db")).list_datasets()["zarr_group"].item()
    shards = [path for path in (root / "arrays" / group).rglob("c/*") if path.is_file()]
    assert shards
    for path in shards:
        path.unlink()
    result = _materialize(defs, instance, ["dataset_group"], "pbmc68k")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["dataset_consistent"].passed
    problems = checks["dataset_consistent"].metadata["problems"].value
    assert "array 'csr/indices'" in problems and "shard objects are missing from the store" in problems


def test_a_dataset_deleted_outside_dagster_is_named_by_the_snapshots_check(platform):
    """After `lancell delete`, the partition stayed materialized and a snapshot without its cells was green
    in every check (only its metadata's diff named the loss)."""
    defs, instance, root = platform
    instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k", "celltypist_sample"])
    instance.add_dynamic_partitions(snapshot_partitions.name, ["rel1", "rel2"])
    for uid in ("pbmc68k", "celltypist_sample"):
        assert _materialize(defs, instance, ["dataset_group"], uid).success
    first = _materialize(defs, instance, ["atlas_snapshot"], "rel1")
    checks = {c.check_name: c for c in first.get_asset_check_evaluations()}
    assert checks["materialized_datasets_in_atlas"].passed
    RaggedAtlas.open(str(root / "db")).delete_dataset("pbmc68k")
    second = _materialize(defs, instance, ["atlas_snapshot"], "rel2")
    assert second.success  # a warning, not a failure: the deletion may be wanted
    checks = {c.check_name: c for c in second.get_asset_check_evaluations()}
    absent = checks["materialized_datasets_in_atlas"]
    assert not absent.passed and absent.severity == dg.AssetCheckSeverity.WARN
    assert absent.metadata["absent"].value == {"pbmc68k": "pbmc68k"}


def test_snapshots_taken_and_deleted_outside_dagster_follow_as_partitions(platform):
    """A snapshot taken with ``lancell snapshot --note`` never became a partition (150 snapshots, 0
    partitions), and a deleted one's partition stayed, shown materialized, every run on it failing."""
    from lancell_assets import snapshot_partitions_sensor

    defs, instance, root = platform
    instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k"])
    assert _materialize(defs, instance, ["dataset_group"], "pbmc68k").success

    def tick():
        context = dg.build_sensor_context(instance=instance, resources=defs.resources)
        result = snapshot_partitions_sensor(context)
        apply_partition_requests(instance, result)
        return result

    atlas = RaggedAtlas.open(str(root / "db"))
    instance.add_dynamic_partitions(snapshot_partitions.name, ["pending"])  # a run will take it
    with pytest.warns(LancellWarning, match="nothing changed since"):
        for note in ("rel1", "rel2", "release/2", None):
            atlas.snapshot(note=note)
    added = tick()  # (a tick without a reason read "Sensor function returned an empty result")
    assert (
        added.skip_reason.skip_message
        == "snapshot partitions added ['rel1', 'rel2'], removed (snapshots deleted) []"
    )
    assert instance.get_dynamic_partitions(snapshot_partitions.name) == ["pending", "rel1", "rel2"]
    assert _materialize(defs, instance, ["atlas_snapshot"], "rel2").success  # the snapshot taken, found
    atlas.delete_snapshot(int(RaggedAtlas.find_snapshot(atlas.db_uri, "rel2")))
    tick()
    assert instance.get_dynamic_partitions(snapshot_partitions.name) == ["pending", "rel1"]
    assert tick().skip_reason and instance.get_dynamic_partitions(snapshot_partitions.name) == [
        "pending",
        "rel1",
    ]
