"""The Dagster asset graph with the atlas on S3: credentials only in the environment, as in a deployment."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from fault_proxy import FaultProxy, Faults
from s3server import Seaweed, deployment_environment

import definitions
from lancell.atlas import RaggedAtlas
from lancell.ingest import landing_retries
from lancell_assets import dataset_partitions, snapshot_partitions
from lancell_assets.demo import land_bundled_data
from resources import AtlasResource

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


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

        def materialize(selection: list[str], partition: str | None = None) -> dg.ExecuteInProcessResult:
            return dg.materialize(
                list(defs.assets),
                selection=selection,
                partition_key=partition,
                instance=instance,
                resources=resources,
                run_config=QUIET,
            )

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


def test_ingestion_broken_under_lancedb_is_run_again(
    seaweed: Seaweed, s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The connection of LanceDB's commit of the dataset record reset: the ingestion fails and is rolled back,
    then the step ingests the file again (lancell cannot send lance's own writes again)."""
    proxy = FaultProxy(seaweed.endpoint)
    try:
        deployment_environment(monkeypatch, proxy.endpoint)
        monkeypatch.setattr(landing_retries, "STORE_RETRY_WAITS", (0.2, 0.2))
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
        proxy.faults = Faults(
            fault="reset", methods=("PUT",), path=r"/db/datasets\.lance/_versions/", faults=1
        )
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k"])
            result = dg.materialize(
                list(defs.assets),
                selection=["dataset_group"],
                partition_key="pbmc68k",
                instance=instance,
                resources=dict(defs.resources) | {"atlas": atlas},
                run_config=QUIET,
            )
            retried = [
                event.message
                for event in instance.all_logs(result.run_id)
                if event.level == logging.WARNING and "again in 0.2 s" in (event.message or "")
            ]
        assert result.success and len(proxy.faults.broken) == 1
        assert len(retried) == 1 and "pbmc68k" in retried[0]
        assert all(c.passed for c in result.get_asset_check_evaluations())
        metadata = result.asset_materializations_for_node("dataset_group")[0].metadata
        assert metadata["outcome"].value == "ingested"
        assert atlas.open().query().count() == 700
    finally:
        proxy.close()
