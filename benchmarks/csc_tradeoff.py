"""The CSC copy's trade-off: what it adds to an ingestion, what it saves a feature-filtered query.

One seeded synthetic backed ``.h5ad`` (``--cells`` x ~``--nnz-per-cell`` integer counts of 30,000 genes) is
ingested twice, each in a fresh process, into two atlases: ``csc=False`` and ``csc=True``. Then, in this
process, both atlases answer the same queries of every cell of the dataset and ``--genes`` random genes
(``query().features(...).to_anndata()``), alternating: the first call on a freshly opened handle, then the
best of ``--reps``. Prints seconds and ratios (without / with the copy) and checks both answers are equal.

    .venv/bin/python benchmarks/csc_tradeoff.py [--cells 50000] [--nnz-per-cell 2000] [--genes 1,10,100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from lancell.atlas import RaggedAtlas
from lancell.synthetic import write_synthetic_h5ad

INGEST = textwrap.dedent(
    """
    import json, sys, time
    import anndata as ad, pandas as pd
    from lancell.atlas import RaggedAtlas
    from lancell.bundled import CellSchema, GeneFeature
    from lancell.ingest.from_anndata import add_from_anndata
    root, path, csc = sys.argv[1], sys.argv[2], sys.argv[3] == "on"
    uids = ad.read_h5ad(path, backed="r").var_names.astype(str)
    atlas = RaggedAtlas.create(root + "/db", "cells", CellSchema, store=root + "/arrays",
                               registry_schemas={"gene_expression": GeneFeature})
    atlas.register_features("gene_expression", pd.DataFrame({"uid": uids, "gene_symbol": uids}))
    started = time.perf_counter()
    add_from_anndata(atlas, path, feature_space="gene_expression", zarr_layer="counts", csc=csc, progress=False)
    seconds = time.perf_counter() - started
    atlas.optimize()
    print(json.dumps({"seconds": seconds}))
    """
)


def ingest(root: Path, path: Path, csc: str) -> float:
    """Ingest ``path`` into a new atlas at ``root`` in a fresh process; its seconds."""
    os.sync()
    done = subprocess.run(
        [sys.executable, "-c", INGEST, str(root), str(path), csc],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LANCE_LOG": "error"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def feature_query(atlas: RaggedAtlas, genes: list[str]) -> tuple[float, object]:
    """Seconds of one query of every cell and ``genes``, and its matrix."""
    started = time.perf_counter()
    out = atlas.query().layers("gene_expression", "counts").features(genes, "gene_expression").to_anndata()
    return time.perf_counter() - started, out.X


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--nnz-per-cell", type=int, default=2_000)
    parser.add_argument("--genes", default="1,10,100,1000", help="comma-separated gene counts per query")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        genes = [f"gene{i}" for i in range(30_000)]
        nnz = write_synthetic_h5ad(
            root / "x.h5ad", args.cells, genes, nnz_per_cell=args.nnz_per_cell, seed=42
        )
        seconds = {csc: ingest(root / csc, root / "x.h5ad", csc) for csc in ("off", "on")}
        print(f"{args.cells:,} cells x {nnz / args.cells:,.0f} nnz ({nnz:,} values), one backed .h5ad:")
        print(
            f"  ingest without the CSC copy {seconds['off']:6.2f} s, with it {seconds['on']:6.2f} s "
            f"({seconds['on'] / seconds['off']:.2f}x)"
        )
        print(
            "  query of every cell and N genes (s: first call on a fresh handle / best of "
            f"{args.reps}), without / with the copy:"
        )
        rng = np.random.default_rng(0)
        for n in (int(g) for g in args.genes.split(",")):
            chosen = list(rng.choice(genes, n, replace=False))
            first, best, answers = {}, {}, {}
            for csc in ("off", "on"):  # a fresh handle each: the first call pays opening the arrays
                atlas = RaggedAtlas.open(str(root / csc / "db"), read_only=True)
                first[csc], answers[csc] = feature_query(atlas, chosen)
                best[csc] = min(feature_query(atlas, chosen)[0] for _ in range(args.reps))
            if (answers["off"] != answers["on"]).nnz:
                raise AssertionError(f"{n} genes: the answers without and with the CSC copy differ")
            print(
                f"  {n:>6,} genes  first {first['off']:6.3f} / {first['on']:6.3f}  best {best['off']:6.3f} / "
                f"{best['on']:6.3f}  ({best['off'] / best['on']:.1f}x faster with the copy)"
            )


if __name__ == "__main__":
    main()
