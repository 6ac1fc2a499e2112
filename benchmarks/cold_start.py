"""Cold start: what a fresh process pays before its first query and its first training batch (issue 19).

Every number comes from a fresh interpreter (``subprocess``), ``--repeats`` interleaved rounds, median; ratios
are taken within the run (the machine is shared: absolute seconds swing with its load, ratios less):

- **imports**: ``python -c pass``, ``import lancell``, ``import lancell.atlas``, and the imports users know:
  ``import anndata, lance`` (the goal's yardstick), ``anndata``, ``lance``, ``lancedb``, ``torch``, and
  ``import anndata, lance, lancedb`` (what lancedb adds to the yardstick);
- **first query**: ``import lancell`` + ``RaggedAtlas.checkout_latest`` + the first ``to_anndata`` on the
  bundled atlas (the celltypist dataset's counts, 559 cells x 32,786 genes), the whole process (those three
  steps and its exit, nothing more) against ``import anndata, lance``; inside it the imports, the checkout
  and the first ``to_anndata``; the same process with the libraries the first query imports lazily
  (anndata, lance, ``lancell.query.atlas_query``) imported up front, which leaves the first query's own
  first-time work; and a third one that also runs the second ``to_anndata`` and reads numba's counters;
- **numba**: which kernels the first query called, how many signatures came from numba's cache and how
  many were compiled (``Dispatcher.stats``), and numba's one-off start-up in a process (the first call of a
  cached kernel against its second);
- **first batch**: a training script (imports the atlas and ``lancell.dataloader``, checks out,
  ``to_cell_dataset`` over the bundled counts datasets, ``make_loader``, batch 256): with 2 workers,
  ``iter()`` (starts the workers on a thread; before ``429b618`` it waited for the forkserver's imports -- the
  script's, torch, ``lancell.dataloader`` -- and the forks) and the first batch (read by the training
  process while the workers start), then a second loader in the same process (forkserver running); the
  same with 3 s of other work (a sleep: the script's model set-up) between ``make_loader``, which starts
  the forkserver, and ``iter()``; and with 2 threads (``make_loader(threads=2)``, no processes);
- **first batch, all-BP-128 atlas** (``--bp128-cells``, default 2,000; 0 skips it): the same training script
  with 2 workers and with 0 workers over a small synthetic atlas (two datasets of integer counts with
  different overlapping panels, ``lancell.synthetic.write_synthetic_h5ad`` + ``add_from_anndata``) whose
  counts are all BP-128, so that the loader takes its path for such atlases (its numba helpers, typed lists
  included, run in the fresh process); the bundled atlas does not take it (mouse_10k's counts are floats,
  stored zstd). One discarded run first fills numba's cache for it, as for the first query.

Children run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` dropped), as users' processes do.
Run: ``.venv/bin/python benchmarks/cold_start.py`` (``--repeats 5``). The atlases are built on first use in
``--workdir`` (default ``/tmp/lancell-cold-start``), kept there after the run and reused by later runs;
``--json PATH`` writes the medians; ``--code DIR`` measures another checkout, e.g. an older commit's
``git archive``; ``--plot before=a.json after=b.json --png cold_start.png`` draws runs side by side).
Goals (issue 19): ``import lancell`` <= 1 s; the first-query process <= 1.5x ``import anndata, lance``;
checkout + first ``to_anndata`` <= 0.5 s; first batch <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = ROOT  # the checkout the children import lancell and kernels from (``--code``)

IMPORTS = {
    "python -c pass": "pass",
    "import lancell": "import lancell",
    "import lancell.atlas": "import lancell.atlas",
    "import anndata, lance": "import anndata, lance",
    "import anndata": "import anndata",
    "import lance": "import lance",
    "import lancedb": "import lancedb",
    "import torch": "import torch",
    "import anndata, lance, lancedb": "import anndata, lance, lancedb",  # what lancedb adds to the base
}
BASE = "import anndata, lance"
WORK_S = 3.0
# each in a fresh process: (workers, threads, seconds of other work between make_loader and iter())
LOADERS = {
    "2 workers": ("2", "0", "0"),
    f"2 workers, {WORK_S:.0f} s of other work first": ("2", "0", str(WORK_S)),
    "2 threads": ("0", "2", "0"),
}

FIRST_QUERY = """
import json, sys, time
t0 = time.perf_counter()
import lancell
from lancell.atlas import RaggedAtlas
mode = sys.argv[2] if len(sys.argv) > 2 else "timed"
if mode == "preimport":  # the libraries the first query imports lazily, imported up front
    import anndata, lance, lancell.query.atlas_query
t1 = time.perf_counter()
atlas = RaggedAtlas.checkout_latest(sys.argv[1])
t2 = time.perf_counter()
query = atlas.query().where("dataset_uid = 'celltypist_sample'").layers("gene_expression", "counts")
adata = query.to_anndata()
t3 = time.perf_counter()
assert adata.shape == (559, 32786), adata.shape
out = {"imports": t1 - t0, "checkout": t2 - t1, "first_query": t3 - t2}
if mode == "diagnose":  # a process of its own: the timed one does the goal's three steps and nothing more
    query.to_anndata()
    out["second_query"] = time.perf_counter() - t3
    import kernels, pkgutil, importlib
    from numba.core.registry import CPUDispatcher
    hits = misses = 0
    called = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.__module__ == module.__name__ and value.signatures:
                called.append(f"{info.name}.{name}")
                hits += sum(value.stats.cache_hits.values())
                misses += sum(value.stats.cache_misses.values())
    out.update(kernels=sorted(called), cache_hits=hits, compiled=misses)
print(json.dumps(out))
"""

NUMBA_START = """
import json, time
import numpy as np
from kernels.scatter import keep_mapped
args = (np.ones(2, np.int64), np.zeros(2, np.uint32), np.ones(2, np.uint32), np.zeros(1, np.int64))
t0 = time.perf_counter()
keep_mapped(*args)
t1 = time.perf_counter()
keep_mapped(*args)
t2 = time.perf_counter()
compiled = sum(keep_mapped.stats.cache_misses.values())
print(json.dumps({"first_call": t1 - t0, "second_call": t2 - t1, "compiled": compiled}))
"""

FIRST_BATCH = """
import json, sys, time
t0 = time.perf_counter()
from lancell.atlas import RaggedAtlas
from lancell.dataloader import CellSampler, make_loader
t1 = time.perf_counter()


def first_batch(dataset, workers, threads, work_s):
    sampler = CellSampler(dataset, 256, mode="random", seed=0)
    t0 = time.perf_counter()
    loader = make_loader(dataset, sampler, num_workers=workers, threads=threads)
    t1 = time.perf_counter()
    time.sleep(work_s)  # the training process's own set-up (model, optimizer) before its first batch
    t2 = time.perf_counter()
    batches = iter(loader)
    t3 = time.perf_counter()
    batch = next(batches)
    t4 = time.perf_counter()
    assert batch["X"].shape[0] == 256
    del batches, loader  # persistent workers end
    return {"make_loader": t1 - t0, "iter": t3 - t2, "first_batch": t4 - t3}


if __name__ == "__main__":
    atlas = RaggedAtlas.checkout_latest(sys.argv[1])
    query = atlas.query()
    if len(sys.argv) > 5 and sys.argv[5]:
        query = query.where(sys.argv[5])
    query = query.layers("gene_expression", "counts")
    dataset = query.to_cell_dataset("gene_expression", "counts")
    t2 = time.perf_counter()
    workers, threads, work_s = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    out = {"imports": t1 - t0, "dataset": t2 - t1, **first_batch(dataset, workers, threads, work_s)}
    if workers:
        out.update({f"warm_{k}": v for k, v in first_batch(dataset, workers, 0, 0.0).items()})
    print(json.dumps(out))
"""


def _run(code: str | Path, *args: str) -> tuple[float, str]:
    """Wall time of a fresh interpreter running ``code`` (a script's path, or ``-c`` code; start-up
    included) and its stdout's last line."""
    env = {**os.environ, "LANCE_LOG": "error", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(CODE)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure what users run: compiled bytecode, cached
    command = [str(code)] if isinstance(code, Path) else ["-c", code]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *command, *args], capture_output=True, text=True, env=env, cwd=CODE)
    elapsed = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{str(code).strip().splitlines()[0]!r} failed:\n{out.stderr[-3000:]}")
    return elapsed, out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def _median(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def bundled_atlas(workdir: Path) -> Path:
    """The bundled atlas (``lancell.bundled.build_bundled_atlas``, what ``make demo`` ingests) under
    ``workdir``, built in a child process on first use."""
    db = workdir / "bundled" / "db"
    if not (workdir / "bundled" / "done").exists():
        code = "import sys; from pathlib import Path; from lancell.bundled import build_bundled_atlas; "
        code += "build_bundled_atlas(Path(sys.argv[1]))"
        _run(code, str(db.parent))
        (workdir / "bundled" / "done").write_text("")
    return db


BP128_ATLAS = """
import sys
from pathlib import Path
import numpy as np, pandas as pd
from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.ingest.from_anndata import add_from_anndata
from lancell.synthetic import write_synthetic_h5ad
from lancell.tables.schema import DatasetRecord
root, cells = Path(sys.argv[1]), int(sys.argv[2])
genes = [f"G{i:05d}" for i in range(3000)]
atlas = RaggedAtlas.create(str(root / "db"), "cells", CellSchema, store=str(root / "arrays"),
                           registry_schemas={"gene_expression": GeneFeature})
atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
rng = np.random.default_rng(0)
for i, size in enumerate((cells // 2, cells - cells // 2)):
    panel = np.sort(rng.choice(len(genes), 2000, replace=False))
    path = root / f"syn{i}.h5ad"
    write_synthetic_h5ad(path, size, [genes[j] for j in panel], nnz_per_cell=200, seed=i)
    add_from_anndata(atlas, str(path), feature_space="gene_expression", zarr_layer="counts",
                     dataset_record=DatasetRecord(uid=f"syn{i}"), csc=False, progress=False)
    path.unlink()
atlas.optimize()
atlas.snapshot(note="cold start: all counts BP-128")
dataset = RaggedAtlas.checkout_latest(str(root / "db")).query().to_cell_dataset("gene_expression", "counts")
assert str(dataset.dtype) == "uint32", dataset.dtype  # integer counts: stored BP-128
"""
# the training script over the all-BP-128 atlas: (workers, threads, seconds of other work)
BP128_LOADERS = {
    "all-BP-128 atlas, 2 workers": ("2", "0", "0"),
    "all-BP-128 atlas, 0 workers": ("0", "0", "0"),
}


def bp128_atlas(workdir: Path, cells: int) -> Path:
    """A small synthetic atlas whose counts are all BP-128 (``cells`` cells in two datasets with different
    overlapping panels) under ``workdir``, built in a child process on first use."""
    root = workdir / f"bp128-{cells}"
    if not (root / "done").exists():
        if root.exists():
            shutil.rmtree(root)  # a build that did not finish
        root.mkdir(parents=True)
        _run(BP128_ATLAS, str(root), str(cells))
        (root / "done").write_text("")
    return root / "db"


def measure(db: Path, repeats: int, bp128_db: Path | None = None) -> dict:
    """Every measurement, ``repeats`` interleaved rounds of fresh processes (``bp128_db``: also the first
    batch on that all-BP-128 atlas)."""
    # the training script is a file: the forkserver preloads a script's main module, not ``-c`` code
    script = db.parent.parent / "first_batch.py"
    script.write_text(FIRST_BATCH)
    _run(NUMBA_START)  # numba's cache holds the probe's signature from here on
    _run(FIRST_QUERY, str(db))  # and the first query's kernels; every module's bytecode is cached
    loaders = {name: (str(db), *argv, "dataset_uid != 'pbmc68k'") for name, argv in LOADERS.items()}
    if bp128_db is not None:
        loaders.update({name: (str(bp128_db), *argv, "") for name, argv in BP128_LOADERS.items()})
        _run(script, str(bp128_db), "0", "0", "0", "")  # numba's cache holds this path's kernels; discarded
    walls: dict[str, list[float]] = {name: [] for name in [*IMPORTS, "first query process"]}
    inside, preimported, diagnosed, numba_start = [], [], [], []
    batches: dict[str, list[dict]] = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, code in IMPORTS.items():
            walls[name].append(_run(code)[0])
        wall, out = _run(FIRST_QUERY, str(db))
        walls["first query process"].append(wall)
        inside.append(json.loads(out))
        preimported.append(json.loads(_run(FIRST_QUERY, str(db), "preimport")[1]))
        diagnosed.append(json.loads(_run(FIRST_QUERY, str(db), "diagnose")[1]))
        numba_start.append(json.loads(_run(NUMBA_START)[1]))
        for name, argv in loaders.items():
            batches[name].append(json.loads(_run(script, *argv)[1]))
    return {
        "walls": {name: statistics.median(v) for name, v in walls.items()},
        "inside": {
            **{k: _median(inside, k) for k in ("imports", "checkout", "first_query")},
            "second_query": _median(diagnosed, "second_query"),
        },
        "preimported": {k: _median(preimported, k) for k in ("imports", "checkout", "first_query")},
        "kernels": diagnosed[-1]["kernels"],
        "cache_hits": diagnosed[-1]["cache_hits"],
        "compiled": max(r["compiled"] for r in diagnosed),
        "numba": {k: _median(numba_start, k) for k in ("first_call", "second_call", "compiled")},
        "batch": {name: {k: _median(v, k) for k in v[0]} for name, v in batches.items()},
    }


def report(result: dict, repeats: int) -> None:
    walls, inside, pre, batch = result["walls"], result["inside"], result["preimported"], result["batch"]
    base = walls[BASE]
    print(
        f"\n## imports (fresh processes, median of {repeats} interleaved rounds, interpreter start included)"
    )
    for name, value in walls.items():
        print(f"  {name:32s} {value:6.2f} s  {value / base:5.2f}x {BASE}")
    query = inside["checkout"] + inside["first_query"]
    print(
        f"\n## first query process: {walls['first query process']:.2f} s = "
        f"{walls['first query process'] / base:.2f}x {BASE} (goal <= 1.5x)\n"
        f"  imports {inside['imports']:.2f} s, checkout_latest {inside['checkout']:.2f} s, first to_anndata "
        f"{inside['first_query']:.2f} s (checkout + first query {query:.2f} s, goal <= 0.5 s), second "
        f"to_anndata {inside['second_query']:.3f} s\n"
        f"  with anndata, lance and lancell.query.atlas_query imported up front (imports {pre['imports']:.2f} s): "
        f"checkout + first to_anndata {pre['checkout'] + pre['first_query']:.2f} s (numba's start-up, the "
        f"registry view, the handle's caches)"
    )
    print(
        f"\n## numba: the first query called {len(result['kernels'])} kernels ({', '.join(result['kernels'])}): "
        f"{result['cache_hits']} signatures loaded from numba's cache, {result['compiled']} compiled; "
        f"numba's start-up in a process: first call of a cached kernel {result['numba']['first_call']:.3f} s, "
        f"second {result['numba']['second_call'] * 1e6:.0f} us ({result['numba']['compiled']:.0f} compiled)"
    )
    print("\n## first batch, batch 256 (goal <= 2 s with 2 workers), fresh process each")
    for name, b in batch.items():
        if name in BP128_LOADERS and name == next(iter(BP128_LOADERS)):
            print("  on the all-BP-128 synthetic atlas (--bp128-cells):")
        line = (
            f"  {name:34s} imports {b['imports']:5.2f} s, checkout + to_cell_dataset {b['dataset']:4.2f} s, "
            f"make_loader {b['make_loader']:5.3f} s, iter() {b['iter']:5.2f} s, first batch "
            f"{b['first_batch']:4.2f} s: iter() to first batch {b['iter'] + b['first_batch']:5.2f} s"
        )
        if "warm_iter" in b:
            line += (
                f"; a second loader (forkserver running): iter() {b['warm_iter']:4.2f} s, first batch "
                f"{b['warm_first_batch']:4.2f} s"
            )
        print(line)


def plot(runs: dict[str, dict], png: Path) -> None:
    """Bars of each run's times as multiples of its own ``import anndata, lance`` (``runs``: label -> the
    ``--json`` result), the goals dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def ratios(r: dict) -> dict[str, float]:
        walls, pre, batch = r["walls"], r["preimported"], r["batch"]["2 workers"]
        out = {
            "import lancedb": walls["import lancedb"],
            "import torch": walls["import torch"],
            "import lancell.atlas": walls["import lancell.atlas"],
            "first query process (goal 1.5x)": walls["first query process"],
            "checkout + first to_anndata, imports done": pre["checkout"] + pre["first_query"],
            "first batch, 2 workers: iter() + next()": batch["iter"] + batch["first_batch"],
        }
        for workers in (2, 0):  # the all-BP-128 atlas's (--bp128-cells), where measured
            if (case := r["batch"].get(f"all-BP-128 atlas, {workers} workers")) is not None:
                out[f"all-BP-128 atlas, first batch, {workers} workers"] = case["iter"] + case["first_batch"]
        return out

    names = list(ratios(next(iter(runs.values()))))
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.55 * len(names)))
    height, longest = 0.8 / len(runs), 0.0
    for i, (label, r) in enumerate(runs.items()):
        values = [v / r["walls"][BASE] for v in ratios(r).values()]
        y = [k + i * height for k in range(len(names))]
        ax.barh(y, values, height=height, label=label)
        longest = max(longest, *values)
        for yy, v in zip(y, values, strict=True):
            ax.text(v, yy, f" {v:.2f}x", va="center", fontsize=8)
    ax.axvline(1.5, ls="--", c="k", lw=0.8)
    ax.set_xlim(0, longest * 1.12)
    ax.set_yticks([k + height * (len(runs) - 1) / 2 for k in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlabel(f"x `{BASE}` in the same run (fresh processes, medians)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def git_commit(code: Path) -> str:
    """The short commit of the checkout ``code``, or "unknown" where ``code`` is not the top of a git checkout
    (a ``git archive`` export; one inside another repository's folder would otherwise report that one's)."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, cwd=code)
    if top.returncode or Path(top.stdout.strip()).resolve() != code.resolve():
        return "unknown"
    short = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=code)
    return short.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/lancell-cold-start"),
        help="where the atlases are built on first use, kept and reused (not removed; default: %(default)s)",
    )
    parser.add_argument(
        "--bp128-cells",
        type=int,
        default=2_000,
        help="cells of the small all-BP-128 synthetic atlas whose first batch is also timed (0: skip; "
        "at least 256, one batch; default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--code", type=Path, default=ROOT, help="a checkout (git worktree) of the code to measure"
    )
    parser.add_argument(
        "--plot",
        nargs="+",
        metavar="LABEL=JSON",
        help="draw earlier runs' --json results (e.g. before=a.json after=b.json) into --png and exit",
    )
    parser.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "cold_start.png")
    args = parser.parse_args()
    if args.bp128_cells and args.bp128_cells < 256:
        parser.error(f"--bp128-cells must be 0 (skip) or at least 256 (one batch), not {args.bp128_cells}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.plot:
        runs = {k: json.loads(Path(v).read_text()) for k, v in (item.split("=", 1) for item in args.plot)}
        plot(runs, args.png)
        return
    global CODE
    CODE = args.code.resolve()
    commit = git_commit(CODE)
    db = bundled_atlas(args.workdir)
    bp128_db = bp128_atlas(args.workdir, args.bp128_cells) if args.bp128_cells else None
    load = os.getloadavg()[0]
    print(f"commit {commit}, {os.cpu_count()} cores, load average {load:.1f} at the start", flush=True)
    result = measure(db, args.repeats, bp128_db)
    result.update(commit=commit, load_start=load, load_end=os.getloadavg()[0])
    report(result, args.repeats)
    print(f"\nload average at the end: {result['load_end']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
