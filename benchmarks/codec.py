"""Codec benchmark: BP-128 (``kernels.bitpack``) against numcodecs on identical uint32 chunks.

Prints, per data set and codec, bytes per value and encode / decode speed in G ints/s on one core (median
of ``--reps`` timed repetitions after one discarded warm-up, with min and max), then bytes per nonzero of
each CSR matrix (indices, integer values, total), and saves a bar chart. Matrices: a seeded synthetic one
and the bundled real ones under ``data/`` (those present; float values are left out). Every codec runs
single-threaded on the same chunks in the same process and is timed in CPU time of the calling thread
(``time.thread_time``), so that time descheduled on a shared machine does not count; repetitions interleave
the codecs so that the remaining noise (shared caches, clock) hits all of them. The zarr-python reads are
multi-threaded and timed in wall-clock time.

Run: ``.venv/bin/python benchmarks/codec.py`` (options: ``--chunk``, ``--reps``, ``--png``).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import matplotlib
import numba
import numcodecs
import numpy as np
import zarr
from numcodecs import LZ4, Blosc, Zstd
from zarr.codecs import ZstdCodec

from kernels import bitpack as bp
from lancell.storage.codecs import BitpackingCodec

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
REAL = {
    name: ROOT / "data" / f
    for name, f in [
        ("mouse", "mouse_10k_subset.h5ad"),  # 10x 10k subset: dense X, ~70 nnz/cell over 1,000 genes
        ("pbmc68k", "pbmc68k_reduced.h5ad"),  # CSR, ~250 nnz/cell over 765 genes, log-normalized floats
        ("celltypist", "celltypist_sample.h5ad"),  # CSR, ~1,840 nnz/cell over 32,786 genes, integer counts
    ]
}
SYNTHETIC = {"seed": 0, "n_cells": 2000, "n_genes": 30_000, "nnz_per_cell": 2000, "nb_r": 2.0}


def synthetic_csr(seed: int, n_cells: int, n_genes: int, nnz_per_cell: int, nb_r: float) -> tuple:
    """Sorted CSR indices and negative-binomial counts (>= 1) of a seeded synthetic matrix.

    Gene means are log-normal and genes are drawn in proportion to them; cells get a log-normal size factor
    and a log-normal number of nonzeros around ``nnz_per_cell``.
    """
    rng = np.random.default_rng(seed)
    gene_mean = np.exp(rng.normal(-1.0, 1.5, n_genes))
    log_weight = np.log(gene_mean)
    indices, values = [], []
    for _ in range(n_cells):
        nnz = int(np.clip(nnz_per_cell * np.exp(rng.normal(0, 0.3)), 200, n_genes // 2))
        # Weighted sampling without replacement: the nnz largest Gumbel-perturbed log weights.
        genes = np.sort(np.argpartition(log_weight + rng.gumbel(size=n_genes), -nnz)[-nnz:])
        mu = gene_mean[genes] * np.exp(rng.normal(0, 0.3))
        values.append(1 + rng.negative_binomial(nb_r, nb_r / (nb_r + mu)))
        indices.append(genes)
    return np.concatenate(indices).astype(np.uint32), np.concatenate(values).astype(np.uint32)


def real_csr(path: Path) -> tuple | None:
    """CSR indices (uint32) and values (uint32, or None unless non-negative integers) of an h5ad's ``X``,
    dense or CSR; None if the file is absent or ``X`` is neither."""
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        x = f["X"]
        if isinstance(x, h5py.Dataset) and x.ndim == 2:
            dense = x[:]
            rows, cols = np.nonzero(dense)  # row-major: each row's columns ascending, as CSR stores them
            indices, data = cols, dense[rows, cols]
        elif isinstance(x, h5py.Group) and x.attrs.get("encoding-type") == "csr_matrix":
            indices, data = x["indices"][:], x["data"][:]
        else:
            return None
    integer = data.size and np.array_equal(data, np.round(data)) and 0 <= data.min() and data.max() < 2**32
    return indices.astype(np.uint32), data.astype(np.uint32) if integer else None


@dataclass
class Codec:
    """One codec: encode a chunk, decode into a preallocated array, decode allocating."""

    name: str
    encode: Callable[[np.ndarray], object]
    decode_into: Callable[[object, np.ndarray], object]
    decode: Callable[[object], object]
    kernel: Callable[[list, list], None] | None = None  # BP-128 only: the bare numba kernel


def bp128(transform: int) -> Codec:
    def kernel(encoded: list, outs: list) -> None:
        for args, out in zip(encoded, outs, strict=True):
            bp._decode_kernel(args[0], args[1], args[3], args[4], out)

    return Codec(
        "BP-128 " + ("delta" if transform else "plain"),
        lambda x: bp.encode(x, transform),
        bp.decode_into,
        bp.decode,
        kernel,
    )


def numcodec(name: str, codec: numcodecs.abc.Codec) -> Codec:
    return Codec(name, codec.encode, lambda buf, out: codec.decode(buf, out=out), codec.decode)


def peers() -> list[Codec]:
    numcodecs.blosc.set_nthreads(1)
    return [
        numcodec("zstd-1", Zstd(level=1)),
        numcodec("zstd-3", Zstd(level=3)),
        numcodec("lz4", LZ4()),
        numcodec("blosc-zstd-1 bitshuffle", Blosc("zstd", 1, Blosc.BITSHUFFLE)),
        numcodec("blosc-lz4-5 bitshuffle", Blosc("lz4", 5, Blosc.BITSHUFFLE)),
    ]


@dataclass
class Result:
    codec: str
    dataset: str
    n: int
    nbytes: int
    times: dict[str, list[float]] = field(default_factory=dict)

    def rate(self, path: str) -> tuple[float, float, float]:
        """(min, median, max) G ints/s of a path."""
        r = self.n / np.asarray(self.times[path]) / 1e9
        return float(r.min()), float(np.median(r)), float(r.max())


def run(datasets: dict[str, tuple[np.ndarray, int]], chunk: int, reps: int) -> list[Result]:
    """Time every codec on every data set; one warm-up then ``reps`` interleaved repetitions."""
    jobs = []
    for dname, (x, transform) in datasets.items():
        chunks = [x[i : i + chunk] for i in range(0, x.size, chunk)]
        # One reused output per chunk size, as a reader decodes into a scratch buffer: the timings are of
        # the codec, not of first-touching 16 MB of fresh output pages.
        scratch = {c.size: np.empty(c.size, np.uint32) for c in chunks}
        outs = [scratch[c.size] for c in chunks]
        for codec in [bp128(transform), *peers()]:
            encoded = [codec.encode(c) for c in chunks]
            nbytes = sum(len(memoryview(e).cast("B")) for e in encoded)
            result = Result(codec.name, dname, x.size, nbytes)
            steps = {
                "encode": lambda codec=codec, chunks=chunks: [codec.encode(c) for c in chunks],
                "decode_into": lambda codec=codec, enc=encoded, outs=outs: [
                    codec.decode_into(e, o) for e, o in zip(enc, outs, strict=True)
                ],
                "decode": lambda codec=codec, enc=encoded: [codec.decode(e) for e in enc],
            }
            if codec.kernel is not None:
                validated = [bp.validate(e) for e in encoded]
                steps["kernel"] = lambda codec=codec, v=validated, outs=outs: codec.kernel(v, outs)
            decoded = [np.frombuffer(codec.decode(e), np.uint32) for e in encoded]
            if not all(np.array_equal(d, c) for d, c in zip(decoded, chunks, strict=True)):
                raise RuntimeError(f"{codec.name} does not round-trip {dname}")
            jobs.append((result, steps))
    for rep in range(reps + 1):
        for result, steps in jobs:
            for path, step in steps.items():
                t0 = time.thread_time()  # CPU time of this thread: the codecs run on it alone
                step()
                elapsed = time.thread_time() - t0
                if rep:  # rep 0 is the warm-up
                    result.times.setdefault(path, []).append(elapsed)
    return [r for r, _ in jobs]


def fmt(rate: tuple[float, float, float]) -> str:
    return f"{rate[1]:5.2f} [{rate[0]:.2f}-{rate[2]:.2f}]"


def report(results: list[Result], nnz: dict[str, int]) -> list[str]:
    """Print the tables; return them as markdown lines too."""
    head = "| data | codec | B/value | encode | decode_into | decode (alloc) | kernel only |"
    lines = [head, "|" + "---|" * 7]
    for r in results:
        kernel = fmt(r.rate("kernel")) if "kernel" in r.times else ""
        lines.append(
            f"| {r.dataset} | {r.codec} | {r.nbytes / r.n:.3f} | {fmt(r.rate('encode'))} | "
            f"{fmt(r.rate('decode_into'))} | {fmt(r.rate('decode'))} | {kernel} |"
        )
    lines += [
        "",
        "| matrix | codec | indices B/nnz | values B/nnz | total B/nnz |",
        "|---|---|---|---|---|",
    ]
    for source, count in nnz.items():
        by_codec: dict[str, dict[str, int]] = {}
        for r in results:
            if r.dataset.startswith(source + " "):
                key = "BP-128 (delta indices, plain values)" if r.codec.startswith("BP-128") else r.codec
                part = "indices" if r.dataset.endswith("indices") else "values"
                by_codec.setdefault(key, {})[part] = r.nbytes
        for name, parts in by_codec.items():
            cells = [f"{parts[p] / count:.3f}" if p in parts else "–" for p in ("indices", "values")]
            lines.append(
                f"| {source} | {name} | {cells[0]} | {cells[1]} | {sum(parts.values()) / count:.3f} |"
            )
    print("\n".join(lines))
    return lines


def plot(results: list[Result], png: Path) -> None:
    datasets = list(dict.fromkeys(r.dataset for r in results))
    labels = ["BP-128", "BP-128 kernel", *[c.name for c in peers()]]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=False)
    for ax, path in zip(axes, ["decode_into", "encode"], strict=True):
        width = 0.8 / len(labels)
        for j, label in enumerate(labels):
            med, lo, hi = [], [], []
            for d in datasets:
                r = next(
                    r
                    for r in results
                    if r.dataset == d
                    and (r.codec.startswith("BP-128") if label.startswith("BP") else r.codec == label)
                )
                p = "kernel" if label == "BP-128 kernel" else path
                mn, md, mx = r.rate(p) if p in r.times else (0.0, 0.0, 0.0)
                med.append(md)
                lo.append(md - mn)
                hi.append(mx - md)
            if label == "BP-128 kernel" and path == "encode":
                continue
            xs = np.arange(len(datasets)) + (j - len(labels) / 2 + 0.5) * width
            ax.bar(xs, med, width, yerr=[lo, hi], label=label, capsize=2, color=f"C{j}")
        ax.set_xticks(np.arange(len(datasets)), datasets, rotation=15)
        ax.set_ylabel("G ints/s, one core (median, min-max)")
        ax.set_title(path.replace("_into", " (into preallocated output)"))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("BP-128 vs numcodecs on identical uint32 chunks")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba.__version__}, numcodecs {numcodecs.__version__}, "
        f"zarr {zarr.__version__} (blosc 1 thread)"
    )


def zarr_reads(datasets: dict[str, tuple[np.ndarray, int]], chunk: int, reps: int) -> list[str]:
    """Whole-array reads through zarr-python of sharded arrays: BP-128 against zstd, same chunks.

    zarr decodes the chunks of a shard concurrently (asyncio threads), so this is not a one-core number.
    """
    codecs = {"BP-128": None, "zstd-1": ZstdCodec(level=1), "zstd-3": ZstdCodec(level=3)}
    head = "| data | codec | stored MB | read s (median [min-max]) | M values/s | vs zstd-1 |"
    lines = [head, "|" + "---|" * 6]
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {}
        for dname, (x, transform) in datasets.items():
            for cname, codec in codecs.items():
                codec = codec or BitpackingCodec("delta" if transform else "none")
                path = Path(tmp) / f"{dname}-{cname}.zarr".replace(" ", "_")
                a = zarr.create_array(
                    zarr.storage.LocalStore(path),
                    shape=x.shape,
                    dtype="uint32",
                    chunks=(chunk,),
                    shards=(16 * chunk,),
                    compressors=[codec],
                )
                a[:] = x
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                arrays[dname, cname] = (zarr.open_array(zarr.storage.LocalStore(path), mode="r"), size, x)
        times: dict[tuple[str, str], list[float]] = {key: [] for key in arrays}
        for rep in range(reps + 1):
            for key, (a, _, x) in arrays.items():
                t0 = time.perf_counter()
                back = a[:]
                if rep:
                    times[key].append(time.perf_counter() - t0)
                elif not np.array_equal(back, x):
                    raise RuntimeError(f"zarr round trip failed for {key}")
    for (dname, cname), (_, size, x) in arrays.items():
        t = np.asarray(times[dname, cname])
        ratio = np.median(times[dname, "zstd-1"]) / np.median(t)
        lines.append(
            f"| {dname} | {cname} | {size / 1e6:.2f} | {np.median(t):.4f} [{t.min():.4f}-{t.max():.4f}] | "
            f"{x.size / np.median(t) / 1e6:.0f} | {ratio:.2f}x |"
        )
    print("\n".join(lines))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=40_960, help="values per chunk (default 40960)")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (default 7)")
    parser.add_argument("--png", type=Path, default=Path(__file__).with_name("codec.png"))
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"chunks of {args.chunk} uint32 values; {args.reps} reps after 1 warm-up; rates in G ints/s")
    print(f"synthetic: {SYNTHETIC} (log-normal gene means exp(N(-1, 1.5)), size factors exp(N(0, 0.3)))")
    indices, values = synthetic_csr(**SYNTHETIC)
    print(f"synthetic nnz {indices.size}, mean count {values.mean():.2f}, max {values.max()}")
    datasets = {"synthetic indices": (indices, 1), "synthetic counts": (values, 0)}
    nnz = {"synthetic": indices.size}
    for name, path in REAL.items():
        real = real_csr(path)
        if real is None:
            print(f"real data: {path} absent or not a matrix, skipped")
            continue
        counts = "float values, left out" if real[1] is None else f"integer values, max {real[1].max()}"
        print(f"real data: {name} = {path.name}, nnz {real[0].size}, {counts}")
        datasets[f"{name} indices"] = (real[0], 1)
        if real[1] is not None:
            datasets[f"{name} counts"] = (real[1], 0)
        nnz[name] = real[0].size
    results = run(datasets, args.chunk, args.reps)
    report(results, nnz)
    plot(results, args.png)
    print(f"chart: {args.png}")
    print(
        f"\nzarr-python whole-array reads, sharded ({16 * args.chunk} per shard, chunks {args.chunk}), warm:"
    )
    zarr_reads(datasets, args.chunk, args.reps)


if __name__ == "__main__":
    main()
