"""Inputs of the scale benchmark: one set of backed ``.h5ad`` files for the largest size, prefixes for the others.

The largest size is written once (``lancell.synthetic``, one file per dataset, each over its own panel: a
random, overlapping 30-70 % subset of the gene universe). A smaller size takes the first cells of every file:
its files hold their own ``obs``, ``var`` and ``X/indptr`` and reach ``X/data`` and ``X/indices`` of the large
file through HDF5 virtual datasets over the first nonzeros, so that the smaller sizes cost no disk and every
size has the same datasets, panels and cells per dataset in proportion. Ingestion reads them as it reads any
backed ``.h5ad`` (h5py resolves the mapping).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np

__all__ = ["dataset_sizes", "generate", "panels", "write_prefix"]


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
    """Write ``target``: the first ``n_cells`` cells of the backed ``.h5ad`` ``source``, its nonzeros mapped.

    Raises
    ------
    ValueError
        If ``source`` holds fewer than ``n_cells`` cells.
    """
    from anndata.io import read_elem, write_elem

    with h5py.File(source, "r") as src:
        x = src["X"]
        n_total, n_genes = (int(v) for v in x.attrs["shape"])
        if n_cells > n_total:
            raise ValueError(f"{source} holds {n_total:,} cells, fewer than the {n_cells:,} asked for")
        indptr = x["indptr"][: n_cells + 1]
        obs, var = read_elem(src["obs"]).iloc[:n_cells], read_elem(src["var"])
        stored = {key: (x[key].shape, x[key].dtype) for key in ("data", "indices")}
    nnz = int(indptr[-1])
    partial = target.with_name(target.name + ".partial")
    with h5py.File(partial, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        group = f.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = (n_cells, n_genes)
        group.create_dataset("indptr", data=indptr)
        for key, (shape, dtype) in stored.items():
            layout = h5py.VirtualLayout(shape=(nnz,), dtype=dtype)
            layout[:] = h5py.VirtualSource(str(source.resolve()), f"X/{key}", shape=shape)[:nnz]
            group.create_virtual_dataset(key, layout)
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
        prefix = folder / f"{largest}-prefix-{n_cells}"
        prefix.mkdir(exist_ok=True)
        files[n_cells] = []
        for source, size in zip(files[largest], dataset_sizes(n_cells, n_datasets), strict=True):
            target = prefix / source.name
            if not target.exists():
                write_prefix(source, target, size)
            files[n_cells].append(target)
    return files
