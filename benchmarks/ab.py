"""A/B of two commits on the same atlas: CPU time of queries and loader batches, alternated processes.

On a shared machine wall-clock times swing with other work; the CPU time a process spends in a fixed piece
of work swings much less. This script exports each commit with ``git archive`` into a scratch folder, builds
one synthetic ragged atlas with the *older* commit's code (the newer code reads it: formats only grow), then
runs ``--rounds`` rounds, each a fresh process per commit in alternating order, measuring the CPU time
(``time.process_time``) and wall time of ``to_anndata`` queries (the whole atlas, first as the process's
first large query, then warm; a cell filter, 20 genes, one dataset's 100 genes) and of loader batches
(``CellDataset.__getitems__`` + ``SparseCollate``, random and locality order, 0 workers: up to 40 batches of
256 cells, fewer and smaller on a small atlas). It prints, per piece of work, the median over rounds of each
commit and the ratio ``after / before`` of CPU time.

Each exported tree starts with a cold numba cache, so a first process per commit compiles the kernels: a
warm-up round (one process per commit) runs first and is discarded. A commit may be compared with itself
(an A/A run, to see the noise).

    .venv/bin/python benchmarks/ab.py BEFORE AFTER [--cells 40000 --datasets 8 --nnz-per-cell 500]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = (
    "whole atlas, first call",
    "whole atlas",
    "cell filter",
    "20 genes",
    "one dataset, 100 genes",
    "loader random",
    "loader locality",
)


def export(commit: str, folder: Path) -> Path:
    """The tree of ``commit`` under ``folder/<commit>`` (``git archive``)."""
    target = folder / commit
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def build(root: Path, cells: int, datasets: int, nnz: int) -> None:
    """The synthetic atlas at ``root`` (run with the older commit's code on ``PYTHONPATH``)."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    # the public facade only: module paths move between commits, lancell's public names do not
    from lancell import (
        DatasetRecord,
        FeatureBaseSchema,
        LancellBaseSchema,
        RaggedAtlas,
        SparseZarrPointer,
        add_from_anndata,
    )
    from lancell.synthetic import synthetic_counts

    class Gene(FeatureBaseSchema):
        gene_symbol: str | None = None

    class Cell(LancellBaseSchema):
        cell_type: str | None = None
        gene_expression: SparseZarrPointer | None = None

    rng = np.random.default_rng(7)
    universe = np.array([f"gene{i}" for i in range(20_000)])
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        Cell,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": universe, "gene_symbol": universe}))
    types = np.array(["T cell", "B cell", "monocyte", "NK cell"])
    for d in range(datasets):
        panel = np.sort(rng.choice(universe.size, int(universe.size * rng.uniform(0.5, 0.9)), replace=False))
        n = cells // datasets
        obs = pd.DataFrame({"cell_type": rng.choice(types, n)}, index=[f"c{i}" for i in range(n)])
        adata = ad.AnnData(X=synthetic_counts(n, panel.size, nnz, rng), obs=obs)
        adata.var_names = universe[panel]
        add_from_anndata(
            atlas,
            adata,
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=f"ds{d}"),
            progress=False,
        )
    atlas.optimize()
    atlas.snapshot()


def measure(root: Path, reps: int) -> dict[str, list[float]]:
    """``{work: [cpu seconds, wall seconds]}`` medians over ``reps`` after one warm-up run."""
    import numpy as np

    from lancell import RaggedAtlas, SparseCollate

    atlas = RaggedAtlas.checkout_latest(str(root / "db"))
    genes = [f"gene{i}" for i in range(0, 20_000, 1_000)]
    dataset = atlas.query().to_cell_dataset("gene_expression", "counts")
    collate = SparseCollate()
    n = len(dataset)
    size = min(256, n)  # batches of 256 cells (fewer, smaller ones on a small atlas), all within the atlas
    starts = range(0, size * min(40, n // size), size)
    order = np.random.default_rng(1).permutation(n)
    batches = {
        "loader random": [order[i : i + size].tolist() for i in starts],
        "loader locality": [list(range(i, i + size)) for i in starts],
    }
    work = {
        "cell filter": lambda: atlas.query().where("cell_type = 'B cell'").to_anndata(),
        "20 genes": lambda: atlas.query().features(genes, "gene_expression").to_anndata(),
        "one dataset, 100 genes": lambda: (
            atlas.query()
            .where("dataset_uid = 'ds0'")
            .features(genes[:5] + [f"gene{i}" for i in range(1, 96)], "gene_expression")
            .to_anndata()
        ),
        **{
            name: (lambda batch_list=batch_list: [collate(dataset.__getitems__(b)) for b in batch_list])
            for name, batch_list in batches.items()
        },
    }

    def whole() -> object:
        return atlas.query().to_anndata()

    started_cpu, started_wall = time.process_time(), time.perf_counter()
    whole()  # the process's first large query: its memory is new to the process
    out = {"whole atlas, first call": [time.process_time() - started_cpu, time.perf_counter() - started_wall]}
    work["whole atlas"] = whole
    for name, fn in work.items():
        fn()
        cpu, wall = [], []
        for _ in range(reps):
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            fn()
            cpu.append(time.process_time() - started_cpu)
            wall.append(time.perf_counter() - started_wall)
        out[name] = [statistics.median(cpu), statistics.median(wall)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--cells", type=int, default=40_000)
    parser.add_argument("--datasets", type=int, default=8)
    parser.add_argument("--nnz-per-cell", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.datasets < 1 or args.cells < args.datasets:
        parser.error(f"--datasets must be at least 1 and --cells ({args.cells}) at least --datasets")
    if min(args.rounds, args.reps, args.nnz_per_cell) < 1:
        parser.error("--rounds, --reps and --nnz-per-cell must be at least 1")
    if args.child:
        import lancell

        tree = Path(os.environ.get("PYTHONPATH", "")).resolve()
        if tree not in Path(lancell.__file__).resolve().parents:
            raise SystemExit(
                f"lancell was imported from {lancell.__file__}, not from the exported tree {tree}"
            )
        step, root = args.child
        if step == "build":
            build(Path(root), args.cells, args.datasets, args.nnz_per_cell)
        else:
            print(json.dumps(measure(Path(root), args.reps)))
        return
    with tempfile.TemporaryDirectory(prefix="lancell-ab-") as scratch:
        # the same commit twice (an A/A run) is exported once
        code = {c: export(c, Path(scratch) / "code") for c in dict.fromkeys((args.before, args.after))}
        commits = {"before": args.before, "after": args.after}
        atlas = Path(scratch) / "atlas"

        def child(role: str, step: str) -> str:
            commit = commits[role]
            env = {**os.environ, "PYTHONPATH": str(code[commit]), "LANCE_LOG": "error"}
            command = [sys.executable, __file__, args.before, args.after, "--child", step, str(atlas)]
            command += ["--cells", str(args.cells), "--datasets", str(args.datasets)]
            command += ["--nnz-per-cell", str(args.nnz_per_cell), "--reps", str(args.reps)]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stdout + done.stderr)
                raise SystemExit(
                    f"the {step} step with {role} commit {commit} failed (exit code {done.returncode})"
                )
            return done.stdout

        child("before", "build")
        print(
            "warm-up round (each exported tree's numba cache is cold: its first process compiles), discarded",
            flush=True,
        )
        for role in ("before", "after"):
            child(role, "measure")
        runs: dict[str, list[dict[str, list[float]]]] = {"before": [], "after": []}
        for r in range(args.rounds):
            for role in ("before", "after") if r % 2 == 0 else ("after", "before"):
                runs[role].append(json.loads(child(role, "measure").strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n{'work':<24} {'before cpu s':>12} {'after cpu s':>12} {'after/before':>13} {'wall a/b':>9}")
    for name in WORK:
        before = [statistics.median(run[name][i] for run in runs["before"]) for i in (0, 1)]
        after = [statistics.median(run[name][i] for run in runs["after"]) for i in (0, 1)]
        print(
            f"{name:<24} {before[0]:>12.4f} {after[0]:>12.4f} {after[0] / max(before[0], 1e-9):>12.2f}x "
            f"{after[1] / max(before[1], 1e-9):>8.2f}x"
        )


if __name__ == "__main__":
    main()
