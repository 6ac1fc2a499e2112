"""Scale benchmark through the Dagster graph: the scale inputs ingested by ``dataset_group`` partitions on
the Dask executor, proved identical to the in-process build of the same inputs.

Takes the backed ``.h5ad`` files of one size of ``benchmarks/scale.py`` (``--data``, e.g.
``/tmp/scale-data/10000000-head-1000000`` for 1M cells) and builds two atlases from them:

- **in process**: ``scale.py``'s ingest and optimize stages, each in a fresh process (the 30,000-gene
  universe registered, then one ``add_from_anndata`` per file);
- **Dagster + Dask**: the same universe registered in a fresh atlas, each file landed (a symlink and a
  sidecar naming its layer and the CSC choice), the ``landing_zone_sensor`` evaluated (it adds one dataset
  partition per file), every partition materialized by ``ingest_on_dask_job``
  (:mod:`lancell_assets.dask_jobs`) on a local Dask cluster of ``--workers`` single-threaded worker
  processes, ``--runs`` runs in flight at once (each orchestrated by a launcher process), then
  ``feature_registry`` and ``optimized_atlas`` materialized (``rebuild_atlas_job``'s assets).

Both are optimized, then compared in a fresh process (``benchmarks/scale_compare.py`` says exactly what
"identical" compares: registry, dataset records, cell rows, and bit-identical matrix reads of every cell).

    .venv/bin/python benchmarks/scale_dagster.py --data /tmp/scale-data/10000000-head-1000000

Prints per-stage seconds, cells/s and peak RSS per process (``ru_maxrss``: the in-process stages, each Dask
worker, the scheduler, each launcher, the rebuild) and writes them to ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # definitions, lancell_assets, resources
ENV = os.environ | {
    "LANCE_LOG": "error",
    "PYTHONWARNINGS": "ignore",
    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SCHEDULER_ARGS = ("--host", "127.0.0.1", "--port", "0", "--no-dashboard")
WORKER_ARGS = (
    "--nthreads",
    "1",
    "--host",
    "127.0.0.1",
    "--no-dashboard",
    "--no-nanny",
    "--memory-limit",
    "0",
)


def peak_mib() -> float:
    """This process's ``ru_maxrss`` in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_stats() -> dict[str, float]:
    """This process's id and peak RSS (run on each Dask worker)."""
    return {"pid": os.getpid(), "peak_mib": peak_mib()}


# ----------------------------------------------------------------------------------------- child modes
def launch(instance_ref: str, root: str, address: str, partitions: list[str]) -> dict[str, Any]:
    """Materialize each of ``partitions`` in turn, one ``ingest_on_dask_job`` run each (steps run on Dask)."""
    import dagster as dg

    from lancell_assets.dask_jobs import dask_run_config, reconstructable_ingest_job

    job = reconstructable_ingest_job(f"{root}/db", f"{root}/arrays", f"{root}/landing")
    runs = {}
    with dg.DagsterInstance.from_ref(dg.deserialize_value(instance_ref)) as instance:
        for partition in partitions:
            result = dg.execute_job(
                job,
                instance,
                run_config=dask_run_config(address) | QUIET,
                tags={"dagster/partition": partition},
                raise_on_error=True,
            )
            runs[partition] = result.run_id
    return {"runs": runs, "peak_mib": peak_mib()}


def rebuild(instance_ref: str, root: str) -> dict[str, Any]:
    """Materialize ``feature_registry`` and ``optimized_atlas`` (in process, as ``rebuild_atlas_job``)."""
    import dagster as dg

    import definitions

    defs = definitions.build_definitions(Path(root))
    started = time.perf_counter()
    with dg.DagsterInstance.from_ref(dg.deserialize_value(instance_ref)) as instance:
        dg.materialize(
            list(defs.assets),
            selection=["feature_registry", "optimized_atlas"],
            instance=instance,
            resources=defs.resources,
            run_config=QUIET,
        )
    return {"seconds": time.perf_counter() - started, "peak_mib": peak_mib()}


def _child(argv: list[str]) -> dict[str, Any]:
    mode, *rest = argv
    if mode == "launch":
        return launch(rest[0], rest[1], rest[2], rest[3:])
    if mode == "rebuild":
        return rebuild(rest[0], rest[1])
    from scale_compare import compare

    return compare(json.loads(rest[0]), json.loads(rest[1]))


def run_child(*argv: str) -> dict[str, Any]:
    """Run ``--stage argv...`` in a fresh interpreter; its last stdout line is its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "--stage", *argv], stdout=subprocess.PIPE, text=True, env=ENV, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- the Dagster build
def land(files: list[Path], landing: Path, csc: bool) -> None:
    """Each file into ``landing`` as a symlink, with a sidecar storing ``X`` as ``counts`` (CSC as asked)."""
    landing.mkdir(parents=True)
    for path in files:
        (landing / path.name).symlink_to(path.resolve())
        (landing / f"{path.stem}.json").write_text(json.dumps({"zarr_layer": "counts", "csc": csc}))


def start_cluster(folder: Path, workers: int) -> tuple[str, list[subprocess.Popen]]:
    """A ``dask scheduler`` and ``workers`` single-threaded ``dask worker`` processes on 127.0.0.1."""
    dask = str(Path(sys.executable).parent / "dask")
    scheduler_file = folder / "scheduler.json"
    logs = (folder / "dask.log").open("wb")
    common = {"stdout": logs, "stderr": subprocess.STDOUT, "env": ENV, "cwd": REPO}
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--scheduler-file", str(scheduler_file), *SCHEDULER_ARGS], **common
        )
    ]
    deadline = time.monotonic() + 120
    while not scheduler_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the dask scheduler wrote no {scheduler_file} (see {folder / 'dask.log'})")
        time.sleep(0.2)
    worker = [dask, "worker", "--scheduler-file", str(scheduler_file), *WORKER_ARGS]
    for i in range(workers):
        name = ["--name", f"worker-{i}", "--local-directory", str(folder / "scratch")]
        processes.append(subprocess.Popen([*worker, *name], **common))
    return json.loads(scheduler_file.read_text())["address"], processes


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _run_records(instance: Any, run_ids: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per partition: the step's start/end, the asset's ingest seconds and the worker that ran it."""
    import dagster as dg

    out = {}
    for partition, run_id in run_ids.items():
        events = instance.all_logs(run_id)
        stamp = {e.dagster_event_type: e.timestamp for e in events if e.is_dagster_event}
        metadata = next(
            e.get_dagster_event().event_specific_data.materialization.metadata
            for e in events
            if e.is_dagster_event and e.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        out[partition] = {
            "step_start": stamp[dg.DagsterEventType.STEP_START],
            "step_end": stamp[dg.DagsterEventType.STEP_SUCCESS],
            "ingest_seconds": metadata["duration_s"].value,
            "cells": metadata["cells"].value,
            "worker": metadata["worker"].value,
        }
    return out


def dagster_build(files: list[Path], root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build the atlas under ``root`` through the Dagster graph on Dask (module doc); its measurements."""
    import dagster as dg
    import distributed
    from scale import create_atlas
    from tqdm import tqdm

    from lancell_assets import dataset_partitions, landing_zone_sensor
    from lancell_assets.dask_jobs import INGEST_JOB_NAME
    from resources import LandingZone

    create_atlas({"db": str(root / "db"), "store": str(root / "arrays"), "genes": args.genes})
    land(files, root / "landing", args.csc)
    (root / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(root / "home"), overrides={"telemetry": {"enabled": False}})
    tick = landing_zone_sensor(
        dg.build_sensor_context(
            instance=instance, resources={"landing_zone": LandingZone(path=str(root / "landing"))}
        )
    )
    for request in tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    partitions = [request.partition_key for request in tick.run_requests]
    assert sorted(instance.get_dynamic_partitions(dataset_partitions.name)) == sorted(partitions)
    address, cluster = start_cluster(root, args.workers)
    ref = dg.serialize_value(instance.get_ref())
    try:
        with distributed.Client(address, timeout=120) as client:
            client.wait_for_workers(args.workers, timeout=300)
            started, launched = time.perf_counter(), time.time()
            launchers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--stage",
                        "launch",
                        ref,
                        str(root),
                        address,
                        *partitions[i :: args.runs],
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=ENV,
                )
                for i in range(args.runs)
            ]
            done_filter = dg.RunsFilter(job_name=INGEST_JOB_NAME, statuses=[dg.DagsterRunStatus.SUCCESS])
            with tqdm(total=len(partitions), desc="dagster+dask ingest", unit="ds") as bar:
                while any(p.poll() is None for p in launchers):
                    time.sleep(1)
                    bar.update(instance.get_runs_count(done_filter) - bar.n)
                bar.update(instance.get_runs_count(done_filter) - bar.n)
            seconds = time.perf_counter() - started
            outputs = []
            for launcher in launchers:
                out, _ = launcher.communicate()
                if launcher.returncode != 0:
                    raise RuntimeError(
                        f"a launcher failed (exit {launcher.returncode}); see the runs in {root}/home"
                    )
                outputs.append(json.loads(out.strip().splitlines()[-1]))
            names = {addr: info["name"] for addr, info in client.scheduler_info()["workers"].items()}
            workers = {names[addr]: stats for addr, stats in client.run(process_stats).items()}
            scheduler = client.run_on_scheduler(peak_mib)
    finally:
        _stop(cluster)
    runs = _run_records(instance, {p: r for o in outputs for p, r in o["runs"].items()})
    rebuilt = run_child("rebuild", ref, str(root))
    instance.dispose()
    steps = sorted((r["step_start"], r["step_end"]) for r in runs.values())
    return {
        "cells": sum(r["cells"] for r in runs.values()),
        "seconds": seconds,
        "rebuild_seconds": rebuilt["seconds"],
        "step_seconds_sum": sum(end - start for start, end in steps),
        "first_step_after_seconds": steps[0][0] - launched,  # launchers' and workers' start-up
        "steps_span_seconds": max(end for _, end in steps) - steps[0][0],
        "ingest_seconds_sum": sum(r["ingest_seconds"] for r in runs.values()),
        "overlapping_steps": sum(
            1 for i, (_, end) in enumerate(steps) for start, _ in steps[i + 1 :] if start < end
        ),
        "partitions_per_worker": {
            name: sum(1 for r in runs.values() if r["worker"].endswith(f":{stats['pid']}"))
            for name, stats in workers.items()
        },
        "peak_mib": {
            **{f"dask {name}": stats["peak_mib"] for name, stats in workers.items()},
            "dask scheduler": scheduler,
            **{f"launcher {i}": o["peak_mib"] for i, o in enumerate(outputs)},
            "rebuild (registry + optimize)": rebuilt["peak_mib"],
        },
        "runs": runs,
    }


# ----------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, help="the folder of one size's ds*.h5ad files (scale.py's inputs)"
    )
    parser.add_argument(
        "--genes", type=int, default=30_000, help="the gene universe the inputs were drawn from"
    )
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (one thread each)")
    parser.add_argument("--runs", type=int, default=3, help="partition runs in flight at once (launchers)")
    parser.add_argument(
        "--csc", action="store_true", help="also write the CSC copy of each dataset (both builds)"
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="folder for both atlases (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep both atlases (default: delete them)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--stage", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.stage and (args.data is None or not sorted(args.data.glob("ds*.h5ad"))):
        parser.error(f"--data: a folder of ds*.h5ad files, got {args.data}")
    return args


def _line(label: str, seconds: float, cells: int, peak: float | str) -> str:
    return f"  {label:<44}{seconds:>9.2f} s {cells / seconds:>10,.0f} cells/s   peak RSS {peak}"


def main() -> None:
    from scale import run_stage

    args = parse_args()
    if args.stage:
        print(json.dumps(_child(args.stage)))
        return
    files = sorted(args.data.glob("ds*.h5ad"))
    made = args.root is None  # (a folder made here is removed with the atlases unless --keep)
    root = args.root or Path(tempfile.mkdtemp(prefix="lancell-scale-dagster-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    inproc, dagster = root / "in-process", root / "dagster"
    if inproc.exists() or dagster.exists():
        raise FileExistsError(f"{root} already holds an atlas of this benchmark; give an empty --root")
    print(
        f"scale benchmark through Dagster: {len(files)} files in {args.data}, {args.workers} Dask workers, "
        f"{args.runs} runs in flight, {'with' if args.csc else 'no'} CSC copy; {os.cpu_count()} cores; "
        f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        flush=True,
    )
    spec = {
        "label": "in process",
        "genes": args.genes,
        "csc": args.csc,
        "db": str(inproc / "db"),
        "store": str(inproc / "arrays"),
        "files": [str(p) for p in files],
    }
    results: dict[str, Any] = {"load_average_start": os.getloadavg()}
    try:
        results["in-process ingest"] = run_stage("ingest", spec)
        results["in-process optimize"] = run_stage("optimize", spec)
        cells = results["in-process ingest"]["cells"]
        for stage in ("ingest", "optimize"):
            r = results[f"in-process {stage}"]
            print(_line(f"in process: {stage}", r["seconds"], cells, f"{r['peak_mib']:,.0f} MiB"), flush=True)
        print(f"  load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
        results["dagster"] = d = dagster_build(files, dagster, args)
        print(
            _line("dagster+dask: dataset_group partitions", d["seconds"], d["cells"], "per process below"),
            flush=True,
        )
        print(_line("dagster: feature_registry + optimized_atlas", d["rebuild_seconds"], d["cells"], "below"))
        print(
            f"    first step after {d['first_step_after_seconds']:.1f} s, first step start to last step end "
            f"{d['steps_span_seconds']:.1f} s; steps {d['step_seconds_sum']:.1f} s in all (ingest "
            f"{d['ingest_seconds_sum']:.1f} s of it), "
            f"{d['overlapping_steps']} overlapping step pairs, partitions per worker {d['partitions_per_worker']}"
        )
        for name, peak in d["peak_mib"].items():
            print(f"    peak RSS {name:<34}{peak:>8,.0f} MiB")
        results["load_average_after_builds"] = os.getloadavg()
        results["compare"] = c = run_child(
            "compare",
            json.dumps({"db": spec["db"], "store": spec["store"]}),
            json.dumps({"db": str(dagster / "db"), "store": str(dagster / "arrays")}),
        )
        print(
            f"identical: {c['datasets']} datasets, {c['features']:,} features, {c['cells']:,} cells, "
            f"{c['nnz']:,} values read back bit for bit ({c['seconds']:.1f} s, peak RSS {c['peak_mib']:,.0f} MiB)"
        )
        ingest = results["in-process ingest"]["seconds"]
        both = ingest + results["in-process optimize"]["seconds"]
        print(
            f"Dagster+Dask / in process: ingest {d['seconds'] / ingest:.2f}x, "
            f"ingest + optimize {(d['seconds'] + d['rebuild_seconds']) / both:.2f}x; "
            f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}"
        )
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
        if not args.keep:
            shutil.rmtree(inproc, ignore_errors=True)
            shutil.rmtree(dagster, ignore_errors=True)
            if made:
                with contextlib.suppress(OSError):  # (only when empty: nothing else is removed)
                    root.rmdir()


if __name__ == "__main__":
    main()
