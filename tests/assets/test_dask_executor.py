"""Scale-out on Dagster's Dask executor: dataset partitions ingested concurrently by two Dask workers.

A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1; one run per partition of
``ingest_on_dask_job`` (:mod:`lancell_assets.dask_jobs`), submitted concurrently from three processes; each
run's step executes on a worker. The atlas they build must equal a serial in-process build: same cells,
values, registry uids (global indices depend on arrival order, so values are compared by gene uid).
About 70 s on two busy cores; it runs in ``make test`` (CI) all the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import definitions
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED
from lancell_assets import dataset_partitions
from lancell_assets.demo import land_bundled_data
from resources import AtlasResource

distributed = pytest.importorskip("distributed", reason="dagster-dask / dask[distributed] not installed")
dask_jobs = pytest.importorskip("lancell_assets.dask_jobs", reason="dagster-dask not installed")

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
WORKERS = ("lancell-worker-a", "lancell-worker-b")
PARTITIONS = [d.uid for d in BUNDLED]
SCHEDULER_ARGS = ("--host", "127.0.0.1", "--port", "0", "--no-dashboard")
# Submits one run of ingest_on_dask_job for one partition; prints the run id.
LAUNCH = """
import sys
import dagster as dg
from lancell_assets import dask_jobs
ref, root, partition, address = sys.argv[1:]
with dg.DagsterInstance.from_ref(dg.deserialize_value(ref)) as instance:
    result = dg.execute_job(
        dask_jobs.reconstructable_ingest_job(root + "/db", root + "/arrays", root + "/landing"),
        instance,
        run_config=dask_jobs.dask_run_config(address)
        | {"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        tags={"dagster/partition": partition},
        raise_on_error=True,
    )
print(result.run_id)
"""
WORKER_ARGS = ("--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--no-nanny")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[tuple[str, distributed.Client]]:
    """A scheduler and two single-threaded workers, each its own process, all on 127.0.0.1."""
    dask = str(Path(sys.executable).parent / "dask")
    scheduler_file = tmp_path / "scheduler.json"
    env = os.environ | {"LANCE_LOG": "error", "PYTHONWARNINGS": "ignore"}
    logs = (tmp_path / "dask.log").open("wb")
    scratch = ("--local-directory", str(tmp_path / "dask-scratch"))
    common = {"stdout": logs, "stderr": subprocess.STDOUT, "env": env}
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--scheduler-file", str(scheduler_file), *SCHEDULER_ARGS],
            **common,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for name in WORKERS:
            processes.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        "--scheduler-file",
                        str(scheduler_file),
                        "--name",
                        name,
                        *WORKER_ARGS,
                        *scratch,
                    ],
                    **common,
                )
            )
        address = json.loads(scheduler_file.read_text())["address"]
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(len(WORKERS), timeout=120)
            yield address, client
    finally:
        for process in reversed(processes):
            _stop(process)
        logs.close()


def _step_interval(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    records = instance.all_logs(run_id)
    start = next(r.timestamp for r in records if r.is_dagster_event and r.dagster_event_type == "STEP_START")
    end = next(r.timestamp for r in records if r.is_dagster_event and r.dagster_event_type == "STEP_SUCCESS")
    return start, end


def _cells(atlas: RaggedAtlas) -> pd.DataFrame:
    table = atlas.core.tables.cells.to_arrow().drop_columns(["gene_expression"]).to_pandas()
    return table.sort_values("uid").reset_index(drop=True)


def _values(atlas: RaggedAtlas, dataset: str, layer: str) -> tuple[list[str], list[str], sp.csr_matrix]:
    """A dataset's cells x genes, rows and columns sorted by uid (global indices depend on arrival order)."""
    adata = atlas.query().where(f"dataset_uid = '{dataset}'").layers("gene_expression", layer).to_anndata()
    rows, cols = np.argsort(adata.obs_names.to_numpy()), np.argsort(adata.var_names.to_numpy())
    return list(adata.obs_names[rows]), list(adata.var_names[cols]), sp.csr_matrix(adata.X)[rows][:, cols]


def test_partitions_ingest_concurrently_on_two_dask_workers_and_match_a_serial_build(
    tmp_path: Path, dask_cluster: tuple[str, distributed.Client]
) -> None:
    address, client = dask_cluster
    dask_root, serial_root = tmp_path / "dask", tmp_path / "serial"
    for root in (dask_root, serial_root):
        land_bundled_data(root / "landing")
    pids = client.run(os.getpid)  # worker address -> pid
    names = {info["name"]: addr for addr, info in client.scheduler_info()["workers"].items()}
    worker_of_pid = {pids[names[name]]: name for name in WORKERS}

    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        instance.add_dynamic_partitions(dataset_partitions.name, PARTITIONS)

        root = str(dask_root)
        # the job's AtlasResource creates no atlas (a deployment's exists before its runs): create it here
        AtlasResource(db_uri=f"{root}/db", store_url=f"{root}/arrays", create_if_missing=True).open()
        # one orchestrating process per run (Dagster's per-run logging setup is not thread-safe)
        launches = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    LAUNCH,
                    dg.serialize_value(instance.get_ref()),
                    *(root, partition, address),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=os.environ | {"LANCE_LOG": "error", "PYTHONWARNINGS": "ignore"},
            )
            for partition in PARTITIONS
        ]
        results = {}
        for partition, launch in zip(PARTITIONS, launches, strict=True):
            out, err = launch.communicate(timeout=600)
            assert launch.returncode == 0, err[-3000:]
            results[partition] = instance.get_run_by_id(out.strip().splitlines()[-1])
        placement, intervals = {}, {}
        for partition, run in results.items():
            assert run.status == dg.DagsterRunStatus.SUCCESS, partition
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("dataset_group"), asset_partitions=[partition]),
                limit=1,
            ).records
            metadata = records[0].asset_materialization.metadata
            assert metadata["cells"].value > 0
            pid = int(metadata["worker"].value.rsplit(":", 1)[1])
            placement[partition] = worker_of_pid[pid]  # ran in a worker, not in this process
            intervals[partition] = _step_interval(instance, run.run_id)
            checks = [
                r.get_dagster_event().event_specific_data
                for r in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            ]
            assert len(checks) == 5 and all(c.passed for c in checks), partition

        # both workers ingested, and two partitions on different workers ran at the same time
        assert set(placement.values()) == set(WORKERS), placement
        overlapping = [
            (a, b)
            for a in PARTITIONS
            for b in PARTITIONS
            if a < b
            and placement[a] != placement[b]
            and max(intervals[a][0], intervals[b][0]) < min(intervals[a][1], intervals[b][1])
        ]
        assert overlapping, (placement, intervals)

        serial = definitions.build_definitions(serial_root)
        for partition in PARTITIONS:
            dg.materialize(
                list(serial.assets),
                selection=["dataset_group"],
                partition_key=partition,
                instance=instance,
                resources=serial.resources,
                run_config=QUIET,
            )

    parallel, reference = RaggedAtlas.open(str(dask_root / "db")), RaggedAtlas.open(str(serial_root / "db"))
    assert parallel.validate() == reference.validate() == []
    # not layout_uid: a layout lists its features in global-index order, which follows registration order
    columns = ["uid", "layer", "n_cells", "n_features", "nnz"]
    pd.testing.assert_frame_equal(
        parallel.list_datasets()[columns].sort_values("uid").reset_index(drop=True),
        reference.list_datasets()[columns].sort_values("uid").reset_index(drop=True),
    )
    assert set(parallel.feature_registry("gene_expression")["uid"]) == set(
        reference.feature_registry("gene_expression")["uid"]
    )
    pd.testing.assert_frame_equal(_cells(parallel), _cells(reference))
    for dataset in BUNDLED:
        got, want = (
            _values(parallel, dataset.uid, dataset.zarr_layer),
            _values(reference, dataset.uid, dataset.zarr_layer),
        )
        assert got[:2] == want[:2]
        assert (got[2] != want[2]).nnz == 0 and got[2].dtype == want[2].dtype
