"""Ingestion benchmark: cells/s, nonzeros/s, peak RSS and on-disk bytes per nonzero.

Each case runs in a fresh subprocess (so peak RSS is that ingestion's own) from a backed ``.h5ad``:
the bundled real datasets and a seeded synthetic negative-binomial dataset (~2,000 nnz/cell).

    .venv/bin/python benchmarks/ingest.py [--synthetic-cells 50000] [--no-csc]

By default ``add_from_anndata`` also writes the feature-major (CSC) copy of datasets of at least
``lancell.csc.CSC_MIN_VALUES`` stored values; ``--no-csc`` measures the CSR write alone.
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

from lancell.bundled import BUNDLED
from lancell.synthetic import write_synthetic_h5ad

RUN = textwrap.dedent(
    """
    import json, os, resource, sys, time
    import pandas as pd, anndata as ad
    from lancell.atlas import RaggedAtlas
    from lancell.bundled import CellSchema, GeneFeature
    from lancell.ingestion import add_from_anndata
    root, path, layer, uid_col = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] or None
    csc = None if sys.argv[5] == "default" else sys.argv[5] == "on"
    var = ad.read_h5ad(path, backed="r").var
    uids = (var.index if uid_col is None else var[uid_col]).astype(str).unique()
    atlas = RaggedAtlas.create(root + "/db", "cells", CellSchema, store=root + "/arrays",
                               registry_schemas={"gene_expression": GeneFeature})
    atlas.register_features("gene_expression", pd.DataFrame({"uid": uids, "gene_symbol": uids}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    record = add_from_anndata(atlas, path, feature_space="gene_expression", zarr_layer=layer,
                              var_uid_column=uid_col, csc=csc, progress=False)
    seconds = time.perf_counter() - started
    group = os.path.join(root, "arrays", record.zarr_group)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(group) for f in fs)
    arrays = {}
    for name in ("csr/indices", "csr/layers/" + layer, "layers/" + layer):
        folder = os.path.join(group, name)
        if os.path.isdir(folder):
            arrays[name] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    print(json.dumps({"cells": record.n_cells, "nnz": record.nnz, "seconds": seconds, "bytes": size,
                      "arrays": arrays, "setup_peak": before,
                      "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    """
)


def run_case(
    name: str, path: Path, layer: str, uid_column: str | None, csc: str = "default"
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as root:
        done = subprocess.run(
            [sys.executable, "-c", RUN, root, str(path), layer, uid_column or "", csc],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "LANCE_LOG": "error"},
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["name"] = name
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synthetic-cells", type=int, default=50_000)
    parser.add_argument("--nnz-per-cell", type=int, default=2_000)
    parser.add_argument("--no-csc", action="store_true", help="never write the CSC copy")
    args = parser.parse_args()
    results = []
    csc = "off" if args.no_csc else "default"
    for dataset in BUNDLED:
        results.append(run_case(dataset.uid, dataset.path, dataset.zarr_layer, dataset.var_uid_column, csc))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "synthetic.h5ad"
        started = time.perf_counter()
        genes = [f"gene{i}" for i in range(30_000)]
        nnz = write_synthetic_h5ad(path, args.synthetic_cells, genes, nnz_per_cell=args.nnz_per_cell, seed=42)
        print(
            f"synthetic: {args.synthetic_cells} cells x 30,000 genes, NB(2, 0.5)+1 counts, "
            f"~{args.nnz_per_cell} nnz/cell (nnz {nnz:,}), seed 42, written in {time.perf_counter() - started:.1f} s"
        )
        results.append(run_case("synthetic", path, "counts", None, csc))
    header = f"{'dataset':<18}{'cells':>9}{'nnz':>13}{'s':>8}{'cells/s':>10}{'Mnnz/s':>8}{'B/nnz':>7}{'peak MiB':>10}{'+ingest MiB':>12}"
    print(header)
    for r in results:
        print(
            f"{r['name']:<18}{r['cells']:>9,}{r['nnz']:>13,}{r['seconds']:>8.2f}{r['cells'] / r['seconds']:>10,.0f}"
            f"{r['nnz'] / r['seconds'] / 1e6:>8.2f}{r['bytes'] / r['nnz']:>7.2f}{r['peak'] / 2**20:>10.0f}"
            f"{(r['peak'] - r['setup_peak']) / 2**20:>12.0f}"
        )
        print(
            f"{'':<18}arrays: " + ", ".join(f"{k} {v / r['nnz']:.2f} B/nnz" for k, v in r["arrays"].items())
        )


if __name__ == "__main__":
    main()
