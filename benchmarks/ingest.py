"""Ingestion benchmark: cells/s, nonzeros/s, peak RSS and on-disk bytes per nonzero.

Each case runs in a fresh subprocess (so peak RSS is that ingestion's own) from a backed ``.h5ad``:
the bundled real datasets and a seeded synthetic negative-binomial dataset (~2,000 nnz/cell).

    .venv/bin/python benchmarks/ingest.py [--synthetic-cells 50000] [--no-csc] [--reps 3] [--png P]
        [--gzip-png P] [--lzf-png P]

By default ``add_from_anndata`` also writes the feature-major (CSC) copy of datasets of at least
``lancell.storage.csc.CSC_MIN_VALUES`` stored values; ``--no-csc`` measures the CSR write alone (everywhere: the
same-run section then has no "+ CSC" cases). For the synthetic
file it then prints, from the same run (``--reps`` interleaved repetitions, medians): the time h5py alone
takes to read its X (data, indices, indptr; blocks of ``lancell.ingest.sources.TARGET_BLOCK_VALUES`` values into
reused buffers, each repetition in a fresh process), the time the same reads take straight from the file as
ingestion does them (``lancell.ingest.h5_direct``), the ingest time without and with the CSC copy (each in a
fresh process, then the same file again in that process: "again", what a further dataset of a multi-dataset
build costs once numba's start-up is paid), their ratios to the read, and the BP-128 encode rate (G ints/s,
one core, CPU time) on its indices and counts. ``--gzip-png`` repeats all of it for the same file written by
anndata with ``compression="gzip"`` (what public ``.h5ad`` files mostly are), ``--lzf-png`` with
``compression="lzf"``: h5py decompresses their chunks one at a time holding the GIL, ingestion on a pool of
threads (``h5_direct.CompressedRead``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np

from kernels import bitpack as bp
from lancell.bundled import BUNDLED
from lancell.synthetic import write_synthetic_h5ad

RUN = textwrap.dedent(
    """
    import json, os, sys, time
    import pandas as pd, anndata as ad
    from lancell.atlas import RaggedAtlas
    from lancell.bundled import CellSchema, GeneFeature
    from lancell.ingest.from_anndata import add_from_anndata
    root, path, layer, uid_col = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] or None
    csc = None if sys.argv[5] == "default" else sys.argv[5] == "on"
    var = ad.read_h5ad(path, backed="r").var
    uids = (var.index if uid_col is None else var[uid_col]).astype(str).unique()
    atlas = RaggedAtlas.create(root + "/db", "cells", CellSchema, store=root + "/arrays",
                               registry_schemas={"gene_expression": GeneFeature})
    atlas.register_features("gene_expression", pd.DataFrame({"uid": uids, "gene_symbol": uids}))
    def peak_rss():  # this process's own peak (VmHWM): ru_maxrss starts from the parent's peak at the fork
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    before = peak_rss()
    started = time.perf_counter()
    record = add_from_anndata(atlas, path, feature_space="gene_expression", zarr_layer=layer,
                              var_uid_column=uid_col, csc=csc, progress=False)
    seconds = time.perf_counter() - started
    again = None
    if sys.argv[6] == "again":  # the same file once more in this process: the one-off costs are paid
        started = time.perf_counter()
        add_from_anndata(atlas, path, feature_space="gene_expression", zarr_layer=layer, var_uid_column=uid_col,
                         csc=csc, progress=False, on_duplicate="allow")
        again = time.perf_counter() - started
    group = os.path.join(root, "arrays", record.zarr_group)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(group) for f in fs)
    arrays = {}
    for name in ("csr/indices", "csr/layers/" + layer, "layers/" + layer):
        folder = os.path.join(group, name)
        if os.path.isdir(folder):
            arrays[name] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    print(json.dumps({"cells": record.n_cells, "nnz": record.nnz, "seconds": seconds, "again": again, "bytes": size,
                      "arrays": arrays, "setup_peak": before,
                      "peak": peak_rss()}))
    """
)


COMPRESSED_COPY = (
    "import sys, anndata as ad; ad.read_h5ad(sys.argv[1]).write_h5ad(sys.argv[2], compression=sys.argv[3])"
)

READ = textwrap.dedent(
    """
    import sys, time, h5py, numpy as np
    from lancell.ingest.h5_direct import decompressor_pool, range_reader
    from lancell.ingest.sources import TARGET_BLOCK_VALUES as step
    started = time.perf_counter()
    with h5py.File(sys.argv[1], "r") as f, decompressor_pool() as pool:
        x = f["X"]
        indptr = x["indptr"][:]
        names = ("data", "indices")
        if sys.argv[2] == "direct":
            readers = [range_reader(x[name], pool) for name in names]
        else:
            readers = [lambda out, lo, hi, d=x[name]: d.read_direct(out, np.s_[lo:hi]) for name in names]
        buffers = [np.empty(step, x[name].dtype) for name in names]
        for lo in range(0, int(indptr[-1]), step):
            hi = min(lo + step, int(indptr[-1]))
            for read, buffer in zip(readers, buffers):
                read(buffer[: hi - lo], lo, hi)
    print(time.perf_counter() - started)
    """
)


def read_seconds(path: Path, reader: str = "h5py") -> float:
    """Seconds reading the X of ``path`` takes (in a fresh process): with h5py alone (``"h5py"``), or as
    ingestion reads it, straight from the file (``"direct"``: :class:`lancell.ingest.h5_direct.DirectRead`)."""
    os.sync()  # no write-back of earlier cases' files running beside this one
    done = subprocess.run(
        [sys.executable, "-c", READ, str(path), reader], capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def encode_rates(path: Path, values: int = 8_000_000, reps: int = 5) -> dict[str, float]:
    """G ints/s of ``kernels.bitpack.encode_chunks`` (4,096-value chunks, as ingestion writes them) on the
    first ``values`` indices (delta) and counts (plain) of ``path``; median of ``reps``, CPU time."""
    os.sync()  # no write-back of the ingestions' files running beside the timing
    with h5py.File(path, "r") as f:
        n = min(values, f["X/data"].shape[0]) // 4_096 * 4_096
        arrays = {"delta": f["X/indices"][:n].astype(np.uint32), "plain": f["X/data"][:n].astype(np.uint32)}
    rates = {}
    for name, x in arrays.items():
        transform = bp.TRANSFORM_DELTA if name == "delta" else bp.TRANSFORM_NONE
        bp.encode_chunks(x[:4_096], 4_096, transform, 4)
        times = []
        for _ in range(reps):
            started = time.thread_time()
            bp.encode_chunks(x, 4_096, transform, 4)
            times.append(time.thread_time() - started)
        rates[name] = n / statistics.median(times) / 1e9
    return rates


TIME_COLORS = {
    "h5py read": "#888",
    "direct read": "#bbb",
    "ingest, no CSC": "#2a7",
    "ingest + CSC": "#27a",
    "again, no CSC": "#8c8",
    "again + CSC": "#8ac",
}
TIME_ORDER = list(TIME_COLORS)


def plot(times: dict[str, list[float]], rates: dict[str, float], png: Path, what: str) -> None:
    """Bar chart of the same-run times (median, min-max whiskers) and the encode rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    names = list(times)
    medians = [statistics.median(times[k]) for k in names]
    spread = [
        [m - min(times[k]) for k, m in zip(names, medians, strict=True)],
        [max(times[k]) - m for k, m in zip(names, medians, strict=True)],
    ]
    left.bar(names, medians, yerr=spread, color=[TIME_COLORS[k] for k in names], capsize=4)
    for i, m in enumerate(medians):
        left.text(i, m, f"{m / medians[0]:.2f}x", ha="center", va="bottom")
    left.tick_params(axis="x", labelsize=8)
    left.set_ylabel("seconds")
    left.set_title(f"ingest vs reading X with h5py alone, same run\n({what})", fontsize=10)
    right.bar([f"encode {k}" for k in rates], list(rates.values()), color="#a72")
    right.axhline(1.5, ls="--", c="k", lw=0.8)
    right.axhline(1.0, ls=":", c="k", lw=0.8)
    right.set_ylabel("G ints/s, one core")
    right.set_title("BP-128 encode (targets 1.5 plain, 1.0 delta)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def same_run_ratios(path: Path, reps: int, png: Path | None, what: str, with_csc: bool = True) -> None:
    """Print the h5py read of X (and the direct read ingestion does) against ingest without and (``with_csc``)
    with the CSC copy, interleaved, medians; each
    ingestion in a fresh process, then the same file again in that process (numba's start-up, lazy imports
    and first-touched memory paid: what each further dataset of a multi-dataset build costs)."""
    cases = [("off", "ingest, no CSC", "again, no CSC")]
    if with_csc:
        cases.append(("on", "ingest + CSC", "again + CSC"))
    times: dict[str, list[float]] = {"h5py read": [], "direct read": []}
    for _, first, again in cases:
        times[first] = []
        times[again] = []
    times = {k: times[k] for k in TIME_ORDER if k in times}
    for _ in range(reps):
        times["h5py read"].append(read_seconds(path, "h5py"))
        times["direct read"].append(read_seconds(path, "direct"))
        for csc, first, again in cases:
            result = run_case("synthetic", path, "counts", None, csc, again=True)
            times[first].append(result["seconds"])
            times[again].append(result["again"])
    read = statistics.median(times["h5py read"])
    print(f"\n{what}: same run, {reps} interleaved repetitions (median [min-max] s, ratio to the h5py read):")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:<16}{t:>8.2f} [{min(ts):.2f}-{max(ts):.2f}]  {t / read:>5.2f}x")
    rates = encode_rates(path)
    print("  BP-128 encode, one core: " + ", ".join(f"{k} {v:.2f} G ints/s" for k, v in rates.items()))
    print(json.dumps({"times": times, "rates": rates}))
    if png is not None:
        plot(times, rates, png, what)


def run_case(
    name: str, path: Path, layer: str, uid_column: str | None, csc: str = "default", again: bool = False
) -> dict[str, object]:
    """Ingest ``path`` in a fresh process (``again``: then once more in that process)."""
    os.sync()  # no write-back of earlier cases' files running beside this one
    with tempfile.TemporaryDirectory() as root:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                RUN,
                root,
                str(path),
                layer,
                uid_column or "",
                csc,
                "again" if again else "",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "LANCE_LOG": "error"},
        )
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(
            f"ingesting {name} ({path}) failed in its child process (exit code {done.returncode})"
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["name"] = name
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synthetic-cells", type=int, default=50_000)
    parser.add_argument("--nnz-per-cell", type=int, default=2_000)
    parser.add_argument(
        "--no-csc",
        action="store_true",
        help="never write the CSC copy (also leaves the '+ CSC' cases out of the same-run section)",
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the same-run ratios")
    parser.add_argument("--png", type=Path, default=None, help="save the same-run chart here")
    parser.add_argument(
        "--gzip-png",
        type=Path,
        default=None,
        help="also measure the synthetic file written by anndata with compression='gzip'; save its chart here",
    )
    parser.add_argument(
        "--lzf-png",
        type=Path,
        default=None,
        help="also measure the synthetic file written by anndata with compression='lzf'; save its chart here",
    )
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
        what = f"{args.synthetic_cells:,} cells x {args.nnz_per_cell:,} nnz, backed .h5ad"
        same_run_ratios(path, args.reps, args.png, what, with_csc=not args.no_csc)
        for compression, png in (("gzip", args.gzip_png), ("lzf", args.lzf_png)):
            if png is None:
                continue
            packed = path.with_name(f"synthetic-{compression}.h5ad")
            # as anndata compresses (gzip: level 4); in a child, so that this process stays small (a child's
            # peak RSS counts from its parent's at the fork)
            subprocess.run(
                [sys.executable, "-c", COMPRESSED_COPY, str(path), str(packed), compression], check=True
            )
            results.append(run_case(f"synthetic {compression}", packed, "counts", None, csc))
            same_run_ratios(packed, args.reps, png, f"{what}, {compression}", with_csc=not args.no_csc)
            packed.unlink()
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
