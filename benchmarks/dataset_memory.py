"""Peak memory of building a loader's dataset (``query.to_cell_dataset``) at two atlas sizes, in fresh processes.

``--build DIR --cells N`` writes an atlas of N cells (at least 20) in 20 datasets of N // 20 cells, the first
N % 20 datasets one cell more (one stored value per cell: the matrix is not what is measured) and snapshots it; ``--measure DIR`` opens its snapshot, builds the dataset of every
cell and prints the process's RSS before, its peak (``ru_maxrss``) after, and the growth per cell (``--json``
appends it to a JSON-lines file, ``--plot`` draws that file's measurements; give at least one of
``--build``, ``--measure`` and ``--plot``). Run the measurement with ``PYTHONPATH`` pointing at another commit's tree to
compare.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

DATASETS, GENES = 20, 50


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def build(root: Path, n_cells: int) -> None:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    import lancell as lc
    from lancell.bundled import CellSchema, GeneFeature

    atlas = lc.RaggedAtlas.create(
        str(root / "db"),
        "cells",
        CellSchema,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    genes = [f"gene{i:03d}" for i in range(GENES)]
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    for d in range(DATASETS):
        per = n_cells // DATASETS + (d < n_cells % DATASETS)  # every cell asked for, none dropped
        rows = np.arange(per)
        x = sp.csr_matrix((rows % 9 + 1, (rows, (rows + d) % GENES)), shape=(per, GENES), dtype=np.int32)
        obs = pd.DataFrame(index=[f"AAACCTGAGAAACCAT-{d:02d}-{i:08d}" for i in rows])
        lc.add_from_anndata(
            atlas,
            ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes)),
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=lc.DatasetRecord(uid=f"ds{d:02d}"),
            csc=False,
            progress=False,
        )
    atlas.optimize()
    atlas.snapshot(note="dataset memory")


def measure(root: Path, label: str, json_path: Path | None) -> None:
    import lancell as lc

    atlas = lc.RaggedAtlas.checkout_latest(str(root / "db"))
    query = atlas.query().layers("gene_expression", "counts")
    before = _rss_mib()
    started = time.perf_counter()
    dataset = query.to_cell_dataset("gene_expression", "counts")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(dataset)
    prefix = f"{label}: " if label else ""
    print(
        f"{prefix}cells {n}: RSS before {before:.0f} MiB, peak {peak:.0f} MiB, after {_rss_mib():.0f} MiB; "
        f"peak - before {peak - before:.0f} MiB = {(peak - before) * 2**20 / n:.0f} B/cell; "
        f"kept {dataset.nbytes()['pointers'] / n:.0f} B/cell; {seconds:.2f} s"
    )
    if json_path is not None:
        with json_path.open("a") as out:
            out.write(json.dumps({"label": label, "cells": n, "growth_mib": peak - before}) + "\n")


def plot(json_path: Path, png: Path) -> None:
    """Peak growth against cells, one line per label (median of its runs at each size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(line) for line in json_path.read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["label"] for r in runs):
        sizes = sorted({r["cells"] for r in runs if r["label"] == label})
        growth = [
            np.median([r["growth_mib"] for r in runs if (r["label"], r["cells"]) == (label, s)])
            for s in sizes
        ]
        ax.plot(np.asarray(sizes) / 1e6, growth, marker="o", label=label)
    ax.set_xlabel("cells (millions)")
    ax.set_ylabel("peak RSS - RSS before (MiB)")
    ax.set_title("building the loader's dataset (to_cell_dataset)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", type=Path)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--measure", type=Path)
    parser.add_argument("--label", default="", help="name of the measured tree, recorded with --json")
    parser.add_argument("--json", type=Path, help="append each measurement to this file (JSON lines)")
    parser.add_argument("--plot", type=Path, help="draw the --json file's measurements into this PNG")
    args = parser.parse_args()
    if not (args.build or args.measure or args.plot):
        parser.error("nothing to do: give --build DIR, --measure DIR and/or --plot PNG")
    if args.plot and args.json is None:
        parser.error("--plot draws the measurements of a --json file: give --json")
    if args.build and args.cells < DATASETS:
        parser.error(f"--cells must be at least {DATASETS} (one cell per dataset), not {args.cells}")
    if args.plot and not args.measure and not args.json.exists():
        parser.error(f"--json {args.json} does not exist: nothing to plot")
    if args.build:
        build(args.build, args.cells)
    if args.measure:
        measure(args.measure, args.label, args.json)
    if args.plot:
        plot(args.json, args.plot)


if __name__ == "__main__":
    main()
