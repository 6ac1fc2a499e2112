"""The CSC copy's trade-off: what it adds to an ingestion, what it saves a feature-filtered query.

One seeded synthetic backed ``.h5ad`` (``--cells`` x ~``--nnz-per-cell`` integer counts of 30,000 genes) is
ingested, each time in a fresh process into a new atlas, ``--ingest-reps`` times in each of three ways,
alternated (after one discarded round on a small file, which fills numba's cache: no timed ingestion
compiles): ``csc=False``, ``csc=True``, and ``csc=False`` followed by ``add_csc`` (the copy written later;
both steps timed). The medians are printed. Then, in this process, the atlases of the last round without and
with the copy answer the same queries of every cell of the dataset and ``--genes`` random genes
(``query().features(...).to_anndata()``), after one discarded query of each: the first call on a freshly
opened handle, then the best of ``--reps``, the two atlases in alternating order. Both answers are checked
equal.

    .venv/bin/python benchmarks/csc_tradeoff.py [--cells 50000] [--nnz-per-cell 2000] [--genes 1,10,100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from lancell.atlas import RaggedAtlas
from lancell.synthetic import write_synthetic_h5ad

N_GENES = 30_000

INGEST = textwrap.dedent(
    """
    import json, sys, time
    import anndata as ad, pandas as pd
    from lancell.atlas import RaggedAtlas
    from lancell.bundled import CellSchema, GeneFeature
    from lancell.ingest.add_csc import add_csc
    from lancell.ingest.from_anndata import add_from_anndata
    root, path, csc = sys.argv[1], sys.argv[2], sys.argv[3]
    uids = ad.read_h5ad(path, backed="r").var_names.astype(str)
    atlas = RaggedAtlas.create(root + "/db", "cells", CellSchema, store=root + "/arrays",
                               registry_schemas={"gene_expression": GeneFeature})
    atlas.register_features("gene_expression", pd.DataFrame({"uid": uids, "gene_symbol": uids}))
    started = time.perf_counter()
    record = add_from_anndata(atlas, path, feature_space="gene_expression", zarr_layer="counts",
                              csc=csc == "on", progress=False)
    seconds = time.perf_counter() - started
    later = None
    if csc == "later":
        started = time.perf_counter()
        add_csc(atlas, record.uid)
        later = time.perf_counter() - started
    atlas.optimize()
    print(json.dumps({"seconds": seconds, "later": later}))
    """
)


def ingest(root: Path, path: Path, csc: str) -> dict[str, float | None]:
    """Ingest ``path`` into a new atlas at ``root`` in a fresh process (``csc``: off, on or later); the
    seconds of the ingestion and of the later ``add_csc``."""
    os.sync()
    done = subprocess.run(
        [sys.executable, "-c", INGEST, str(root), str(path), csc],
        capture_output=True,
        text=True,
        env={**os.environ, "LANCE_LOG": "error"},
    )
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"the ingestion (csc {csc}) of {path} failed (exit code {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each query (the best is kept)")
    parser.add_argument("--ingest-reps", type=int, default=3, help="ingestions of each kind (median)")
    args = parser.parse_args()
    if min(args.cells, args.nnz_per_cell, args.reps, args.ingest_reps) < 1:
        parser.error("--cells, --nnz-per-cell, --reps and --ingest-reps must be at least 1")
    counts = [int(g) for g in args.genes.split(",")]
    if not all(1 <= n <= N_GENES for n in counts):
        parser.error(f"--genes: counts between 1 and {N_GENES:,}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        genes = [f"gene{i}" for i in range(N_GENES)]
        nnz = write_synthetic_h5ad(
            root / "x.h5ad", args.cells, genes, nnz_per_cell=args.nnz_per_cell, seed=42
        )
        runs: dict[str, list[dict[str, float | None]]] = {"off": [], "on": [], "later": []}
        kinds = list(runs)
        # numba's cache: the kernels of all three kinds compiled (and stored) once, on a small file, untimed
        write_synthetic_h5ad(root / "warm.h5ad", 200, genes, nnz_per_cell=50, seed=1)
        for csc in ("on", "later"):
            ingest(root / f"warm-{csc}", root / "warm.h5ad", csc)
            shutil.rmtree(root / f"warm-{csc}")
        print("numba's cache warmed by one discarded ingestion of a 200-cell file (csc on, then later)")
        for rep in range(args.ingest_reps):
            for csc in kinds[rep % 3 :] + kinds[: rep % 3]:  # each kind first in turn
                shutil.rmtree(root / csc, ignore_errors=True)  # the last round's atlases are queried
                runs[csc].append(ingest(root / csc, root / "x.h5ad", csc))
        off, on = (statistics.median(r["seconds"] for r in runs[c]) for c in ("off", "on"))
        later = statistics.median(r["later"] for r in runs["later"])
        print(
            f"{args.cells:,} cells x {nnz / args.cells:,.0f} nnz ({nnz:,} values), one backed .h5ad, "
            f"medians of {args.ingest_reps} ingestions of each kind, alternated:"
        )
        if on - off > 1e-3:
            compared = f"{later / (on - off):.2f}x the copy written while ingesting"
        else:
            compared = "against the copy written while ingesting: n/a, that copy cost nothing measurable"
        print(
            f"  ingest without the CSC copy {off:6.2f} s, with it {on:6.2f} s ({on / off:.2f}x; the copy "
            f"{on - off:.2f} s); add_csc later {later:6.2f} s ({compared})"
        )
        print(
            "  query of every cell and N genes (s: first call on a fresh handle / best of "
            f"{args.reps}), without / with the copy:"
        )
        atlases = {csc: RaggedAtlas.open(str(root / csc / "db"), read_only=True) for csc in ("off", "on")}
        for atlas in atlases.values():  # the process's one-off costs, paid before any timing
            feature_query(atlas, genes[:1])
        rng = np.random.default_rng(0)
        for turn, n in enumerate(counts):
            chosen = list(rng.choice(genes, n, replace=False))
            first, best, answers = {}, {}, {}
            for csc in ("off", "on") if turn % 2 == 0 else ("on", "off"):
                atlas = RaggedAtlas.open(str(root / csc / "db"), read_only=True)  # a fresh handle
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
