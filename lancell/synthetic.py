"""Seeded synthetic single-cell data of realistic shape, written straight to ``.h5ad`` in bounded memory.

Counts are negative-binomial (most values 1-3), each cell has about ``nnz_per_cell`` sorted gene indices drawn
from its dataset's panel. Used by the memory tests and the benchmarks; never by ``make demo``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import sparse_dataset, write_elem

__all__ = ["synthetic_counts", "write_synthetic_h5ad"]


def synthetic_counts(
    n_cells: int, n_genes: int, nnz_per_cell: int, rng: np.random.Generator
) -> sp.csr_matrix:
    """A CSR int32 block: ``nnz_per_cell`` (+/- 25 %) sorted genes per cell, NB(2, 0.5) + 1 counts."""
    sizes = np.clip(rng.integers(int(nnz_per_cell * 0.75), int(nnz_per_cell * 1.25) + 1, n_cells), 1, n_genes)
    indptr = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    for i, size in enumerate(sizes):
        indices[indptr[i] : indptr[i + 1]] = np.sort(rng.choice(n_genes, size, replace=False))
    data = (rng.negative_binomial(2, 0.5, size=indices.size) + 1).astype(np.int32)
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))


def write_synthetic_h5ad(
    path: Path,
    n_cells: int,
    gene_names: list[str],
    *,
    nnz_per_cell: int = 2000,
    seed: int = 0,
    block_cells: int = 5000,
    cell_types: tuple[str, ...] = ("T cell", "B cell", "monocyte", "NK cell", "dendritic cell"),
) -> int:
    """Write an ``.h5ad`` of ``n_cells`` synthetic cells block by block; return its nnz."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice(list(cell_types), n_cells), categories=list(cell_types))},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=pd.Index(gene_names))
    nnz = 0
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for start in range(0, n_cells, block_cells):
            block = synthetic_counts(min(block_cells, n_cells - start), len(gene_names), nnz_per_cell, rng)
            nnz += block.nnz
            if start == 0:
                write_elem(f, "X", block)
            else:
                sparse_dataset(f["X"]).append(block)
    return nnz
