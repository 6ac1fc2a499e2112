"""Batches read from memory-mapped shard files by one kernel call equal ``to_anndata`` rows, and the crc32c
kernel they check chunks with equals the library's."""

from __future__ import annotations

import os
from pathlib import Path

import crc32c as crc32c_library
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.utils.data import get_worker_info

from kernels import crc32c
from lancell.atlas import RaggedAtlas
from lancell.dataloader import CellSampler, SparseCollate, ThreadedLoader, make_loader
from lancell.dataloader import mapped as mapped_module
from lancell.dataloader.mapped import mapped_files, mapped_files_budget
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord

SPACE = "gene_expression"


@pytest.fixture(scope="module")
def bundled(bundled_root: Path) -> RaggedAtlas:
    return RaggedAtlas.checkout_latest(str(bundled_root / "db"))


@pytest.mark.parametrize("kernel", [crc32c._crc32c_hw, crc32c._crc32c_table])
def test_crc32c_kernel_equals_library(kernel):
    if kernel is crc32c._crc32c_hw and not crc32c._HARDWARE:
        pytest.skip("no SSE 4.2 on this machine")
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 10_000, dtype=np.uint8)
    for start, stop in [(0, 0), (0, 1), (3, 11), (1, 4096), (5, 10_000)]:
        assert kernel(data, start, stop) == crc32c_library.crc32c(data[start:stop])
    chunk = np.frombuffer(
        data[:100].tobytes() + crc32c_library.crc32c(data[:100]).to_bytes(4, "little"), np.uint8
    )
    assert kernel(chunk, 0, chunk.size) == crc32c.RESIDUE


def _csr(batch) -> sp.csr_matrix:
    return sp.csr_matrix((batch.values, batch.indices, batch.offsets), shape=(len(batch), batch.n_features))


@pytest.mark.parametrize("mode", ["random", "locality"])
def test_mapped_batches_equal_to_anndata(bundled, mode):
    query = bundled.query().where("dataset_uid = 'celltypist_sample'").layers(SPACE, "counts")  # uint32
    reference = sp.csr_matrix(query.to_anndata().X)
    dataset = query.to_cell_dataset(SPACE, "counts")
    assert dataset.dtype == np.uint32
    sampler = CellSampler(dataset, 50, mode=mode, seed=3)
    batches = list(sampler)
    for positions in batches:
        batch = dataset.__getitems__(positions)
        actual = _csr(batch)
        assert actual.has_sorted_indices
        expected = reference[positions]
        np.testing.assert_array_equal(actual.indptr, expected.indptr)
        np.testing.assert_array_equal(actual.indices, expected.indices)
        np.testing.assert_array_equal(actual.data, expected.data)
    assert dataset.mapped_batches == len(batches) == 12


def test_mapped_batches_drop_and_reorder_features(bundled):
    """A feature list out of registry order (rows must be re-sorted) that drops most of each panel."""
    query = bundled.query().where("dataset_uid = 'celltypist_sample'").layers(SPACE, "counts")
    x = sp.csc_matrix(query.to_anndata().X)
    frequent = np.argsort(-np.diff(x.indptr), kind="stable")[:40]  # genes measured in many cells
    panel = list(query.to_anndata().var_names)
    chosen = [panel[i] for i in frequent[::-1]]  # against registry order
    selected = query.features(chosen, SPACE)
    reference = sp.csr_matrix(selected.to_anndata().X)
    reference.sort_indices()
    dataset = selected.to_cell_dataset(SPACE, "counts")
    positions = np.random.default_rng(0).permutation(len(dataset))[:500]
    positions[-5:] = positions[0]  # repeats are read again
    batch = dataset.__getitems__(positions)
    expected = reference[positions]
    np.testing.assert_array_equal(batch.offsets, expected.indptr)
    np.testing.assert_array_equal(batch.indices, expected.indices)
    np.testing.assert_array_equal(batch.values, expected.data)
    assert dataset.mapped_batches == 1 and expected.nnz > 0


def test_groups_past_the_mapped_files_budget_are_read_by_the_batched_reader(bundled, monkeypatch):
    """Every shard file a process read stayed mapped: an epoch over a census-sized atlas passes the kernel's
    limit on mappings (vm.max_map_count, 65,530) and mapping failed with an untyped ENOMEM mid-epoch."""
    query = bundled.query().where("dataset_uid = 'celltypist_sample'").layers(SPACE, "counts")
    reference = sp.csr_matrix(query.to_anndata().X)
    for budget, mapped in ((0, False), (mapped_files_budget(), True)):
        monkeypatch.setattr(mapped_module, "mapped_files_budget", lambda budget=budget: budget)
        dataset = query.to_cell_dataset(SPACE, "counts")
        for positions in CellSampler(dataset, 50, mode="random", seed=2):
            batch = dataset.__getitems__(positions)
            expected = reference[positions]
            np.testing.assert_array_equal(batch.offsets, expected.indptr)
            np.testing.assert_array_equal(batch.indices, expected.indices)
            np.testing.assert_array_equal(batch.values, expected.data)
        assert (dataset.mapped_batches > 0) is mapped
    assert 1_000 < mapped_files_budget() < 10**9
    # the budget is the process's: a second dataset (a validation set) maps nothing past it
    monkeypatch.setattr(mapped_module, "mapped_files_budget", mapped_files)  # as many as now
    validation = query.to_cell_dataset(SPACE, "counts")
    batch = validation.__getitems__(np.arange(40))
    np.testing.assert_array_equal(batch.values, reference[np.arange(40)].data)
    assert validation.mapped_batches == 0 and dataset.mapped_batches > 0


@pytest.mark.parametrize("mode", ["random", "locality"])
def test_threaded_loader_epoch_equals_to_anndata_in_sampler_order(bundled, mode):
    query = bundled.query().where("dataset_uid = 'celltypist_sample'").layers(SPACE, "counts")
    reference = sp.csr_matrix(query.to_anndata().X)
    dataset = query.to_cell_dataset(SPACE, "counts")
    sampler = CellSampler(dataset, 40, mode=mode, seed=1)
    loader = make_loader(dataset, sampler, threads=2)
    assert isinstance(loader, ThreadedLoader) and len(loader) == 14
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        expected_batches = list(sampler)
        outs = list(loader)
        assert [out["index"].tolist() for out in outs] == expected_batches
        for out, positions in zip(outs, expected_batches, strict=True):
            x = out["X"]
            actual = sp.csr_matrix(
                (x.values().numpy(), x.col_indices().numpy(), x.crow_indices().numpy()), shape=tuple(x.shape)
            )
            np.testing.assert_array_equal(actual.toarray(), reference[positions].toarray())
    assert dataset.mapped_batches == 28
    with pytest.raises(ValueError, match="not both"):
        make_loader(dataset, sampler, num_workers=2, threads=2)


class MappedCount(SparseCollate):
    """SparseCollate that also returns how many batches its worker read from mapped shard files."""

    def __call__(self, batch):
        out = super().__call__(batch)
        out["mapped"] = torch.tensor(get_worker_info().dataset.mapped_batches)
        return out


def test_two_workers_read_mapped_batches_equal_to_anndata(bundled):
    """Workers map the shard files themselves (the parent's mapping is not pickled) and read the same rows."""
    query = bundled.query().where("dataset_uid = 'celltypist_sample'").layers(SPACE, "counts")
    reference = sp.csr_matrix(query.to_anndata().X, dtype=np.float32)
    dataset = query.to_cell_dataset(SPACE, "counts")
    dataset.__getitems__([0, 1])  # the parent maps its files first
    for mode in ("random", "locality"):
        sampler = CellSampler(dataset, 64, mode=mode, seed=5)
        loader = make_loader(dataset, sampler, num_workers=2, collate_fn=MappedCount(), timeout=120)
        seen, mapped = [], []
        for out in loader:
            x = out["X"]
            actual = sp.csr_matrix(
                (x.values().numpy(), x.col_indices().numpy(), x.crow_indices().numpy()), shape=tuple(x.shape)
            )
            index = out["index"].numpy()
            np.testing.assert_array_equal(actual.toarray(), reference[index].toarray())
            seen.append(index)
            mapped.append(int(out["mapped"]))
        assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(dataset)))
        assert sorted(mapped) == sorted([*range(1, 6), *range(1, 5)])  # 9 batches: 5 and 4 per worker


def test_zero_fill_padding_is_left_out_as_to_anndata_does(atlas, celltypist):
    """counts stored on the union of its pattern and X's: its padding zeros are not entries of a batch."""
    adata = celltypist[:80].copy()
    adata.obs = adata.obs[[]]
    counts = sp.csr_matrix(adata.X).astype(np.int64)
    x = sp.csr_matrix(counts, dtype=np.float32).tolil()
    x[0, 0], x[1, 5] = 1.5, 2.5  # entries counts does not have: counts is padded with zeros there
    adata.X, adata.layers["counts"] = sp.csr_matrix(x), counts
    layers = {"log_normalized": "X", "counts": "counts"}
    add_from_anndata(
        atlas, adata, feature_space=SPACE, dataset_record=DatasetRecord(uid="two"), layers=layers
    )
    for layer, kind in (
        ("counts", np.uint32),
        ("log_normalized", np.float32),
    ):  # batch kernel, batched reader
        query = atlas.query().layers(SPACE, layer)
        reference = sp.csr_matrix(query.to_anndata().X)
        dataset = query.to_cell_dataset(SPACE, layer)
        positions = np.random.default_rng(0).permutation(80)
        batch = dataset.__getitems__(positions)
        np.testing.assert_array_equal(batch.offsets, reference[positions].indptr)
        np.testing.assert_array_equal(batch.values, reference[positions].data)
        assert batch.values.dtype == kind and dataset.mapped_batches == (kind == np.uint32)
        assert reference.nnz == counts.nnz + 2 * (kind == np.float32)  # counts: its 2 padding zeros left out


def test_a_dataset_smaller_than_a_chunk_leaves_the_others_mapped(atlas, celltypist):
    """A dataset of fewer values than a chunk (its own, shorter chunk length) read first turned the mapped
    path off for every other dataset of the process, unsaid (one of 31 batches mapped in an atlas of many)."""
    for uid, cells in (("tiny", slice(0, 1)), ("big", slice(1, 400))):
        adata = celltypist[cells].copy()
        adata.obs = adata.obs[[]]
        adata.X = sp.csr_matrix(adata.X).astype(np.int32)
        add_from_anndata(
            atlas, adata, feature_space=SPACE, zarr_layer="counts", dataset_record=DatasetRecord(uid=uid)
        )
    query = atlas.query().layers(SPACE, "counts")
    reference = sp.csr_matrix(query.to_anndata().X)
    uids = query.to_anndata().obs["dataset_uid"].to_numpy()
    dataset = query.to_cell_dataset(SPACE, "counts")
    tiny, big = np.flatnonzero(uids == "tiny"), np.flatnonzero(uids == "big")
    assert reference[tiny].nnz < 4096 < reference[big].nnz
    descriptors = len(os.listdir("/proc/self/fd"))
    for positions in (tiny, big[:100], np.r_[big[100:150], tiny]):
        batch = dataset.__getitems__(positions)
        np.testing.assert_array_equal(batch.offsets, reference[positions].indptr)
        np.testing.assert_array_equal(batch.indices, reference[positions].indices)
        np.testing.assert_array_equal(batch.values, reference[positions].data)
    assert dataset.mapped_batches == 3
    # no descriptor is kept per mapped shard file (Python's mmap kept one: 1,024 reached at ~500 datasets)
    assert len(os.listdir("/proc/self/fd")) == descriptors


EXIT_WHILE_READING = """
import sys, threading, time
import numpy as np
from lancell.atlas import RaggedAtlas

query = RaggedAtlas.checkout_latest(sys.argv[1]).query().where("dataset_uid = 'celltypist_sample'")
dataset = query.layers("gene_expression", "counts").to_cell_dataset("gene_expression", "counts")
positions = np.tile(np.arange(len(dataset)), 400)  # one long kernel call per batch
dataset.__getitems__(positions[:10])
assert dataset.mapped_batches == 1


def read():
    while True:
        dataset.__getitems__(positions)


threading.Thread(target=read, daemon=True).start()
time.sleep(1.0)
"""


def test_a_thread_still_reading_when_the_program_ends_does_not_crash_it(bundled_root: Path) -> None:
    """The mapped shard files were unmapped at exit while a daemon thread's kernel read them: exit 139."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", EXIT_WHILE_READING, str(bundled_root / "db")], capture_output=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]


FIRST_BATCH = """
import sys
import numba.core.dispatcher as dispatcher

compiled = []
compile_for_args = dispatcher._DispatcherBase._compile_for_args


def recorded(self, *args, **kwargs):
    compiled.append(self.py_func.__module__ + "." + self.py_func.__qualname__)
    return compile_for_args(self, *args, **kwargs)


dispatcher._DispatcherBase._compile_for_args = recorded
from lancell.atlas import RaggedAtlas

query = RaggedAtlas.checkout_latest(sys.argv[1]).query().where("dataset_uid = 'celltypist_sample'")
dataset = query.layers("gene_expression", "counts").to_cell_dataset("gene_expression", "counts")
assert dataset.__getitems__(list(range(8))).values.size
print(sorted({name for name in compiled if name.startswith("numba.")}))
"""


def test_a_fresh_process_first_batch_compiles_none_of_numbas_own_functions(bundled_root: Path) -> None:
    """The mapped shard files went to the kernel in a numba typed list, whose methods numba compiles in every
    process (never cached): 1-3 s before each worker's or thread's first batch."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FIRST_BATCH, str(bundled_root / "db")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
