"""Query -> AnnData latency: lancell vs TileDB-SOMA on the same data, in one run.

Patterns: cell-oriented (one cell type, every gene), feature-oriented (20 genes, every cell) and combined
(one cell type, 20 genes). Each is timed "first" (lancell: the pattern's first call on a freshly checked-out
atlas, nothing queried on it before; TileDB-SOMA opens the experiment in every call) and then warm (median of
``--reps`` more calls on the same handle, the first call serving as the warm-up). The row counts of the two
answers are compared after timing, on the answers of the first calls. Data: the bundled integer-count datasets, and a seeded
synthetic ragged atlas (``--datasets`` datasets with different overlapping panels of a 30k-gene universe).

    .venv/bin/python benchmarks/query.py [--cells 200000] [--datasets 20] [--nnz-per-cell 500]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import tiledbsoma
import tiledbsoma.io

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, CellSchema, GeneFeature
from lancell.ingest.from_anndata import add_from_anndata
from lancell.synthetic import synthetic_counts
from lancell.tables.schema import DatasetRecord

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, list[float], Any]:
    """``(first call s, [s of each of reps more calls], the first call's answer)``."""
    started = time.perf_counter()
    answer = fn()
    first = time.perf_counter() - started
    runs = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return first, runs, answer


def synthetic_datasets(n_cells: int, n_datasets: int, nnz_per_cell: int, seed: int = 7) -> list[ad.AnnData]:
    """Ragged datasets: each keeps a random 60-90 % of a 30k-gene universe, labelled cells."""
    rng = np.random.default_rng(seed)
    universe = np.array([f"gene{i}" for i in range(30_000)])
    types = np.array(["T cell", "B cell", "monocyte", "NK cell", "dendritic cell"])
    out = []
    for d in range(n_datasets):
        panel = np.sort(rng.choice(30_000, int(30_000 * rng.uniform(0.6, 0.9)), replace=False))
        cells = n_cells // n_datasets
        x = synthetic_counts(cells, panel.size, nnz_per_cell, rng)
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical(rng.choice(types, cells))},
            index=[f"d{d}_c{i}" for i in range(cells)],
        )
        out.append(ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=universe[panel])))
    return out


def build_lancell(root: Path, datasets: dict[str, ad.AnnData]) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        CellSchema,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    genes = pd.Index([]).append([a.var_names for a in datasets.values()]).unique()
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    for uid, adata in datasets.items():
        add_from_anndata(
            atlas,
            adata,
            feature_space="gene_expression",
            zarr_layer="normalized",
            dataset_record=DatasetRecord(uid=uid),
            progress=False,
        )
    atlas.optimize()
    atlas.snapshot()
    return RaggedAtlas.checkout_latest(str(root / "db"))


def build_soma(root: Path, datasets: dict[str, ad.AnnData]) -> str:
    parts = []
    for uid, adata in datasets.items():  # views of X, not copies: the 1M-cell run holds 4 GB of values
        names = pd.Index([f"{uid}:{n}" for n in adata.obs_names])
        cell_type = adata.obs["cell_type"].astype(str).to_numpy() if "cell_type" in adata.obs else "none"
        obs = pd.DataFrame({"cell_type": cell_type}, index=names)
        parts.append(ad.AnnData(X=adata.X, obs=obs, var=adata.var))
    combined = ad.concat(parts, join="outer")
    combined.var["gene"] = combined.var_names
    uri = str(root / "soma")
    tiledbsoma.io.from_anndata(uri, combined, measurement_name="RNA")
    return uri


def run(name: str, datasets: dict[str, ad.AnnData], cell_type: str, reps: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    genes = pd.Index([]).append([a.var_names for a in datasets.values()]).unique()
    picked = list(rng.choice(genes, 20, replace=False))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        build_lancell(root / "lancell", datasets)
        lancell_ingest = time.perf_counter() - started
        started = time.perf_counter()
        soma_uri = build_soma(root, datasets)
        soma_ingest = time.perf_counter() - started
        print(f"[{name}] ingest: lancell {lancell_ingest:.1f} s, TileDB-SOMA {soma_ingest:.1f} s")
        where = f"cell_type = '{cell_type}'"
        lancell_patterns = {
            "cell": lambda atlas: atlas.query().where(where).to_anndata(),
            "feature": lambda atlas: atlas.query().features(picked, "gene_expression").to_anndata(),
            "combined": lambda atlas: (
                atlas.query().where(where).features(picked, "gene_expression").to_anndata()
            ),
        }
        soma_filter = f"cell_type == '{cell_type}'"
        gene_filter = f"gene in {picked}"

        def soma(obs_filter: str | None, var_filter: str | None) -> Callable[[], object]:
            def query() -> object:
                with tiledbsoma.Experiment.open(soma_uri) as exp:
                    q = exp.axis_query(
                        "RNA",
                        obs_query=tiledbsoma.AxisQuery(value_filter=obs_filter),
                        var_query=tiledbsoma.AxisQuery(value_filter=var_filter),
                    )
                    return q.to_anndata(X_name="data")

            return query

        soma_patterns = {
            "cell": soma(soma_filter, None),
            "feature": soma(None, gene_filter),
            "combined": soma(soma_filter, gene_filter),
        }
        rows = []
        for pattern, query in lancell_patterns.items():
            fresh = RaggedAtlas.checkout_latest(str(root / "lancell" / "db"))  # nothing queried on it yet
            lf, lr, ours = timed(lambda query=query, fresh=fresh: query(fresh), reps)
            sf, sr, theirs = timed(soma_patterns[pattern], reps)
            assert ours.n_obs == theirs.n_obs, (pattern, ours.n_obs, theirs.n_obs)
            row = {
                "data": name,
                "pattern": pattern,
                "cells": ours.n_obs,
                "genes": ours.n_vars,
                "lancell_first": lf,
                "lancell": lr,
                "soma_first": sf,
                "soma": sr,
            }
            rows.append(row)
            print(
                f"[{name}] {pattern:<9} {ours.n_obs:>8} cells x {ours.n_vars:>6} genes | "
                f"lancell min/med/max {min(lr):.3f}/{statistics.median(lr):.3f}/{max(lr):.3f} s (first {lf:.3f}) | "
                f"SOMA {min(sr):.3f}/{statistics.median(sr):.3f}/{max(sr):.3f} s (first {sf:.3f}) | "
                f"ratio {statistics.median(sr) / statistics.median(lr):.2f}x"
            )
    return rows


def plot(rows: list[dict[str, object]], path: Path) -> None:
    labels = [f"{r['data']}\n{r['pattern']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 1.2), 4))
    ax.bar(x - 0.2, [statistics.median(r["lancell"]) for r in rows], 0.4, label="lancell")
    ax.bar(x + 0.2, [statistics.median(r["soma"]) for r in rows], 0.4, label="TileDB-SOMA 2.3.0")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("query -> AnnData, median s (warm)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--nnz-per-cell", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--plot", type=Path, default=RESULTS / "query.png")
    args = parser.parse_args()
    if args.reps < 1 or args.datasets < 1 or args.cells < args.datasets:
        parser.error("--reps and --datasets must be at least 1, --cells at least --datasets")
    # the two human datasets (PBMC 68k carries the cell-type labels) in one layer, ragged panels
    bundled = {d.uid: d.read() for d in BUNDLED if d.organism == "Homo sapiens"}
    rows = run("bundled", bundled, "CD14+ Monocyte", args.reps)
    print(f"synthetic: {args.cells} cells, {args.datasets} datasets, ~{args.nnz_per_cell} nnz/cell, seed 7")
    synthetic = {
        f"syn{i}": a for i, a in enumerate(synthetic_datasets(args.cells, args.datasets, args.nnz_per_cell))
    }
    rows += run("synthetic", synthetic, "monocyte", args.reps)
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
