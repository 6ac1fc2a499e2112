"""The Dagster platform: definitions load, the graph's shape, partitioned materializations, sensor, checks."""

import json
import shutil

import anndata as ad
import dagster as dg
import numpy as np
from helpers import visible_state

import definitions
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED
from lancell_assets import dataset_partitions, landing_zone_sensor, snapshot_partitions

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _materialize(defs, instance, selection, partition_key=None, raise_on_error=True, ops=None):
    return dg.materialize(
        list(defs.assets),
        selection=selection,
        partition_key=partition_key,
        instance=instance,
        resources=defs.resources,
        run_config={**QUIET, **({"ops": ops} if ops else {})},
        raise_on_error=raise_on_error,
    )


def test_definitions_load_and_graph_shape():
    dg.Definitions.validate_loadable(definitions.defs)
    graph = definitions.defs.resolve_asset_graph()
    deps = {
        key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
        for key in graph.get_all_asset_keys()
    }
    assert deps == {
        "geo_series": [],
        "dataset_group": ["geo_series"],
        "feature_registry": ["dataset_group"],
        "optimized_atlas": ["feature_registry"],
        "atlas_snapshot": ["optimized_atlas"],
    } | ({"cell_type_classifier": ["atlas_snapshot"]} if "cell_type_classifier" in deps else {})
    assert graph.get(dg.AssetKey("dataset_group")).partitions_def == dataset_partitions
    assert graph.get(dg.AssetKey("atlas_snapshot")).partitions_def == snapshot_partitions
    for name in ("dataset_group", "feature_registry", "optimized_atlas", "atlas_snapshot"):
        assert graph.get(dg.AssetKey(name)).pools == {"lancedb_writer"}
    for key in graph.get_all_asset_keys():
        assert graph.get(key).owners == ["team:atlas"], key
    eager = {
        key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).automation_condition
    }
    assert eager == {"feature_registry", "optimized_atlas"}  # snapshots stay explicit
    # Dagster's default automation sensor starts stopped: nothing refreshed them until it was switched on
    sensors = {s.name: s.default_status for s in definitions.defs.get_repository_def().sensor_defs}
    assert sensors == {
        "atlas_refresh_sensor": dg.DefaultSensorStatus.RUNNING,
        "geo_series_sensor": dg.DefaultSensorStatus.RUNNING,
        "landing_zone_sensor": dg.DefaultSensorStatus.RUNNING,
        "nightly_snapshot_sensor": dg.DefaultSensorStatus.STOPPED,
        "snapshot_partitions_sensor": dg.DefaultSensorStatus.RUNNING,
    }
    specs = [spec for asset in definitions.defs.assets for spec in asset.check_specs]
    checks = {(c.key.name, c.partitions_def) for c in specs}
    assert checks == {
        ("ingested_cleanly", dataset_partitions),
        ("cell_count_matches", dataset_partitions),
        ("nnz_matches", dataset_partitions),
        ("dataset_consistent", dataset_partitions),
        ("content_matches", dataset_partitions),
        ("snapshot_valid", snapshot_partitions),
        ("cells_equal_dataset_sum", snapshot_partitions),
        ("materialized_datasets_in_atlas", snapshot_partitions),
    }
    assert all(c.description for c in specs)


def test_sensor_then_materialize_partitions_registry_optimize_snapshot(platform):
    defs, instance, root = platform
    context = dg.build_sensor_context(instance=instance, resources=defs.resources)
    first = landing_zone_sensor(context)
    assert sorted(r.partition_key for r in first.run_requests) == sorted(d.uid for d in BUNDLED)
    for request in first.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    again = landing_zone_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert again.run_requests == []  # already known partitions are not requested again

    for uid in ("pbmc68k", "celltypist_sample"):
        result = _materialize(defs, instance, ["dataset_group"], uid)
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks)
        metadata = result.asset_materializations_for_node("dataset_group")[0].metadata
        assert metadata["cells"].value == {"pbmc68k": 700, "celltypist_sample": 559}[uid]
        assert metadata["bytes_per_nnz"].value > 0
        layer = {"pbmc68k": ("log_normalized", "float32"), "celltypist_sample": ("counts", "uint32")}[uid]
        assert metadata["layers"].value == {layer[0]: {"dtype": layer[1], "nnz": metadata["nnz"].value}}
    rebuilt = _materialize(defs, instance, ["feature_registry", "optimized_atlas"])
    table = rebuilt.asset_materializations_for_node("optimized_atlas")[0].metadata["datasets"].value
    rows = [[c.strip() for c in row.strip("|").split("|")] for row in table.splitlines()]
    assert rows[:1] + rows[2:] == [  # the markdown header, then the datasets with their layers
        ["uid", "layers", "n_cells", "n_features", "nnz"],
        ["pbmc68k", "log_normalized", "700", "765", "174400"],
        ["celltypist_sample", "counts", "559", "32786", "1027859"],
    ]
    instance.add_dynamic_partitions(snapshot_partitions.name, ["snap-a"])
    result = _materialize(defs, instance, ["atlas_snapshot"], "snap-a")
    assert all(c.passed for c in result.get_asset_check_evaluations())
    metadata = result.asset_materializations_for_node("atlas_snapshot")[0].metadata
    version = metadata["snapshot_version"].value
    assert metadata["cells"].value == 1259
    atlas = RaggedAtlas.checkout(str(root / "db"), version)
    assert atlas.query().count() == 1259
    # re-materializing the same snapshot partition is idempotent: same version
    again = _materialize(defs, instance, ["atlas_snapshot"], "snap-a")
    assert (
        again.asset_materializations_for_node("atlas_snapshot")[0].metadata["snapshot_version"].value
        == version
    )


def test_bad_file_fails_its_run_and_checks_and_leaves_atlas_unchanged(platform):
    defs, instance, root = platform
    instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k", "broken"])
    _materialize(defs, instance, ["dataset_group"], "pbmc68k")
    atlas = RaggedAtlas.open(str(root / "db"))
    before = visible_state(atlas)
    shutil.copyfile(BUNDLED[0].path, root / "landing" / "broken.h5ad")
    (root / "landing" / "broken.json").write_text(json.dumps({"zarr_layer": "counts"}))  # floats: not counts
    result = _materialize(defs, instance, ["dataset_group"], "broken", raise_on_error=False)
    assert not result.success and not result.asset_materializations_for_node("dataset_group")
    checks = {c.check_name: (c.passed, c.partition) for c in result.get_asset_check_evaluations()}
    assert checks == {
        name: (False, "broken")
        for name in (
            "ingested_cleanly",
            "cell_count_matches",
            "nnz_matches",
            "dataset_consistent",
            "content_matches",
        )
    }
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure.description.startswith("dataset broken was not ingested: ")
    assert failure.metadata["error"].value.startswith("DataValueError: ")
    findings = failure.metadata["checks"].value
    assert findings["ingested_cleanly"].startswith("failed: ")
    assert findings["nnz_matches"] == "not evaluated: ingestion failed"
    assert instance.get_materialized_partitions(dg.AssetKey("dataset_group")) == {"pbmc68k"}
    assert visible_state(atlas) == before
    atlas.snapshot()


def test_training_partition_names_snapshot_and_reproduces_after_more_data(platform):
    defs, instance, root = platform
    instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k", "celltypist_sample"])
    instance.add_dynamic_partitions(snapshot_partitions.name, ["s1"])
    _materialize(defs, instance, ["dataset_group"], "pbmc68k")
    _materialize(defs, instance, ["feature_registry", "optimized_atlas"])
    _materialize(defs, instance, ["atlas_snapshot"], "s1")
    first = _materialize(defs, instance, ["cell_type_classifier"], "s1")
    meta = {
        k: v.value
        for k, v in first.asset_materializations_for_node("cell_type_classifier")[0].metadata.items()
    }
    assert meta["snapshot_version"] == RaggedAtlas.find_snapshot(str(root / "db"), "s1")
    assert meta["datasets"] == ["pbmc68k"] and meta["loader_seed"] == 0
    assert meta["n_train"] + meta["n_test"] == 700
    assert meta["cells_per_dataset"] == {"pbmc68k": 700} and meta["unmeasured_per_dataset"] == {}
    assert meta["test_accuracy"] > 0.6  # ten PBMC types, chance is ~0.34 for the largest class
    # the file is usable on its own: weights, the input features and output classes in order, how inputs read
    import torch

    saved = torch.load(meta["model_path"], weights_only=True)
    assert saved["classes"] == meta["classes"] and saved["snapshot_version"] == meta["snapshot_version"]
    assert saved["inputs"] == {
        "feature_space": "gene_expression",
        "layer": "log_normalized",
        "label_column": "cell_type",
        "normalize": False,
    }
    frozen = RaggedAtlas.checkout(str(root / "db"), meta["snapshot_version"])
    assert (
        saved["feature_uids"] == frozen.query().where("cell_type IS NOT NULL").to_anndata().var_names.tolist()
    )
    assert saved["state_dict"]["weight"].shape == (len(saved["classes"]), len(saved["feature_uids"]))

    _materialize(defs, instance, ["dataset_group"], "celltypist_sample")  # more data after the snapshot
    _materialize(defs, instance, ["feature_registry", "optimized_atlas"])
    again = _materialize(defs, instance, ["cell_type_classifier"], "s1")
    repeat = {
        k: v.value
        for k, v in again.asset_materializations_for_node("cell_type_classifier")[0].metadata.items()
    }
    for key in (
        "snapshot_version",
        "datasets",
        "cells_per_dataset",
        "n_train",
        "n_test",
        "batches_sha256",
        "test_accuracy",
        "train_loss",
    ):
        assert repeat[key] == meta[key], key


def test_classifier_fails_when_no_labelled_cell_is_measured(platform):
    defs, instance, _ = platform
    instance.add_dynamic_partitions(dataset_partitions.name, ["celltypist_sample"])  # counts, no labels
    instance.add_dynamic_partitions(snapshot_partitions.name, ["s0"])
    _materialize(defs, instance, ["dataset_group"], "celltypist_sample")
    _materialize(defs, instance, ["feature_registry", "optimized_atlas"])
    _materialize(defs, instance, ["atlas_snapshot"], "s0")
    result = _materialize(defs, instance, ["cell_type_classifier"], "s0", raise_on_error=False)
    assert not result.success and not result.asset_materializations_for_node("cell_type_classifier")
    error = result.get_step_failure_events()[0].event_specific_data.error.cause  # the asset's own error
    assert error.cls_name == "UnmeasuredDataError"
    assert error.message.startswith(
        "lancell.errors.UnmeasuredDataError: no cell measured in layer 'counts' of 'gene_expression' has a "
        "'cell_type' label; nothing to train on"
    )


def test_snapshot_job_trains_on_counts_where_no_dataset_stores_log_normalized(platform):
    """It trained on log_normalized only: on count files (what a file without a sidecar lands as) every
    snapshot_job run failed at its last step."""
    defs, instance, root = platform
    labelled = ad.read_h5ad(root / "landing" / "celltypist_sample.h5ad")[:300].copy()
    labelled.obs["cell_type"] = np.where(np.arange(labelled.n_obs) % 2, "T cell", "B cell")
    labelled.write_h5ad(root / "landing" / "labelled.h5ad")
    instance.add_dynamic_partitions(dataset_partitions.name, ["labelled"])
    instance.add_dynamic_partitions(snapshot_partitions.name, ["s0"])
    _materialize(defs, instance, ["dataset_group"], "labelled")
    _materialize(defs, instance, ["feature_registry", "optimized_atlas"])
    result = _materialize(defs, instance, ["atlas_snapshot", "cell_type_classifier"], "s0")
    meta = result.asset_materializations_for_node("cell_type_classifier")[0].metadata
    assert meta["layer"].value == "counts" and meta["normalize"].value is True
    assert meta["cells_per_dataset"].value == {"labelled": 300}
    configured = {"cell_type_classifier": {"config": {"normalize": False, "epochs": 1}}}
    again = _materialize(defs, instance, ["cell_type_classifier"], "s0", ops=configured)
    meta = again.asset_materializations_for_node("cell_type_classifier")[0].metadata
    assert meta["normalize"].value is False
