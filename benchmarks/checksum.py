"""What a crc32c on every chunk costs the batched reader: decode throughput with and without it.

The same synthetic CSR data (``synthetic_counts``: ``--cells`` cells x ~``--nnz`` sorted gene indices, NB
counts, and their log1p as float32) is written twice in lancell's geometry: with the chunk pipeline of
:func:`lancell.storage.groups.value_codecs` (BP-128 or zstd, then crc32c) and with the same pipeline less the crc32c.
Four measurements:

- ``stages``: every chunk decoded alone on one thread (BP-128 or zstd), and its crc32c checked alone (best
  of 7 passes); the cost of the checksum as a fraction of the decoder's time, free of I/O and scheduling;
- ``random cells``: the batched reader (:class:`lancell.storage.shard_reader.ShardedArrayReader`, indices cached)
  reading ``--random-cells`` random cells' indices, counts and floats per repetition, values/s;
- ``scan``: the same reader decoding every cell of the arrays, values/s;
- ``bit flips``: what a random single-bit flip in a stored chunk without a crc32c decodes to.

Both reader workloads alternate which pipeline goes first; the ratio is the median of per-repetition ratios.

Run: ``.venv/bin/python benchmarks/checksum.py`` (``--cells 10000 --nnz 2000 --reps 25``); the arrays are
written to a temporary folder removed at the end, or to ``--workdir DIR``, kept there. Results and the decision
in ``docs/integrity.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import obstore.store
import zarr
import zarr.storage

from lancell.errors import CodecError
from lancell.storage.codecs import BYTES_DECODERS
from lancell.storage.groups import DEFAULT_GEOMETRY, value_codecs
from lancell.storage.shard_index import MISSING
from lancell.storage.shard_reader import ShardedArrayReader
from lancell.synthetic import synthetic_counts

ARRAYS = {"indices": ("uint32", "indices"), "counts": ("uint32", "values"), "floats": ("float32", "values")}


def write(root: zarr.Group, pipeline: str, data: dict[str, np.ndarray]) -> None:
    """The arrays of ``data`` under ``<pipeline>/``, with (``crc``) or without (``plain``) chunk crc32c."""
    geometry = DEFAULT_GEOMETRY
    for name, (dtype, role) in ARRAYS.items():
        codecs = value_codecs(np.dtype(dtype), role)
        if pipeline == "plain":
            codecs = {**codecs, "compressors": codecs["compressors"][:-1]}
        array = root.create_array(
            f"{pipeline}/{name}",
            shape=data[name].shape,
            dtype=dtype,
            chunks=(geometry.sparse_chunk,),
            shards=(geometry.sparse_shard,),
            **codecs,
        )
        array[:] = data[name]


def chunk_buffers(store: obstore.store.LocalStore, reader: ShardedArrayReader) -> list[np.ndarray]:
    """Every stored chunk of the reader's array, as bytes."""
    layout, chunks = reader.layout, []
    n_shards = -(-layout.shape[0] // layout.shard_shape[0])
    reader.read_ranges(
        np.arange(n_shards) * layout.shard_shape[0], np.arange(n_shards) * layout.shard_shape[0] + 1
    )
    for shard in range(n_shards):
        entries = reader._indices[shard]
        entries = entries[entries[:, 0] != MISSING].astype(np.int64)
        key = layout.shard_key(reader.path, shard)
        got = obstore.get_ranges(store, key, starts=entries[:, 0].tolist(), ends=entries.sum(axis=1).tolist())
        chunks += [np.frombuffer(b, np.uint8) for b in got]
    return chunks


def stage_times(chunks: list[np.ndarray], decoder: str) -> tuple[float, float]:
    """Seconds to check every chunk's crc32c, and to decode every chunk (its crc32c stripped)."""
    check, decode = BYTES_DECODERS["crc32c"], BYTES_DECODERS[decoder]
    start = time.perf_counter()
    bodies = [check(c) for c in chunks]
    crc = time.perf_counter() - start
    start = time.perf_counter()
    for body in bodies:
        decode(body)
    return crc, time.perf_counter() - start


def bit_flips(chunks: list[np.ndarray], decoder: str, n: int, rng: np.random.Generator) -> tuple[int, int]:
    """Of ``n`` random single-bit flips (one chunk each, no crc32c): how many decode without an error, and
    how many of those to different values."""
    decode = BYTES_DECODERS[decoder]
    silent = wrong = 0
    for k in rng.integers(0, len(chunks), n):
        chunk = chunks[k].copy()
        bit = int(rng.integers(0, 8 * chunk.size))
        chunk[bit // 8] ^= np.uint8(1 << (bit % 8))
        try:
            out = decode(chunk)
        except CodecError:
            continue
        silent += 1
        wrong += out.size != decode(chunks[k]).size or not np.array_equal(out, decode(chunks[k]))
    return silent, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--nnz", type=int, default=2_000)
    parser.add_argument("--random-cells", type=int, default=1_000)
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="write the arrays here and keep them (default: a temporary folder, removed at the end)",
    )
    args = parser.parse_args()
    if min(args.cells, args.nnz, args.random_cells, args.reps) < 1:
        parser.error("--cells, --nnz, --random-cells and --reps must be at least 1")
    if args.workdir is not None:
        run(args, args.workdir)
        print(f"\nthe arrays are kept in {args.workdir}")
        return
    with tempfile.TemporaryDirectory(prefix="lancell-checksum-") as scratch:
        run(args, Path(scratch))


def run(args: argparse.Namespace, workdir: Path) -> None:
    """Write the two pipelines' arrays under ``workdir`` and print the four measurements."""
    x = synthetic_counts(args.cells, 30_000, args.nnz, np.random.default_rng(0))
    data = {
        "indices": x.indices.astype(np.uint32),
        "counts": x.data.astype(np.uint32),
        "floats": np.log1p(x.data).astype(np.float32),
    }
    store = obstore.store.LocalStore(str(workdir), mkdir=True)
    root = zarr.open_group(zarr.storage.ObjectStore(store), mode="w")
    for pipeline in ("plain", "crc"):
        write(root, pipeline, data)
    readers = {
        (p, name): ShardedArrayReader(store, f"{p}/{name}") for p in ("plain", "crc") for name in ARRAYS
    }
    assert all(readers["crc", name].layout.chunk_crc for name in ARRAYS)
    cores = len(os.sched_getaffinity(0))
    print(f"{platform.processor() or platform.machine()}, {cores} cores, load {os.getloadavg()[0]:.1f}")
    print(
        f"{args.cells:,} cells, nnz {x.nnz:,}; chunks {DEFAULT_GEOMETRY.sparse_chunk:,} in shards of "
        f"{DEFAULT_GEOMETRY.sparse_shard:,} elements\n"
    )

    print("| array | stored bytes, plain | + crc32c | decode (1 thread) | crc32c check | crc / decode |")
    print("|---|---|---|---|---|---|")
    for name in ARRAYS:
        chunks = chunk_buffers(store, readers["crc", name])
        sizes = [sum(c.size for c in chunk_buffers(store, readers[p, name])) for p in ("plain", "crc")]
        decoder = "zstd" if name == "floats" else "lancell.bitpacking"
        timings = [stage_times(chunks, decoder) for _ in range(7)]
        crc, decode = (min(t) for t in zip(*timings, strict=True))  # best of 7: the least disturbed
        print(
            f"| {name} | {sizes[0]:,} | +{sizes[1] - sizes[0]:,} (+{100 * (sizes[1] / sizes[0] - 1):.2f} %) | "
            f"{x.nnz / decode / 1e6:,.0f} M values/s | {sizes[1] / crc / 1e9:.1f} GB/s | "
            f"{100 * crc / decode:.1f} % |"
        )

    print("\n| array, no crc32c | single-bit flips | decode without an error | ... to wrong values |")
    print("|---|---|---|---|")
    for name in ARRAYS:
        decoder = "zstd" if name == "floats" else "lancell.bitpacking"
        silent, wrong = bit_flips(
            chunk_buffers(store, readers["plain", name]), decoder, 2000, np.random.default_rng(2)
        )
        print(f"| {name} | 2,000 | {100 * silent / 2000:.1f} % | {100 * wrong / 2000:.1f} % |")

    indptr = x.indptr.astype(np.int64)
    rng = np.random.default_rng(1)
    rates: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.reps + 1):
        cells = rng.integers(0, args.cells, args.random_cells)
        workloads = {"random cells": (indptr[cells], indptr[cells + 1]), "scan": (indptr[:-1], indptr[1:])}
        for workload, (starts, ends) in workloads.items():
            results = {}
            for pipeline in ("plain", "crc") if rep % 2 else ("crc", "plain"):
                start = time.perf_counter()
                results[pipeline] = [readers[pipeline, n].read_ranges(starts, ends)[0] for n in ARRAYS]
                seconds = time.perf_counter() - start
                if rep:  # the first repetition warms up and checks
                    rates.setdefault((workload, pipeline), []).append(
                        3 * int((ends - starts).sum()) / seconds
                    )
            assert all(np.array_equal(a, b) for a, b in zip(results["plain"], results["crc"], strict=True))
    print("\n| batched reader (median of reps) | plain, M values/s | crc32c, M values/s | crc32c / plain |")
    print("|---|---|---|---|")
    for workload in ("random cells", "scan"):
        plain, crc = (np.asarray(rates[workload, p]) / 1e6 for p in ("plain", "crc"))
        ratio = statistics.median(crc / plain)  # paired by repetition: both saw the same load
        print(f"| {workload} | {np.median(plain):,.1f} | {np.median(crc):,.1f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
