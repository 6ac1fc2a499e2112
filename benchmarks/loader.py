"""Loader benchmark: truly random (and locality) training batches, cells/s vs workers, against peers.

Every loader draws batches from the *whole* dataset (no contiguous prefix) and returns sparse rows:

- ``lancell random``: :class:`CellSampler` ``mode="random"`` (a uniform permutation of all cells per epoch);
- ``lancell locality``: ``mode="locality"`` (blocks of ``batch_size // 8`` contiguous cells from all groups,
  shuffled together every epoch; not random access, reported with its batch entropy);
- ``lancell random 2 threads`` / ``lancell locality 2 threads``: the same samplers read by
  ``make_loader(threads=2)`` (a ``ThreadedLoader``: two reading threads in this process, no workers);
- ``anndata backed``: a map-style dataset over one backed ``.h5ad`` of the same cells (union of genes),
  ``BatchSampler(RandomSampler)``, each batch one ``X[sorted rows]`` read (the status quo);
- ``scDataset``: ``scdataset==0.3.0``, ``BlockShuffling(block_size=1)`` (truly random), ``fetch_factor=16``,
  over the same backed ``.h5ad`` (opened lazily in each worker);
- ``annbatch``: ``annbatch==0.3.1`` (Python >= 3.12: run in the side venv ``.venv-peers``, created here with
  ``PYENV_VERSION=3.12 python3.12 -m venv`` and ``pip install annbatch==0.3.1 zarrs``; skipped with a message
  where no ``python3.12`` exists) over its pre-shuffled collection of the same ``.h5ad``, ``chunk_size=32,
  preload_nchunks=256``, in its own process with the zarrs pipeline (``benchmarks/loader_annbatch.py``);
  pre-shuffled on disk, so not random access; reported as 0 workers (it reads in its own threads);
- ``tiledbsoma-ml``: ``tiledbsoma-ml==0.1.0`` ``ExperimentDataset(shuffle=True)`` with its default
  ``shuffle_chunk_size=64`` (quasi-random: chunks of 64 consecutive cells) and ``io_batch_size=8192``, over a
  SOMA experiment written by ``tiledbsoma.io.from_h5ad`` from the same ``.h5ad``; ``return_sparse_X=True``
  with 0 workers, dense X with workers (its sparse mode raises NotImplementedError in worker processes).

Each (data, loader, batch size, workers) runs one warm-up window and ``--windows`` timed windows of
``--window-cells`` cells (a window also stops after ``--max-window-s`` seconds; loaders that read ahead in big
fetches are timed over at least two whole fetches); peers get ``--peer-windows`` timed windows: cells/s min/median/max over
the timed windows, the time to the first batch (worker start-up), the mean batch entropy over dataset labels
(bits), and the peak RSS of the process and all its children (workers, forkserver) sampled every 20 ms (RSS
counts shared pages once per process, so it overstates), and the CPU time per timed cell of the process and its
children (less disturbed than wall time when other work shares the cores; the ratios print both). Page cache
warm: each loader's files are read once before it is timed.

Data: ``bundled`` = the bundled atlas's two "counts" datasets (celltypist 559 cells x 32,786 genes, mouse
10,000 x 1,000); ``synthetic`` = ``--datasets`` seeded datasets (``write_synthetic_h5ad``, NB counts,
``--nnz`` nonzeros per cell) with different overlapping random panels of 12k-24k genes from a 30k universe,
``--cells`` cells in total, ingested with ``add_from_anndata``.

Run: ``.venv/bin/python benchmarks/loader.py`` (``--cells 200000``; ``--cells 1000000`` for the 1M run).
The built data persist in ``--workdir`` (default ``/tmp/lancell-bench-loader``, never removed by this script)
and are reused by later runs: the synthetic data in a folder named by ``--cells``, ``--datasets`` and ``--nnz``,
so a run with other sizes builds its own. ``--json FILE`` writes the result rows (rewritten after every
measurement, so a late failure keeps what was measured); ``benchmarks/RESULTS.md`` is written by hand.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import matplotlib
import numpy as np
import pandas as pd
import psutil
import scipy.sparse as sp
import torch
from anndata.io import sparse_dataset, write_elem
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from kernels import bitpack
from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature, build_bundled_atlas
from lancell.dataloader import CellSampler, batch_entropy, make_loader
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage.reader import array_reader
from lancell.storage.shard_decode import join_buffers
from lancell.synthetic import write_synthetic_h5ad
from lancell.tables.schema import DatasetRecord

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
SPACE = "gene_expression"
UNIVERSE = 30_000
SOMA_IO_BATCH = 8192


# ------------------------------------------------------------------------------------------- memory
class PeakRSS:
    """Peak RSS of this process plus all its descendants, sampled on a thread."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _total(self) -> int:
        total = self._me.memory_info().rss
        for child in self._me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._total())

    def reset(self) -> None:
        self.peak = self._total()


# ------------------------------------------------------------------------------------------- data
def _write_h5ad(path: Path, blocks: Iterator[sp.csr_matrix], obs: pd.DataFrame, var_names: list[str]) -> None:
    """Stream CSR blocks (universe columns) into one h5ad."""
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=pd.Index(var_names)))
        for i, block in enumerate(blocks):
            block.sort_indices()
            if i == 0:
                write_elem(f, "X", block)
            else:
                sparse_dataset(f["X"]).append(block)


def build_bundled(root: Path) -> dict[str, Any]:
    """The bundled atlas (counts datasets) and one h5ad of the same cells for the peers."""
    done = root / "done.json"
    if not done.exists():
        atlas = build_bundled_atlas(root)
        reference = atlas.query().where("dataset_uid != 'pbmc68k'").layers(SPACE, "counts").to_anndata()
        x = sp.csr_matrix(reference.X, dtype=np.float32)
        obs = pd.DataFrame({"dataset": pd.Categorical(reference.obs["dataset_uid"].astype(str))})
        obs.index = reference.obs_names
        _write_h5ad(root / "cells.h5ad", iter([x]), obs, list(reference.var_names))
        done.write_text(json.dumps({"n_cells": reference.n_obs}))
    return {"db": str(root / "db"), "h5ad": root / "cells.h5ad", "where": "dataset_uid != 'pbmc68k'"}


def build_synthetic(root: Path, n_cells: int, n_datasets: int, nnz: int) -> dict[str, Any]:
    """``n_datasets`` synthetic datasets with overlapping panels, as an atlas and as one h5ad."""
    done = root / "done.json"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        genes = [f"G{i:05d}" for i in range(UNIVERSE)]
        atlas = RaggedAtlas.create(
            str(root / "db"),
            "cells",
            CellSchema,
            store=str(root / "arrays"),
            registry_schemas={SPACE: GeneFeature},
        )
        atlas.register_features(SPACE, pd.DataFrame({"uid": genes, "gene_symbol": genes}))
        rng = np.random.default_rng(0)
        sizes = np.full(n_datasets, n_cells // n_datasets)
        sizes[: n_cells % n_datasets] += 1
        parts, started = [], time.perf_counter()
        for i, size in enumerate(sizes):
            panel = np.sort(rng.choice(UNIVERSE, int(rng.integers(12_000, 24_001)), replace=False))
            path = root / f"syn{i:02d}.h5ad"
            write_synthetic_h5ad(path, int(size), [genes[j] for j in panel], nnz_per_cell=nnz, seed=i)
            add_from_anndata(
                atlas,
                path,
                feature_space=SPACE,
                zarr_layer="counts",
                dataset_record=DatasetRecord(uid=f"syn{i:02d}"),
                csc=False,  # the loader reads cells, never the feature-major copy
                progress=False,
            )
            parts.append((path, panel))
            print(f"  dataset {i}: {size} cells, panel {panel.size} genes", flush=True)
        ingest_s = time.perf_counter() - started
        atlas.optimize()
        atlas.snapshot(note="loader benchmark")

        def blocks() -> Iterator[sp.csr_matrix]:
            for path, panel in parts:
                with h5py.File(path) as f:
                    x = sparse_dataset(f["X"])
                    for start in range(0, x.shape[0], 20_000):
                        block = x[start : start + 20_000]
                        yield sp.csr_matrix(
                            (block.data.astype(np.float32), panel[block.indices], block.indptr),
                            shape=(block.shape[0], UNIVERSE),
                        )

        labels = np.repeat([f"syn{i:02d}" for i in range(n_datasets)], sizes)
        obs = pd.DataFrame({"dataset": pd.Categorical(labels)}, index=[f"c{i}" for i in range(n_cells)])
        _write_h5ad(root / "cells.h5ad", blocks(), obs, genes)
        for path, _ in parts:
            path.unlink()
        done.write_text(json.dumps({"n_cells": n_cells, "ingest_s": ingest_s}))
    return {"db": str(root / "db"), "h5ad": root / "cells.h5ad", "where": None}


def build_soma(h5ad: Path) -> str:
    """A SOMA experiment of the h5ad (written in a child process, so its memory stays out of the RSS)."""
    uri = str(h5ad.with_suffix(".soma"))
    if not Path(uri).exists():
        code = (
            "import sys, tiledbsoma.io; "
            "tiledbsoma.io.from_h5ad(sys.argv[1], sys.argv[2], measurement_name='RNA', X_layer_name='data')"
        )
        subprocess.run([sys.executable, "-c", code, uri, str(h5ad)], check=True)
    return uri


# ------------------------------------------------------------------------------------------- peers
class BackedH5adCells(torch.utils.data.Dataset):
    """Map-style dataset over a backed h5ad: one ``X[sorted rows]`` read per batch (opened lazily)."""

    def __init__(self, path: Path, n_cells: int) -> None:
        self.path, self.n_cells, self._x = path, n_cells, None

    def __len__(self) -> int:
        return self.n_cells

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_x": None}

    def __getitems__(self, rows: list[int]) -> tuple[sp.csr_matrix, np.ndarray]:
        if self._x is None:
            self._x = ad.read_h5ad(self.path, backed="r").X
        rows = np.asarray(rows)
        order = np.argsort(rows)
        block = self._x[rows[order]]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        return block[inverse], rows


class RowBlock:
    """Rows of X with their row numbers; sized and indexable, as scDataset's batch callback needs."""

    def __init__(self, x: sp.csr_matrix, rows: np.ndarray) -> None:
        self.x, self.rows = x, rows

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, index: np.ndarray) -> RowBlock:
        return RowBlock(self.x[index], self.rows[index])


class LazyBackedX:
    """``X`` of a backed h5ad for scDataset: indexable, sized, opened lazily in each worker."""

    def __init__(self, path: Path, n_cells: int) -> None:
        self.path, self.n_cells, self._x = path, n_cells, None

    def __len__(self) -> int:
        return self.n_cells

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_x": None}

    def __getitem__(self, rows: np.ndarray) -> RowBlock:
        if self._x is None:
            self._x = ad.read_h5ad(self.path, backed="r").X
        rows = np.asarray(rows)
        return RowBlock(self._x[rows], rows)


def _torch_csr(x: sp.csr_matrix) -> torch.Tensor:
    return torch.sparse_csr_tensor(
        torch.from_numpy(x.indptr.astype(np.int64)),
        torch.from_numpy(x.indices.astype(np.int64)),
        torch.from_numpy(x.data.astype(np.float32)),
        size=x.shape,
        check_invariants=False,
    )


def collate_backed(batch: tuple[sp.csr_matrix, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return _torch_csr(batch[0]), torch.from_numpy(batch[1])


def scdataset_batch(batch: RowBlock) -> tuple[torch.Tensor, torch.Tensor]:
    return _torch_csr(batch.x), torch.from_numpy(batch.rows)


def _forever(make: Callable[[], Any], before_epoch: Callable[[int], None] | None = None) -> Iterator[Any]:
    epoch = 0
    while True:
        if before_epoch is not None:
            before_epoch(epoch)
        yield from make()
        epoch += 1


def _loader_kwargs(workers: int) -> dict[str, Any]:
    if workers == 0:
        return {"num_workers": 0}
    return {
        "num_workers": workers,
        "multiprocessing_context": "forkserver",
        "persistent_workers": True,
        "prefetch_factor": 4,
    }


def make_runs(data: dict[str, Any], dataset: Any, peers: list[str]) -> dict[str, Callable]:
    """``name -> (batch_size, workers) -> (batch iterator, labels of a batch)``."""
    with h5py.File(data["h5ad"]) as f:
        labels = np.asarray(f["obs/dataset/codes"][:], dtype=np.int64)
    n = len(labels)
    ours = dataset.cell_groups

    def lancell(mode: str, threads: int = 0) -> Callable:
        def run(batch_size: int, workers: int):
            sampler = CellSampler(dataset, batch_size, mode=mode, seed=0)
            loader = make_loader(dataset, sampler, num_workers=workers, threads=threads)
            return (
                _forever(lambda: loader, sampler.set_epoch),
                lambda out: ours[out["index"].numpy()],
                batch_size,
            )

        return run

    def backed(batch_size: int, workers: int):
        generator = torch.Generator().manual_seed(0)
        sampler = BatchSampler(RandomSampler(range(n), generator=generator), batch_size, drop_last=False)
        loader = DataLoader(
            BackedH5adCells(data["h5ad"], n),
            batch_sampler=sampler,
            collate_fn=collate_backed,
            **_loader_kwargs(workers),
        )
        return _forever(lambda: loader), lambda out: labels[out[1].numpy()], batch_size

    def scdataset(batch_size: int, workers: int):
        from scdataset import BlockShuffling, scDataset

        collection = LazyBackedX(data["h5ad"], n)
        ds = scDataset(
            collection,
            BlockShuffling(block_size=1),
            batch_size,
            fetch_factor=16,
            batch_transform=scdataset_batch,
            seed=0,
        )
        loader = DataLoader(ds, batch_size=None, **_loader_kwargs(workers))
        return _forever(lambda: loader), lambda out: labels[out[1].numpy()], 16 * batch_size

    def soma(batch_size: int, workers: int):
        import tiledbsoma
        from tiledbsoma_ml import ExperimentDataset, experiment_dataloader

        experiment = tiledbsoma.Experiment.open(build_soma(data["h5ad"]))
        ds = ExperimentDataset(
            experiment.axis_query("RNA"),
            layer_name="data",
            obs_column_names=["soma_joinid"],
            batch_size=batch_size,
            io_batch_size=SOMA_IO_BATCH,
            shuffle=True,
            seed=0,
            return_sparse_X=workers == 0,  # its sparse mode refuses worker processes
        )
        kwargs = _loader_kwargs(workers)
        kwargs.pop("multiprocessing_context", None)  # tiledbsoma-ml switches torch to spawn itself
        loader = experiment_dataloader(ds, **kwargs)

        def before(epoch: int) -> None:
            ds.set_epoch(epoch)

        labels_of = lambda out: labels[out[1]["soma_joinid"].to_numpy()]  # noqa: E731
        return _forever(lambda: loader, before), labels_of, SOMA_IO_BATCH

    runs = {
        "lancell random": lancell("random"),
        "lancell random 2 threads": lancell("random", threads=2),
        "lancell locality": lancell("locality"),
        "lancell locality 2 threads": lancell("locality", threads=2),
    }
    available = {"anndata backed": backed, "scDataset": scdataset, "tiledbsoma-ml": soma}
    runs.update({name: available[name] for name in peers})
    return runs


PEERS = ("anndata backed", "scDataset", "tiledbsoma-ml", "annbatch")
PEERS_VENV = ROOT / ".venv-peers"


def peers_python() -> Path | None:
    """The side venv's python with annbatch 0.3.1 and zarrs (created on first use), or None without 3.12."""
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        if shutil.which("python3.12") is None:
            return None
        env = {**os.environ, "PYENV_VERSION": "3.12"}
        if subprocess.run(["python3.12", "-m", "venv", str(PEERS_VENV)], env=env).returncode:
            return None
        subprocess.run([str(python), "-m", "pip", "install", "-q", "annbatch==0.3.1", "zarrs"], check=True)
    return python


def bench_annbatch(data: dict[str, Any], args: argparse.Namespace, rss: PeakRSS) -> list[dict]:
    """annbatch in the side venv (``benchmarks/loader_annbatch.py``), one result per batch size."""
    python = peers_python()
    if python is None:
        print("  annbatch: skipped, no python3.12 on this machine (annbatch needs Python >= 3.12)")
        return []
    config = {
        "batch_sizes": args.batch_sizes,
        "windows": args.peer_windows,
        "window_cells": args.window_cells,
        "max_window_s": args.max_window_s,
    }
    collection = data["h5ad"].with_name("annbatch.zarr")
    cfg = json.dumps(config)
    rss.reset()
    process = subprocess.Popen(
        [
            str(python),
            str(ROOT / "benchmarks" / "loader_annbatch.py"),
            str(data["h5ad"]),
            str(collection),
            cfg,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    results = []
    for line in process.stdout:
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "built_s" in r:
            print(f"  annbatch collection built in {r['built_s']:.1f} s", flush=True)
            rss.reset()
            continue
        r["peak_rss_gib"] = rss.peak / 2**30
        rss.reset()
        results.append(r)
    if process.wait():
        raise RuntimeError(f"annbatch run failed with exit code {process.returncode}")
    return results


def decode_ceiling(dataset: Any, batch_size: int, n_batches: int = 8) -> float:
    """Cells/s of decoding alone (one BP-128 kernel call, no crc, remap or scatter) the chunks that
    ``n_batches`` truly random batches touch: the bytes a random batch cannot avoid."""
    rng = np.random.default_rng(0)
    cells = rng.permutation(len(dataset))[: batch_size * n_batches]
    group, start, nnz = dataset.cell_groups[cells], dataset.cell_positions[cells], dataset.cell_nnz[cells]
    codes = np.unique(group[nnz > 0])
    arrays = dataset.first_layer_arrays(codes)  # (csr/indices, values) per group
    buffers: dict[int, list[bytes]] = {}  # chunk length -> the encoded chunks of that length
    for code in codes.tolist():
        mine = (group == code) & (nnz > 0)
        for array in arrays[code]:
            reader = array_reader(array)
            length, per_shard = reader.layout.chunk_len, reader.layout.chunks_per_shard
            first, last = start[mine] // length, (start[mine] + nnz[mine] - 1) // length
            chunks = np.unique(
                np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last, strict=True)])
            )
            for chunk in chunks.tolist():
                path, index = reader.local_shard(chunk // per_shard)
                offset, size = (int(v) for v in index[chunk % per_shard])
                with open(path, "rb") as f:
                    f.seek(offset)
                    # the crc32c trailer is not BP-128
                    buffers.setdefault(length, []).append(f.read(size)[:-4])
    # one kernel call per chunk length (groups can be chunked differently: a call decodes equal-length chunks)
    calls = []
    for length, chunks_of_length in buffers.items():
        buf, offsets, sizes = join_buffers(chunks_of_length)
        out = np.empty(len(chunks_of_length) * length, np.uint32)
        bitpack.decode_chunks(buf, offsets, sizes, out)  # compiled and warm
        calls.append((buf, offsets, sizes, out))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for buf, offsets, sizes, out in calls:
            bitpack.decode_chunks(buf, offsets, sizes, out)
        times.append(time.perf_counter() - t0)
    return cells.size / max(min(times), 1e-9)


def cold_start(root: Path, repeats: int) -> list[dict]:
    """The cold-start section: ``benchmarks/cold_start.py`` (fresh processes: imports, the first query on the
    bundled atlas, numba, the first batch), printed, its process medians as result rows."""
    import cold_start as cold  # this script's folder is on sys.path

    result = cold.measure(cold.bundled_atlas(root / "cold-start"), repeats)
    cold.report(result, repeats)
    walls = result["walls"]
    return [{"loader": "cold start", "what": name, "median": value} for name, value in walls.items()]


# ------------------------------------------------------------------------------------------- measuring
def _rows(out: Any) -> int:
    x = out["X"] if isinstance(out, dict) else out[0]
    return int(x.shape[0])


def _entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live descendants (workers, the forkserver)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def measure(
    run: Callable, batch_size: int, workers: int, windows: int, args: argparse.Namespace, rss: PeakRSS
) -> dict:
    gc.collect()
    rss.reset()
    started = time.perf_counter()
    batches, labels_of, granularity = run(batch_size, workers)
    first = next(batches)
    startup = time.perf_counter() - started
    entropies = [_entropy(labels_of(first))]
    rates, timed_cells, cpu = [], 0, 0.0
    # loaders that read ahead in big fetches (scDataset, tiledbsoma-ml) are timed over whole fetch cycles
    window_cells = max(args.window_cells, 2 * granularity)
    max_window_s = args.max_window_s if granularity == batch_size else float("inf")
    for window in range(windows + 1):
        cells, t0, c0 = 0, time.perf_counter(), cpu_seconds()
        while cells < window_cells and (cells == 0 or time.perf_counter() - t0 < max_window_s):
            out = next(batches)
            cells += _rows(out)
            entropies.append(_entropy(labels_of(out)))
        if window:
            rates.append(cells / (time.perf_counter() - t0))
            cpu += cpu_seconds() - c0
            timed_cells += cells
    batches.close()
    del batches, labels_of
    gc.collect()
    return {
        "min": min(rates),
        "median": statistics.median(rates),
        "max": max(rates),
        "startup_s": startup,
        "entropy": float(np.mean(entropies)),
        "peak_rss_gib": rss.peak / 2**30,
        "cpu_us_per_cell": cpu / timed_cells * 1e6,
    }


def warm_page_cache(path: Path) -> None:
    """Read every file under ``path`` once, so that each loader is timed with its data in the page cache.

    The synthetic 1M-cell data (2.3 GB of lancell arrays, a 16 GB h5ad, a 4 GB SOMA experiment) do not all fit
    in the page cache at once: without this, whichever loader runs after the others' files were read (or
    after the data were built) is timed on disk reads.
    """
    started, total = time.perf_counter(), 0
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        with open(file, "rb", buffering=0) as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
    print(f"  page cache: read {total / 2**30:.2f} GiB of {path} in {time.perf_counter() - started:.1f} s")


def bench_data(
    name: str,
    data: dict[str, Any],
    args: argparse.Namespace,
    rss: PeakRSS,
    results: list[dict],
    save: Callable[[], None],
) -> None:
    """Measure every loader on ``data``, appending each result row to ``results`` and calling ``save`` after it."""
    atlas = RaggedAtlas.checkout_latest(data["db"])
    query = atlas.query()
    if data["where"]:
        query = query.where(data["where"])
    dataset = query.to_cell_dataset(SPACE, "counts")
    labels = dataset.cell_groups
    nnz = int(dataset.cell_nnz.sum(dtype=np.int64))
    sizes = dataset.nbytes()
    p = np.bincount(labels) / labels.size
    print(
        f"\n## {name}: {len(dataset):,} cells x {dataset.n_features:,} features (registry), {nnz:,} nnz "
        f"({nnz / len(dataset):,.0f}/cell), {len(dataset.groups.names)} datasets, values {dataset.dtype}; "
        f"dataset object {sizes['pointers'] / len(dataset):.0f} B/cell pointers + "
        f"{sizes['metadata'] / len(dataset):.0f} B/cell metadata + {sizes['groups'] / 2**20:.2f} MiB per-group; "
        f"label entropy over all cells {-(p[p > 0] * np.log2(p[p > 0])).sum():.3f} bits",
        flush=True,
    )
    for mode in ("random", "locality"):
        sampler = CellSampler(dataset, 256, mode=mode, seed=0)
        print(f"  batch entropy (sampler only, batch 256) {mode}: {batch_entropy(dataset, sampler):.3f} bits")
    runs = make_runs(data, dataset, [peer for peer in args.peers if peer != "annbatch"])
    if "tiledbsoma-ml" in runs:
        started = time.perf_counter()
        build_soma(data["h5ad"])
        print(f"  SOMA experiment ready in {time.perf_counter() - started:.1f} s", flush=True)
    files = {
        "lancell": Path(str(RaggedAtlas.checkout_latest(data["db"]).store.prefix)),
        "anndata backed": data["h5ad"],
        "scDataset": data["h5ad"],
        "tiledbsoma-ml": Path(build_soma(data["h5ad"])) if "tiledbsoma-ml" in runs else None,
    }
    for loader_name, run in runs.items():
        warm_page_cache(files[loader_name.split()[0] if loader_name.startswith("lancell") else loader_name])
        for batch_size in args.batch_sizes:
            for workers in args.workers:
                if "threads" in loader_name and workers:
                    continue  # threads of this process: no workers
                windows = args.windows if loader_name.startswith("lancell") else args.peer_windows
                r = measure(run, batch_size, workers, windows, args, rss)
                r.update(data=name, loader=loader_name, batch_size=batch_size, workers=workers)
                results.append(r)
                save()
                print(
                    f"  {loader_name:17s} batch {batch_size:5d} workers {workers}: "
                    f"{r['median']:9,.0f} cells/s [{r['min']:,.0f}-{r['max']:,.0f}]  first batch "
                    f"{r['startup_s']:5.1f} s  entropy {r['entropy']:.3f}  peak RSS {r['peak_rss_gib']:.2f} GiB  "
                    f"CPU {r['cpu_us_per_cell']:.1f} us/cell",
                    flush=True,
                )
    if "annbatch" in args.peers:
        for r in bench_annbatch(data, args, rss):
            r.update(data=name)
            results.append(r)
            save()
            print(
                f"  {'annbatch':17s} batch {r['batch_size']:5d} in-process: {r['median']:9,.0f} cells/s "
                f"[{r['min']:,.0f}-{r['max']:,.0f}]  first batch {r['startup_s']:5.1f} s  entropy "
                f"{r['entropy']:.3f}  peak RSS {r['peak_rss_gib']:.2f} GiB  "
                f"CPU {r['cpu_us_per_cell']:.1f} us/cell",
                flush=True,
            )
    for batch_size in args.batch_sizes:
        ceiling = decode_ceiling(dataset, batch_size)
        ours = [
            r
            for r in results
            if r.get("data") == name
            and r["loader"].startswith("lancell random")
            and r["batch_size"] == batch_size
        ]
        shares = ", ".join(f"{r['loader']} {r['workers']} workers {r['median'] / ceiling:.0%}" for r in ours)
        print(
            f"  decode-only ceiling, batch {batch_size}: {ceiling:,.0f} cells/s (one core); lancell random = {shares}"
        )
        results.append({"data": name, "loader": "ceiling", "batch_size": batch_size, "median": ceiling})
        save()


def ratios(results: list[dict]) -> list[str]:
    lines = []
    index = {
        (r["data"], r["loader"], r["batch_size"], r["workers"]): r["median"]
        for r in results
        if "workers" in r
    }
    cpu = {
        (r["data"], r["loader"], r["batch_size"], r["workers"]): r["cpu_us_per_cell"]
        for r in results
        if "workers" in r
    }
    for (data, loader, batch_size, workers), ours in index.items():
        if not loader.startswith("lancell"):
            continue
        for peer in ("anndata backed", "scDataset", "tiledbsoma-ml", "annbatch"):
            # annbatch runs in-process (its own threads): compared with every worker count
            key = (data, peer, batch_size, 0 if peer == "annbatch" else workers)
            theirs = index.get(key)
            if theirs and (loader.startswith("lancell random") or peer == "annbatch"):
                per_cpu = cpu[key] / cpu[data, loader, batch_size, workers]
                lines.append(
                    f"{data}, batch {batch_size}, {workers} workers: {loader} / {peer} = {ours / theirs:.2f}x "
                    f"(cells per CPU-second {per_cpu:.2f}x)"
                )
    return lines


def plot(results: list[dict], path: Path) -> None:
    frame = pd.DataFrame([r for r in results if "data" in r])
    ceilings = frame[frame["loader"] == "ceiling"]
    frame = frame[frame["loader"] != "ceiling"]
    datas = list(dict.fromkeys(frame["data"]))
    fig, axes = plt.subplots(1, len(datas), figsize=(6.5 * len(datas), 4.5), squeeze=False)
    for ax, data in zip(axes[0], datas, strict=True):
        part = frame[frame["data"] == data]
        for (loader, batch_size), group in part.groupby(["loader", "batch_size"], sort=False):
            style = "-" if batch_size == max(part["batch_size"]) else "--"
            ax.errorbar(
                group["workers"],
                group["median"],
                yerr=[group["median"] - group["min"], group["max"] - group["median"]],
                fmt=f"o{style}",
                capsize=3,
                label=f"{loader} (batch {batch_size})",
            )
        for _, row in ceilings[ceilings["data"] == data].iterrows():
            ax.axhline(row["median"], color="grey", lw=0.8, ls=":")
            ax.annotate(f"decode-only ceiling, batch {row['batch_size']}", (0, row["median"]), fontsize=6)
        ax.set_yscale("log")
        ax.set_xticks(sorted(part["workers"].unique()))
        ax.set_xlabel("DataLoader workers")
        ax.set_ylabel("cells/s (median, min-max)")
        ax.set_title(f"{data}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--nnz", type=int, default=2000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--peer-windows", type=int, default=3)
    parser.add_argument("--window-cells", type=int, default=16_384)
    parser.add_argument("--max-window-s", type=float, default=4.0)
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=PEERS,
        default=list(PEERS),
        help="peer loaders to compare with (none: only lancell)",
    )
    parser.add_argument(
        "--data", nargs="+", choices=["bundled", "synthetic"], default=["bundled", "synthetic"]
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/lancell-bench-loader"),
        help="where the built data are kept and reused between runs (not removed afterwards; default: %(default)s)",
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "loader.png")
    parser.add_argument(
        "--json", type=Path, default=None, help="write the result rows here, rewritten after each measurement"
    )
    parser.add_argument(
        "--cold-start", type=int, default=3, help="rounds of the cold-start section (0: skip)"
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, load average {psutil.getloadavg()[0]:.1f}; "
        f"torch {torch.__version__}, numpy {np.__version__}",
        flush=True,
    )
    rss = PeakRSS()
    results: list[dict] = []

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    try:
        for name in args.data:
            started = time.perf_counter()
            if name == "bundled":
                data = build_bundled(args.workdir / "bundled")
            else:
                folder = f"synthetic-{args.cells}cells-{args.datasets}datasets-{args.nnz}nnz"
                data = build_synthetic(args.workdir / folder, args.cells, args.datasets, args.nnz)
            print(f"{name}: data ready in {time.perf_counter() - started:.1f} s", flush=True)
            bench_data(name, data, args, rss, results, save)
        if args.cold_start:
            results += cold_start(args.workdir, args.cold_start)
            save()
    finally:
        if args.json:
            save()
            print(f"{len(results)} result rows written to {args.json}", flush=True)
    print("\nratios (median cells/s, same run):")
    for line in ratios(results):
        print("  " + line)
    print(f"load average at the end: {psutil.getloadavg()[0]:.1f}")
    plot(results, args.plot)


if __name__ == "__main__":
    main()
