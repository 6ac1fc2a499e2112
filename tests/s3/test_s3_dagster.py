"""The Dagster asset graph with the atlas on S3: credentials only in the environment, as in a deployment."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from fault_proxy import FaultProxy, Faults
from s3server import Seaweed, deployment_environment

import definitions
from lancell import run_again
from lancell.atlas import RaggedAtlas
from lancell_assets import dataset_partitions, snapshot_partitions
from lancell_assets.demo import land_bundled_data
from resources import AtlasResource

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def materializer(
    defs: dg.Definitions, instance: dg.DagsterInstance, resources: dict
) -> Callable[..., dg.ExecuteInProcessResult]:
    """``materialize(selection, partition=None)``: one in-process run of ``defs``' assets on ``instance``."""

    def materialize(selection: list[str], partition: str | None = None) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            list(defs.assets),
            selection=selection,
            partition_key=partition,
            instance=instance,
            resources=resources,
            run_config=QUIET,
        )

    return materialize


def test_asset_graph_on_s3(seaweed: Seaweed, s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    deployment_environment(monkeypatch, seaweed.endpoint)
    land_bundled_data(tmp_path / "landing")
    defs = definitions.build_definitions(tmp_path)
    atlas = AtlasResource(
        db_uri=f"{s3_root}/db",
        store_url=f"{s3_root}/arrays",
        store_config={"endpoint": seaweed.endpoint, "region": "us-east-1"},
        client_options={"allow_http": "true"},
        max_retries=2,  # (the retry settings reach the store: obstore refuses a bad one)
        retry_timeout_seconds=60.0,
        create_if_missing=True,
    )
    assert atlas._store_kwargs()["retry_config"] == {"max_retries": 2, "retry_timeout": timedelta(seconds=60)}
    resources = dict(defs.resources) | {"atlas": atlas}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k", "celltypist_sample"])
        instance.add_dynamic_partitions(snapshot_partitions.name, ["s3-snap"])

        materialize = materializer(defs, instance, resources)

        for partition in ("pbmc68k", "celltypist_sample"):
            result = materialize(["dataset_group"], partition)
            assert all(c.passed for c in result.get_asset_check_evaluations())
        materialize(["feature_registry", "optimized_atlas"])
        result = materialize(["atlas_snapshot"], "s3-snap")
        assert all(c.passed for c in result.get_asset_check_evaluations())
        version = (
            result.asset_materializations_for_node("atlas_snapshot")[0].metadata["snapshot_version"].value
        )
    assert atlas.find_snapshot("s3-snap") == version
    frozen = atlas.checkout(version)
    assert frozen.store.config["bucket"] == s3_root.split("/")[2]
    assert frozen.query().count() == 700 + 559
    assert (
        RaggedAtlas.checkout_latest(f"{s3_root}/db").query().where("dataset_uid = 'pbmc68k'").count() == 700
    )


def test_steps_broken_under_lancedb_are_run_again(
    seaweed: Seaweed, s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A connection reset under one of LanceDB's commits (lance's own write: lancell cannot send it again)
    fails an ingestion (rolled back), an optimize or a snapshot; each step runs its operation again."""
    proxy = FaultProxy(seaweed.endpoint)
    try:
        deployment_environment(monkeypatch, proxy.endpoint)
        monkeypatch.setattr(run_again, "STORE_RETRY_WAITS", (0.2, 0.2))
        land_bundled_data(tmp_path / "landing")
        defs = definitions.build_definitions(tmp_path)
        atlas = AtlasResource(
            db_uri=f"{s3_root}/db",
            store_url=f"{s3_root}/arrays",
            store_config={"endpoint": proxy.endpoint, "region": "us-east-1"},
            client_options={"allow_http": "true"},
            create_if_missing=True,
        )
        atlas.open()
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k", "celltypist_sample"])
            instance.add_dynamic_partitions(snapshot_partitions.name, ["flaky"])

            materialize = materializer(defs, instance, dict(defs.resources) | {"atlas": atlas})

            def broken_once(selection: list[str], commits: str, partition: str | None = None) -> list[str]:
                """Materialize ``selection`` with the first of LanceDB's commits to ``commits`` reset;
                return the run's retry warnings."""
                proxy.faults = Faults(fault="reset", methods=("PUT",), path=commits, faults=1)
                result = materialize(selection, partition)
                assert result.success and len(proxy.faults.broken) == 1
                assert all(c.passed for c in result.get_asset_check_evaluations())
                return [
                    event.message
                    for event in instance.all_logs(result.run_id)
                    if event.level == logging.WARNING and "again in 0.2 s" in (event.message or "")
                ]

            retried = broken_once(["dataset_group"], r"/db/datasets\.lance/_versions/", "pbmc68k")
            assert len(retried) == 1 and "as dataset 'pbmc68k' again" in retried[0]
            proxy.faults = Faults(faults=0)
            materialize(["dataset_group"], "celltypist_sample")  # (two fragments for optimize to compact)
            materialize(["feature_registry"])
            retried = broken_once(["optimized_atlas"], r"\.lance/_versions/")
            assert len(retried) == 1 and retried[0].startswith("optimize is run again")
            retried = broken_once(["atlas_snapshot"], r"\.lance/_versions/", "flaky")
            assert len(retried) == 1 and retried[0].startswith("snapshot 'flaky' is taken again")
        assert atlas.find_snapshot("flaky") is not None
        assert atlas.open().query().count() == 700 + 559
    finally:
        proxy.close()
