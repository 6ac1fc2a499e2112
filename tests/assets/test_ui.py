"""A real ``dagster dev`` on loopback: GraphQL sees the graph and materializations; Chromium screenshots."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from matplotlib import image

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

GRAPH_QUERY = """{ assetNodes { assetKey { path } groupName dependencyKeys { path }
  partitionDefinition { type } } }"""
PARTITIONS_QUERY = """{ assetNodeOrError(assetKey: {path: ["dataset_group"]}) { ... on AssetNode {
  assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } }
  } } }"""
CHECKS_QUERY = """{ assetCheckExecutions(assetKey: {path: ["dataset_group"]}, checkName: "ingested_cleanly",
  limit: 10) { status partition } }"""
# a file whose ingestion fails (pbmc68k's floats stored as "counts"), ingested by the named job
BREAK_ONE_FILE = """
import json, os, shutil
from pathlib import Path
import dagster as dg
import definitions
from lancell.bundled import BUNDLED
landing = Path(os.environ["LANCELL_ROOT"]) / "landing"
shutil.copyfile(BUNDLED[0].path, landing / "broken.h5ad")
(landing / "broken.json").write_text(json.dumps({"zarr_layer": "counts"}))
with dg.DagsterInstance.get() as instance:
    instance.add_dynamic_partitions("lancell_datasets", ["broken"])
    job = definitions.defs.resolve_job_def("ingest_dataset_job")
    assert not job.execute_in_process(instance=instance, partition_key="broken", raise_on_error=False).success
"""
MATERIALIZATIONS_QUERY = """{ assetOrError(assetKey: {path: ["atlas_snapshot"]}) { ... on Asset {
  assetMaterializations(limit: 5) { partition metadataEntries { label
  ... on IntMetadataEntry { intValue } } } } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def _reset_sigint() -> None:
    # dagster dev ignores SIGTERM/SIGINT when launched in the background; give it default handling back
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def dagster_ui(tmp_path: Path):
    home, root = tmp_path / "dagster_home", tmp_path / "atlas"
    env = {**os.environ, "DAGSTER_HOME": str(home), "LANCELL_ROOT": str(root), "LANCE_LOG": "error"}
    subprocess.run(
        [sys.executable, "-m", "lancell_assets.demo", str(root)],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    subprocess.run([sys.executable, "-c", BREAK_ONE_FILE], env=env, cwd=REPO, check=True, capture_output=True)
    port = _free_port()
    log = (tmp_path / "dagster_dev.log").open("w")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_reset_sigint,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(
                    f"dagster dev did not start: {(tmp_path / 'dagster_dev.log').read_text()[-3000:]}"
                )
            time.sleep(0.3)
    yield port, tmp_path
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def test_dagster_dev_serves_graph_materializations_and_lineage_page(dagster_ui):
    port, tmp_path = dagster_ui
    nodes = {tuple(n["assetKey"]["path"]): n for n in _graphql(port, GRAPH_QUERY)["assetNodes"]}
    assert nodes[("optimized_atlas",)]["dependencyKeys"] == [{"path": ["feature_registry"]}]
    assert nodes[("atlas_snapshot",)]["partitionDefinition"]["type"] == "DYNAMIC"
    assert nodes[("dataset_group",)]["groupName"] == "atlas"
    materializations = _graphql(port, MATERIALIZATIONS_QUERY)["assetOrError"]["assetMaterializations"]
    assert materializations[0]["partition"] == "demo-1"
    labels = {e["label"]: e.get("intValue") for e in materializations[0]["metadataEntries"]}
    assert labels["cells"] == 11259
    node = _graphql(port, PARTITIONS_QUERY)["assetNodeOrError"]["assetPartitionStatuses"]
    assert node["failedPartitions"] == ["broken"]
    assert sorted(node["materializedPartitions"]) == ["celltypist_sample", "mouse_10k", "pbmc68k"]
    executions = _graphql(port, CHECKS_QUERY)["assetCheckExecutions"]
    assert sorted((e["partition"], e["status"]) for e in executions) == [
        ("broken", "FAILED"),
        ("celltypist_sample", "SUCCEEDED"),
        ("mouse_10k", "SUCCEEDED"),
        ("pbmc68k", "SUCCEEDED"),
    ]

    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    shot = tmp_path / "lineage.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"--screenshot={shot}",
            "--window-size=1400,900",
            "--virtual-time-budget=15000",
            f"http://127.0.0.1:{port}/asset-groups",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = image.imread(shot)
    assert pixels.shape[:2] == (900, 1400)
    assert (pixels[..., :3] < 0.9).any(axis=2).mean() > 0.01  # not a blank page
    # the rendered partitions page of dataset_group, the failed partition selected
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--dump-dom",
            "--window-size=1400,900",
            "--virtual-time-budget=15000",
            f"http://127.0.0.1:{port}/assets/dataset_group?view=partitions&partition=broken",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    text = [
        line.strip() for line in re.sub(r"<script.*?</script>|<[^>]+>", "\n", dom, flags=re.S).split("\n")
    ]
    assert "Failed (1)" in text and "Materialized (3)" in text
    assert "failed, and did not materialize this asset." in text
    # the rendered checks tab: every check failed, and the latest execution names its partition
    checks_dom = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--dump-dom",
            "--window-size=1400,900",
            "--virtual-time-budget=15000",
            f"http://127.0.0.1:{port}/assets/dataset_group?view=checks",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    shown = [
        line.strip()
        for line in re.sub(
            r"<script.*?</script>|<style.*?</style>|<[^>]+>", "\n", checks_dom, flags=re.S
        ).split("\n")
        if line.strip()
    ]
    assert "Checks (5)" in shown
    latest = shown.index("Latest execution")
    assert shown[latest : latest + 8].count("Failed") == 1
    assert shown[shown.index("Partition", latest) + 1] == "broken"
    docs = os.environ.get("LANCELL_SAVE_SCREENSHOT")
    if docs:
        shutil.copyfile(shot, docs)
