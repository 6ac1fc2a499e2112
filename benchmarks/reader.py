"""Batched shard reader benchmark: random-cell reads/s against zarr-python, and chunk-size choices.

For 1,000 cells drawn uniformly from the whole dataset, each method reads every cell's CSR indices and
counts (two 1-D sharded arrays) from the same files:

- ``batched``: :class:`lancell.storage.shard_reader.ShardedArrayReader`, one reader per array kept across
  repetitions (metadata and shard indices cached, as in a query session or a loader worker);
- ``batched, new reader``: a fresh reader per repetition (reads ``zarr.json`` and every shard index again);
- ``lancell before``: the previous ``lancell.storage.reader`` (ranges coalesced into runs, one zarr slice per run);
- ``zarr per-slice``: ``array[start:end]`` per cell;
- ``zarr coordinates``: one ``get_coordinate_selection`` with the coordinates of every element.

Datasets: ``celltypist_sample`` from the bundled atlas, and a seeded synthetic dataset
(``write_synthetic_h5ad`` + ``add_from_anndata``) of ``--cells`` cells x ``--nnz`` nonzeros per cell. Each
repetition draws new cells; all methods read the same cells, interleaved; one warm-up repetition is
discarded (and checks that every method returns the same values); the page cache is warm.

The geometry study rewrites the first ``--geometry-cells`` synthetic cells with other chunk / shard sizes and
codecs and measures the batched reader (reads/s, bytes fetched and decoded per cell) against the number of
objects an atlas of 1M such cells would hold.

Run: ``.venv/bin/python benchmarks/reader.py`` (``--cells 200000 --nnz 2000 --reps 5 --workdir DIR``). The
atlases are built in ``--workdir`` (default ``lancell-bench-reader`` in the temporary folder, ``/tmp``), kept
there after the run and reused by later runs (the synthetic one per ``--cells`` and ``--nnz``); the geometry
study's arrays are written again under ``geometry/`` every run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import obstore.store
import pandas as pd
import zarr
import zarr.codecs
import zarr.storage

from kernels.gather import plan_pieces
from lancell.atlas import RaggedAtlas
from lancell.bundled import build_bundled_atlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage import reader as lancell_reader
from lancell.storage.codecs import BitpackingCodec
from lancell.storage.shard_reader import MISSING, ShardedArrayReader
from lancell.synthetic import write_synthetic_h5ad
from lancell.tables.schema import FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
ARRAYS = ("csr/indices", "csr/layers/counts")


class Gene(FeatureBaseSchema):
    pass


class Cells(LancellBaseSchema):
    cell_type: str | None = None
    gene_expression: SparseZarrPointer | None = None


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores, {memory:.0f} GiB, Python {platform.python_version()}"
    )


def synthetic_atlas(workdir: Path, n_cells: int, nnz: int) -> tuple[Path, str, float]:
    """Build (or reuse) the synthetic atlas; return its arrays directory, group name and build seconds."""
    root = workdir / f"synthetic_{n_cells}_{nnz}"
    done = root / "GROUP"
    if done.exists():
        return root / "arrays", done.read_text(), float("nan")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    genes = [f"gene{i}" for i in range(30_000)]
    start = time.perf_counter()
    write_synthetic_h5ad(root / "synthetic.h5ad", n_cells, genes, nnz_per_cell=nnz, seed=0)
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        Cells,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes}))
    record = add_from_anndata(
        atlas,
        str(root / "synthetic.h5ad"),
        feature_space="gene_expression",
        zarr_layer="counts",
        progress=False,
    )
    seconds = time.perf_counter() - start
    (root / "synthetic.h5ad").unlink()
    done.write_text(record.zarr_group)
    return root / "arrays", record.zarr_group, seconds


def bundled_atlas(workdir: Path) -> tuple[Path, str]:
    root = workdir / "bundled"
    if not (root / "GROUP").exists():
        shutil.rmtree(root, ignore_errors=True)
        atlas = build_bundled_atlas(root)
        records = atlas.core.tables.datasets.to_arrow().select(["uid", "zarr_group"]).to_pylist()
        (root / "GROUP").write_text(next(r["zarr_group"] for r in records if r["uid"] == "celltypist_sample"))
    return root / "arrays", (root / "GROUP").read_text()


def coordinates(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lengths = ends - starts
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + offsets


def methods(arrays_dir: Path, group: str) -> tuple[dict[str, Callable], list[ShardedArrayReader]]:
    """The read methods over one group, each ``f(starts, ends) -> list of flat arrays``."""
    store = obstore.store.LocalStore(str(arrays_dir))
    root = zarr.open_group(zarr.storage.ObjectStore(store, read_only=True), mode="r")
    arrays = [root[f"{group}/{name}"] for name in ARRAYS]
    # The same files through zarr's own LocalStore: lancell.storage.reader then takes its zarr-python path.
    plain = zarr.open_group(zarr.storage.LocalStore(arrays_dir, read_only=True), mode="r")
    plain_arrays = [plain[f"{group}/{name}"] for name in ARRAYS]
    readers = [ShardedArrayReader(store, a.path) for a in arrays]
    return {
        "batched": lambda s, e: [r.read_ranges(s, e)[0] for r in readers],
        "batched, new reader": lambda s, e: [
            ShardedArrayReader(store, a.path).read_ranges(s, e)[0] for a in arrays
        ],
        "lancell before": lambda s, e: [lancell_reader.read_element_ranges(a, s, e)[0] for a in plain_arrays],
        "zarr per-slice": lambda s, e: [
            np.concatenate([a[int(i) : int(j)] for i, j in zip(s, e, strict=True)]) for a in arrays
        ],
        "zarr coordinates": lambda s, e: [a.get_coordinate_selection(coordinates(s, e)) for a in arrays],
    }, readers


def time_methods(
    funcs: dict[str, Callable], indptr: np.ndarray, n_random: int, reps: int, rng: np.random.Generator
) -> dict[str, list[float]]:
    """Seconds per repetition for each method (warm-up discarded, results cross-checked)."""
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for rep in range(reps + 1):
        cells = rng.integers(0, indptr.size - 1, n_random)
        starts, ends = indptr[cells], indptr[cells + 1]
        results = {}
        for name, func in funcs.items():
            start = time.perf_counter()
            results[name] = func(starts, ends)
            elapsed = time.perf_counter() - start
            if rep:
                times[name].append(elapsed)
        if rep == 0:
            reference = results["zarr per-slice"]
            for name, got in results.items():
                assert all(np.array_equal(x, y) for x, y in zip(got, reference, strict=True)), name
    return times


def summary(seconds: list[float], n: int) -> tuple[float, float, float]:
    rates = sorted(n / s for s in seconds)
    return rates[0], statistics.median(rates), rates[-1]


def run_dataset(label: str, arrays_dir: Path, group: str, args: argparse.Namespace) -> dict[str, object]:
    funcs, readers = methods(arrays_dir, group)
    root = zarr.open_group(zarr.storage.LocalStore(arrays_dir, read_only=True), mode="r")
    indptr = root[f"{group}/csr/indptr"][:]
    indices = root[f"{group}/csr/indices"]
    shards = -(-indices.shape[0] // indices.shards[0])
    print(
        f"\n### {label}: {indptr.size - 1:,} cells, nnz {indptr[-1]:,} ({indptr[-1] / (indptr.size - 1):.0f}/cell)"
    )
    codecs = {name: [c.to_dict()["name"] for c in root[f"{group}/{name}"].compressors] for name in ARRAYS}
    print(
        f"geometry: chunk {indices.chunks[0]:,} elements, shard {indices.shards[0]:,} elements, {shards} shards "
        f"per array; codecs {codecs}"
    )
    times = time_methods(funcs, indptr, args.random_cells, args.reps, np.random.default_rng(args.seed))
    cells = np.random.default_rng(args.seed).integers(0, indptr.size - 1, args.random_cells)
    span = sum(coalesced_read(r, indptr[cells], indptr[cells + 1]) for r in readers)
    rates = {name: summary(t, args.random_cells) for name, t in times.items()}
    calls = sum(r.get_ranges_calls for r in readers) / (args.reps + 1)
    chunks = sum(r.chunks_decoded for r in readers) / (args.reps + 1)
    fetched = sum(r.bytes_fetched for r in readers) / (args.reps + 1)
    touched = sum(r.shards_touched for r in readers) / (args.reps + 1)
    print(f"{'method':22s} {'min':>10s} {'median':>10s} {'max':>10s}  cells/s   batched speed-up (median)")
    best = rates["batched"][1]
    for name, (lo, med, hi) in rates.items():
        print(f"{name:22s} {lo:10,.0f} {med:10,.0f} {hi:10,.0f}  {best / med:6.1f}x")
    print(
        f"per {args.random_cells} cells and both arrays: {touched:.0f} shards touched, {calls:.0f} get_ranges "
        f"({calls / touched:.2f} per shard touched), {chunks / calls:.1f} chunks per get_ranges, "
        f"{fetched / args.random_cells / 1024:.1f} KiB of chunks needed and {span / args.random_cells / 1024:.1f} "
        "KiB read by get_ranges (ranges < 1 MiB apart merged) per cell"
    )
    return {"label": label, "rates": rates, "cells": indptr.size - 1, "nnz": int(indptr[-1])}


def amplification(starts: np.ndarray, ends: np.ndarray, chunk: int) -> float:
    """Decoded elements (each touched chunk once) per requested element."""
    chunk_ids = np.unique(plan_pieces(starts, ends, chunk)[0])
    return chunk_ids.size * chunk / float((ends - starts).sum())


GEOMETRIES = [
    *((c, 1_048_576, "zstd") for c in (4096, 16384, 65536)),
    *((c, 4_194_304, "bitpacking") for c in (4096, 16384, 65536)),
    *((4096, s, "bitpacking") for s in (262_144, 1_048_576, 16_777_216)),
]
CHUNK_SWEEPS = {("zstd", 1_048_576), ("bitpacking", 4_194_304)}
COPY_BLOCK = 2 * 16_777_216  # a whole number of shards of every geometry
OBSTORE_COALESCE = 1 << 20  # object_store merges the ranges of one get_ranges call closer than this


def coalesced_read(reader: ShardedArrayReader, starts: np.ndarray, ends: np.ndarray) -> int:
    """Bytes the reader's ``get_ranges`` calls read for these ranges, after object_store's range merging."""
    layout = reader.layout
    chunks = np.unique(plan_pieces(starts, ends, layout.chunk_len)[0])
    total = 0
    for shard in np.unique(chunks // layout.chunks_per_shard).tolist():
        index = reader._indices.get(shard)
        if index is None:
            continue
        entries = index[chunks[chunks // layout.chunks_per_shard == shard] - shard * layout.chunks_per_shard]
        entries = entries[entries[:, 0] != MISSING]
        begin = np.sort(entries[:, 0].astype(np.int64))
        reach = np.maximum.accumulate(begin + entries[np.argsort(entries[:, 0]), 1].astype(np.int64))
        breaks = np.flatnonzero(begin[1:] - reach[:-1] > OBSTORE_COALESCE) + 1
        firsts, lasts = np.r_[0, breaks], np.r_[breaks - 1, begin.size - 1]
        total += int((reach[lasts] - begin[firsts]).sum())
    return total


def write_geometries(source: zarr.Group, nnz: int, out: Path) -> dict[tuple, obstore.store.LocalStore]:
    """Copy the first ``nnz`` elements of both arrays into one store per geometry, shard-aligned blocks."""
    stores, targets = {}, []
    for chunk, shard, codec in GEOMETRIES:
        path = out / f"{codec}_{chunk}_{shard}"
        shutil.rmtree(path, ignore_errors=True)
        stores[(chunk, shard, codec)] = store = obstore.store.LocalStore(str(path), mkdir=True)
        root = zarr.open_group(zarr.storage.ObjectStore(store), mode="w")
        for name in ARRAYS:
            if codec == "zstd":
                compressors = [zarr.codecs.ZstdCodec(level=3)]
            else:
                compressors = [BitpackingCodec("delta" if name.endswith("indices") else "none")]
            targets.append(
                root.create_array(
                    name,
                    shape=(nnz,),
                    dtype="uint32",
                    chunks=(chunk,),
                    shards=(shard,),
                    compressors=compressors,
                )
            )
    for start in range(0, nnz, COPY_BLOCK):
        stop = min(nnz, start + COPY_BLOCK)
        block = {name: source[name][start:stop] for name in ARRAYS}
        for target in targets:
            target[start:stop] = block[target.path]
    return stores


def geometry_study(arrays_dir: Path, group: str, args: argparse.Namespace) -> list[dict[str, object]]:
    """Rewrite the first cells with other chunk / shard sizes and codecs; time the batched reader."""
    source = zarr.open_group(zarr.storage.LocalStore(arrays_dir, read_only=True), mode="r")[group]
    indptr = source["csr/indptr"][: args.geometry_cells + 1]
    nnz = int(indptr[-1])
    nnz_per_cell = nnz / (indptr.size - 1)
    out = Path(args.workdir) / "geometry"
    start = time.perf_counter()
    stores = write_geometries(source, nnz, out)
    print(
        f"\n### chunk / shard geometry: first {indptr.size - 1:,} synthetic cells, nnz {nnz:,} "
        f"(written in {time.perf_counter() - start:.0f} s)"
    )
    print(
        f"{'chunk':>6s} {'shard':>9s} {'codec':>10s} {'MiB/shard':>9s} {'obj/1M cells':>12s} "
        f"{'decoded/needed':>14s} {'(large atlas)':>13s} {'KiB chunks/cell':>15s} {'KiB read/cell':>13s} "
        f"{'chunks/get':>10s} "
        f"{'cells/s median':>14s} {'min':>8s} {'max':>8s}"
    )
    readers = {
        geometry: [ShardedArrayReader(store, name) for name in ARRAYS] for geometry, store in stores.items()
    }
    seconds: dict[tuple, list[float]] = {geometry: [] for geometry in stores}
    amp: dict[tuple, list[float]] = {geometry: [] for geometry in stores}
    span: dict[tuple, list[int]] = {geometry: [] for geometry in stores}
    rng = np.random.default_rng(args.seed)
    # Geometries interleave within each repetition (same cells for all), so machine noise hits them alike.
    for rep in range(args.reps + 1):
        cells = rng.integers(0, indptr.size - 1, args.random_cells)
        starts, ends = indptr[cells], indptr[cells + 1]
        for geometry, pair in readers.items():
            begin = time.perf_counter()
            for r in pair:
                r.read_ranges(starts, ends)
            if rep:
                seconds[geometry].append(time.perf_counter() - begin)
                amp[geometry].append(amplification(starts, ends, geometry[0]))
                span[geometry].append(sum(coalesced_read(r, starts, ends) for r in pair))
    rows = []
    for (chunk, shard, codec), pair in readers.items():
        path = Path(stores[(chunk, shard, codec)].prefix)
        stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")
        n_shards = 2 * -(-nnz // shard)
        lo, med, hi = summary(seconds[(chunk, shard, codec)], args.random_cells)
        fetched = sum(r.bytes_fetched for r in pair) / (args.reps + 1) / args.random_cells / 1024
        per_get = sum(r.chunks_decoded for r in pair) / sum(r.get_ranges_calls for r in pair)
        row = {
            "chunk": chunk,
            "shard": shard,
            "codec": codec,
            "mib_per_shard": stored / n_shards / 2**20,
            "objects_per_1m": n_shards / (indptr.size - 1) * 1e6,
            "amplification": statistics.median(amp[(chunk, shard, codec)]),
            "large_atlas": (chunk + nnz_per_cell - 1) / nnz_per_cell,
            "kib_fetched": fetched,
            "kib_read": statistics.median(span[(chunk, shard, codec)]) / args.random_cells / 1024,
            "rates": (lo, med, hi),
        }
        rows.append(row)
        print(
            f"{chunk:6d} {shard:9,d} {codec:>10s} {row['mib_per_shard']:9.2f} {row['objects_per_1m']:12,.0f} "
            f"{row['amplification']:14.1f} {row['large_atlas']:13.1f} {fetched:15.1f} {row['kib_read']:13.1f} "
            f"{per_get:10.1f} "
            f"{med:14,.0f} {lo:8,.0f} {hi:8,.0f}"
        )
    shutil.rmtree(out)
    print(
        f"(objects: shard files of both arrays per 1M cells of {nnz_per_cell:.0f} nnz; large atlas: "
        "(chunk + nnz - 1) / nnz, the amplification when no two sampled cells share a chunk; KiB chunks: "
        "encoded chunks needed; KiB read: what get_ranges reads once it merges ranges < 1 MiB apart)"
    )
    return rows


def plot(results: list[dict[str, object]], geometry: list[dict[str, object]], png: Path) -> None:
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.8))
    names = list(results[0]["rates"])
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        med = [r["rates"][name][1] for r in results]
        err = [
            [m - r["rates"][name][0] for m, r in zip(med, results, strict=True)],
            [r["rates"][name][2] - m for m, r in zip(med, results, strict=True)],
        ]
        left.bar(np.arange(len(results)) + k * width, med, width, yerr=err, label=name)
    left.set_xticks(np.arange(len(results)) + 0.4 - width / 2, [r["label"] for r in results])
    left.set_yscale("log")
    left.set_ylabel("random cells/s (indices + counts), median, min-max")
    left.set_title("1,000 truly random cells, warm page cache")
    left.legend(fontsize=8)
    panels = (
        (middle, "chunk", lambda g: (g["codec"], g["shard"]) in CHUNK_SWEEPS, ("codec", "shard")),
        (right, "shard", lambda g: g["chunk"] == 4096 and g["codec"] == "bitpacking", ("codec", "chunk")),
    )
    for axis, x, keep, series in panels:
        rows = [g for g in geometry if keep(g)]
        for key in sorted({tuple(g[k] for k in series) for g in rows}):
            line = sorted((g for g in rows if tuple(g[k] for k in series) == key), key=lambda g: g[x])
            med = [g["rates"][1] for g in line]
            err = [[m - g["rates"][0] for m, g in zip(med, line, strict=True)]]
            err.append([g["rates"][2] - m for m, g in zip(med, line, strict=True)])
            label = ", ".join(
                f"{k} {v:,}" if isinstance(v, int) else v for k, v in zip(series, key, strict=True)
            )
            axis.errorbar([g[x] for g in line], med, yerr=err, marker="o", capsize=3, label=label)
            for g in line:
                note = f"{g['amplification']:.0f}x" if x == "chunk" else f"{g['objects_per_1m']:,.0f} obj"
                axis.annotate(note, (g[x], g["rates"][1]), fontsize=7)
        axis.set_xscale("log", base=2)
        axis.set_ylabel("batched random cells/s")
        axis.legend(fontsize=8)
    middle.set_xlabel("chunk (elements); labels: decoded / needed elements")
    middle.set_title("chunk size (100k synthetic cells)")
    right.set_xlabel("shard (elements); labels: objects per 1M cells")
    right.set_title("shard size, 4,096-element BP-128 chunks")
    if not geometry:
        middle.set_visible(False)
        right.set_visible(False)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--nnz", type=int, default=2000)
    parser.add_argument("--random-cells", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--geometry-cells", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "lancell-bench-reader"),
        help="where the atlases are built, kept and reused between runs (not removed; default: %(default)s)",
    )
    parser.add_argument("--png", default=str(ROOT / "benchmarks" / "reader.png"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {machine()}; zarr {zarr.__version__}, numpy {np.__version__}")
    results = [run_dataset("celltypist_sample", *bundled_atlas(workdir), args)]
    arrays_dir, group, seconds = synthetic_atlas(workdir, args.cells, args.nnz)
    built = "reused" if seconds != seconds else f"built in {seconds:.0f} s"
    print(f"\nsynthetic: {args.cells:,} cells x ~{args.nnz} nnz/cell, 30,000 genes, seed 0 ({built})")
    results.append(run_dataset(f"synthetic {args.cells // 1000}k", arrays_dir, group, args))
    geometry = geometry_study(arrays_dir, group, args) if args.geometry_cells else []
    plot(results, geometry, Path(args.png))
    print(f"\nplot: {args.png}")


if __name__ == "__main__":
    main()
