"""Inputs of the scale benchmark: one set of backed ``.h5ad`` files for the largest size, heads for the others.

The largest size is written once (``lancell.synthetic``, one file per dataset, each over its own panel: a
random, overlapping 30-70 % subset of the gene universe). A smaller size takes the first cells of every file,
copied into files of its own (``X`` stored as the large files store it: chunked, no filter), so that every
size has the same datasets, panels and cells per dataset in proportion, and every size is read the same way.
(HDF5 virtual datasets over the large files' nonzeros cost no disk, but ingestion reads a virtual dataset
through h5py, not with its direct reads: the sizes would not be compared alike.)"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np

__all__ = ["dataset_sizes", "generate", "panels", "write_prefix"]

_COPY_VALUES = 16_000_000  # nonzeros a head file's copy reads and writes at a time


def panels(n_datasets: int, n_genes: int, seed: int = 0) -> list[np.ndarray]:
    """Sorted gene indices of each dataset's panel: 30-70 % of the universe, overlapping at random."""
    rng = np.random.default_rng(seed)
    return [
        np.sort(rng.choice(n_genes, int(n_genes * rng.uniform(0.3, 0.7)), replace=False))
        for _ in range(n_datasets)
    ]


def dataset_sizes(n_cells: int, n_datasets: int) -> list[int]:
    """Cells of each dataset: ``n_cells`` split as evenly as possible, the first datasets one larger."""
    sizes = np.full(n_datasets, n_cells // n_datasets)
    sizes[: n_cells - int(sizes.sum())] += 1
    return [int(s) for s in sizes]


def _write_one(args: tuple[str, int, list[str], int, int]) -> int:
    from lancell.synthetic import write_synthetic_h5ad

    path, n_cells, genes, nnz_per_cell, seed = args
    if Path(path).exists():
        return 0
    partial = Path(path + ".partial")
    nnz = write_synthetic_h5ad(partial, n_cells, genes, nnz_per_cell=nnz_per_cell, seed=seed)
    partial.rename(path)
    return nnz


def write_prefix(source: Path, target: Path, n_cells: int) -> None:
    """Write ``target``: the first ``n_cells`` cells of the backed ``.h5ad`` ``source`` (obs, var and X,
    ``X/data`` and ``X/indices`` chunked as in ``source``, copied ``_COPY_VALUES`` at a time).

    Raises
    ------
    ValueError
        If ``source`` holds fewer than ``n_cells`` cells.
    """
    from anndata.io import read_elem, write_elem

    partial = target.with_name(target.name + ".partial")
    with h5py.File(source, "r") as src, h5py.File(partial, "w") as f:
        x = src["X"]
        n_total, n_genes = (int(v) for v in x.attrs["shape"])
        if n_cells > n_total:
            raise ValueError(f"{source} holds {n_total:,} cells, fewer than the {n_cells:,} asked for")
        indptr = x["indptr"][: n_cells + 1]
        nnz = int(indptr[-1])
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", read_elem(src["obs"]).iloc[:n_cells])
        write_elem(f, "var", read_elem(src["var"]))
        group = f.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = (n_cells, n_genes)
        group.create_dataset("indptr", data=indptr)
        for key in ("data", "indices"):
            stored = x[key]
            chunks = (min(stored.chunks[0], nnz),) if stored.chunks and nnz else None
            copy = group.create_dataset(key, shape=(nnz,), dtype=stored.dtype, chunks=chunks)
            for lo in range(0, nnz, _COPY_VALUES):
                copy[lo : min(lo + _COPY_VALUES, nnz)] = stored[lo : min(lo + _COPY_VALUES, nnz)]
    partial.rename(target)


def generate(
    folder: Path, sizes: list[int], n_datasets: int, n_genes: int, nnz_per_cell: int, workers: int
) -> dict[int, list[Path]]:
    """Write (or reuse) the files of the largest size and the prefix files of the others; their paths by size."""
    from tqdm import tqdm

    largest = max(sizes)
    full = folder / f"{largest}"
    full.mkdir(parents=True, exist_ok=True)
    genes = [f"G{i:05d}" for i in range(n_genes)]
    jobs = [
        (str(full / f"ds{i:02d}.h5ad"), size, [genes[j] for j in panel], nnz_per_cell, 1000 + i)
        for i, (size, panel) in enumerate(
            zip(dataset_sizes(largest, n_datasets), panels(n_datasets, n_genes), strict=True)
        )
    ]
    with ProcessPoolExecutor(workers) as pool:
        list(tqdm(pool.map(_write_one, jobs), total=len(jobs), desc=f"generate {largest:,} cells", unit="ds"))
    files = {largest: [Path(job[0]) for job in jobs]}
    for n_cells in sorted(set(sizes) - {largest}):
        prefix = folder / f"{largest}-head-{n_cells}"
        prefix.mkdir(exist_ok=True)
        files[n_cells] = []
        for source, size in zip(files[largest], dataset_sizes(n_cells, n_datasets), strict=True):
            target = prefix / source.name
            if not target.exists():
                write_prefix(source, target, size)
            files[n_cells].append(target)
    return files
