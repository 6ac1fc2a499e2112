"""Building a loader's dataset holds one record batch of cell rows plus the per-cell arrays, not the rows."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord

N_DATASETS, N_CELLS, N_GENES = 2, 100_000, 20
SPACE = "gene_expression"


def _build(tmp_path) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={SPACE: GeneFeature},
    )
    genes = [f"g{i:02d}" for i in range(N_GENES)]
    atlas.register_features(SPACE, pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    rows = np.arange(N_CELLS)
    for d in range(N_DATASETS):
        x = sp.csr_matrix(
            (rows % 7 + 1, (rows, (rows + d) % N_GENES)), shape=(N_CELLS, N_GENES), dtype=np.int32
        )
        obs = pd.DataFrame(
            {"cell_type": np.where(rows % 3 == 0, "T cell", "B cell")},
            index=[f"a-rather-long-barcode-{i:08d}-1" for i in rows],
        )
        add_from_anndata(
            atlas,
            ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes)),
            feature_space=SPACE,
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=f"a-long-dataset-uid-{d:02d}"),
            csc=False,
            progress=False,
        )
    return atlas


def test_dataset_construction_peak_is_a_batch_plus_16_bytes_per_cell(tmp_path, monkeypatch):
    atlas = _build(tmp_path)
    query = atlas.query().layers(SPACE, "counts")
    query.to_cell_dataset(SPACE, "counts", metadata_columns=["cell_type"])  # caches, kernels, registry
    monkeypatch.setattr("lancell.dataloader.cell_stream.BATCH_ROWS", 8_192)
    default_pool = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(default_pool)  # counts what pyarrow allocates while it is the default
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        dataset = query.to_cell_dataset(SPACE, "counts", metadata_columns=["cell_type"])
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(default_pool)
    n = N_DATASETS * N_CELLS
    assert len(dataset) == n and dataset.nbytes()["pointers"] == 16 * n
    assert dataset.metadata.bytes_per_cell == 1
    assert dataset.groups.dataset_uids == [f"a-long-dataset-uid-{d:02d}" for d in range(N_DATASETS)]
    rows = np.arange(n)
    np.testing.assert_array_equal(dataset.cell_positions, np.tile(np.arange(N_CELLS), N_DATASETS))
    np.testing.assert_array_equal(dataset.cell_nnz, np.ones(n, np.int32))
    np.testing.assert_array_equal(dataset.cell_groups, np.repeat(np.arange(N_DATASETS), N_CELLS))
    labels = np.asarray(dataset.categories["cell_type"])[dataset.metadata.values["cell_type"]]
    assert (labels == np.tile(np.where(rows[:N_CELLS] % 3 == 0, "T cell", "B cell"), N_DATASETS)).all()
    # 16 B/cell kept, the metadata's int32 codes before they shrink to int8 (4 B/cell), 8,192-row batches;
    # reading the rows whole took 147 B/cell here (29 MB: tracemalloc 11.6 MB, pyarrow's pool 17.8 MB)
    peak = python_peak + pool.max_memory()
    assert peak < 20 * n + 1_000_000, (python_peak, pool.max_memory())


def test_locality_sampler_keeps_its_block_order_and_epoch_order_only(tmp_path):
    from lancell.dataloader import CellSampler

    dataset = _build(tmp_path).query().layers(SPACE, "counts").to_cell_dataset(SPACE, "counts")
    n = len(dataset)
    CellSampler(dataset, 256, mode="locality", seed=0).epoch_order()  # numpy's first-use allocations
    tracemalloc.start()
    try:
        sampler = CellSampler(dataset, 256, mode="locality", seed=0)
        order = sampler.epoch_order()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # kept: the block order and this epoch's order, 8 B/cell each, the blocks' starts and lengths (0.5 B/cell
    # at 32-cell blocks); the gather's ~2 MB of index arrays; per-cell offsets within each group's run and a
    # global sort of the batches' cells took 56 B/cell at the peak (11 MB here)
    assert peak < 17 * n + 3_000_000, peak
    assert np.array_equal(np.sort(order), np.arange(n))
    blocks = order[: n // 256 * 256].reshape(-1, 256)  # 781 full batches (and one of 64 cells)
    assert all(np.unique(dataset.cell_groups[b]).size <= 256 // sampler.block_size for b in blocks[:100])
