"""The loader with real worker processes, after the parent used the atlas, and under torch.distributed."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from lancell.dataloader import CellDataset, CellSampler, DenseCollate, make_loader
from lancell.errors import ForkedProcessError, LancellWarning, QueryError

if TYPE_CHECKING:  # the DDP ranks import this module: keep lancedb out of their start-up
    from lancell.atlas import RaggedAtlas

SPACE = "gene_expression"


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> RaggedAtlas:
    from lancell.atlas import RaggedAtlas
    from lancell.bundled import build_bundled_atlas

    root = tmp_path_factory.mktemp("bundled")
    build_bundled_atlas(root)
    return RaggedAtlas.checkout_latest(str(root / "db"))


def _epoch(loader, n_cells: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """One epoch: the order cells came in, and the rows reassembled in dataset order (each cell once)."""
    rows, parts = [], []
    for out in loader:
        x = out["X"]
        crow, col, values = x.crow_indices().numpy(), x.col_indices().numpy(), x.values().numpy()
        parts.append(sp.csr_matrix((values, col, crow), shape=tuple(x.shape)))
        rows.append(out["index"].numpy())
    order = np.concatenate(rows)
    assert np.array_equal(np.sort(order), np.arange(n_cells))
    return order, sp.csr_matrix(sp.vstack(parts).tocsr()[np.argsort(order)])


def _reference(query, n_features: int) -> sp.csr_matrix:
    adata = query.to_anndata()
    x = sp.coo_matrix(adata.X)
    columns = adata.var["global_index"].to_numpy()
    out = sp.csr_matrix((x.data.astype(np.float32), (x.row, columns[x.col])), shape=(adata.n_obs, n_features))
    out.sort_indices()
    return out


def _assert_same(actual: sp.csr_matrix, expected: sp.csr_matrix) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.indptr, expected.indptr)
    np.testing.assert_array_equal(actual.indices, expected.indices)
    np.testing.assert_array_equal(actual.data, expected.data)


def test_two_workers_after_parent_used_the_atlas(bundled):
    """Fork hazard: the parent has used lancedb, obstore and numba; 2 workers must still run.

    See docs/architecture.md, "Training data loading".
    """
    query = bundled.query().layers(SPACE, "counts").on_unmeasured("keep")
    expected = _reference(query, n_features=bundled.feature_registry(SPACE).shape[0])  # parent reads
    dataset = query.to_cell_dataset(SPACE, "counts", metadata_columns=["dataset_uid"], features="registry")
    assert dataset.n_features == expected.shape[1]
    sampler = CellSampler(dataset, 512, mode="random", seed=11)
    loader = make_loader(dataset, sampler, num_workers=2, timeout=120)
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order, actual = _epoch(loader, len(dataset))
        _assert_same(actual, expected)
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    sampler.set_epoch(0)
    np.testing.assert_array_equal(_epoch(loader, len(dataset))[0], orders[0])  # same workers, same order


def test_two_workers_locality_dense_collate(bundled):
    registry = bundled.feature_registry(SPACE)
    human = registry["uid"][registry["organism"] == "Homo sapiens"].iloc[:200]
    mouse = registry["uid"][registry["organism"] == "Mus musculus"].iloc[:200]
    features = [*mouse, *human]
    query = bundled.query().where("dataset_uid != 'pbmc68k'")
    dataset = query.to_cell_dataset(SPACE, "counts", features=features)
    reference = query.layers(SPACE, "counts").to_anndata()[:, features]
    expected = reference.X.toarray().astype(np.float32)
    sampler = CellSampler(dataset, 512, mode="locality", seed=3)
    collate = DenseCollate(presence=True)
    loader = make_loader(dataset, sampler, num_workers=2, collate_fn=collate, timeout=120)
    seen = np.zeros(len(dataset), dtype=bool)
    for out in loader:
        index = out["index"].numpy()
        np.testing.assert_array_equal(out["X"].numpy(), expected[index])
        mouse_cell = reference.obs["dataset_uid"].to_numpy()[index] == "mouse_10k"
        np.testing.assert_array_equal(out["presence"].numpy()[:, :200].all(axis=1), mouse_cell)
        np.testing.assert_array_equal(out["presence"].numpy()[:, 200:].all(axis=1), ~mouse_cell)
        seen[index] = True
    assert seen.all()


def test_a_plain_dataloader_forking_its_workers_is_refused_not_hung(bundled):
    """torch's DataLoader forks its workers on Linux by default (torchdata's StatefulDataLoader too): a
    worker reading a CellDataset it inherited waited forever on the parent's obstore threads."""
    dataset = bundled.query().where("dataset_uid = 'mouse_10k'").to_cell_dataset(SPACE, "counts")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=CellSampler(dataset, 64, seed=0),
        collate_fn=DenseCollate(),
        num_workers=1,
        multiprocessing_context="fork",
        timeout=60,  # (a regression fails here instead of hanging)
    )
    with pytest.raises(ForkedProcessError, match=r"forked from a process that had used the atlas's stores"):
        next(iter(loader))


_UNPICKLED_THEN_FORKED = """
import pickle, sys, torch
from lancell.dataloader import CellSampler, DenseCollate
with open(sys.argv[1], "rb") as f:
    dataset = pickle.load(f)
loader = torch.utils.data.DataLoader(dataset, batch_sampler=CellSampler(dataset, 64, seed=0),
    collate_fn=DenseCollate(), num_workers=1, multiprocessing_context="fork", timeout=60)
print(sum(len(batch["index"]) for batch in loader))
"""


def test_a_dataset_unpickled_where_no_store_was_used_still_forks(bundled, tmp_path):
    """Refusing every fork refused one that works: a process that unpickled a dataset and touched no store
    has no I/O thread for a fork to lose."""
    dataset = bundled.query().where("dataset_uid = 'mouse_10k'").to_cell_dataset(SPACE, "counts")
    (tmp_path / "dataset.pkl").write_bytes(pickle.dumps(dataset))
    script = tmp_path / "read.py"
    script.write_text(_UNPICKLED_THEN_FORKED)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "dataset.pkl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == str(len(dataset))


@pytest.mark.parametrize("readers", [{"num_workers": 1, "timeout": 120}, {"threads": 2}])
@pytest.mark.skipif(torch.accelerator.is_available(), reason="pinning is ignored only without an accelerator")
def test_pin_memory_without_an_accelerator_is_ignored_with_a_warning(bundled, readers):
    """A worker loader's first epoch pinned its batches itself and raised torch's RuntimeError; the threaded
    loader dropped the option without a word."""
    query = bundled.query().where("dataset_uid = 'celltypist_sample'").layers(SPACE, "counts")
    dataset = query.to_cell_dataset(SPACE, "counts", features="registry")
    sampler = CellSampler(dataset, 128, mode="random", seed=2)
    with pytest.warns(LancellWarning, match="pin_memory=True is ignored"):
        loader = make_loader(dataset, sampler, pin_memory=True, **readers)
    expected = _reference(query, n_features=bundled.feature_registry(SPACE).shape[0])
    _assert_same(_epoch(loader, len(dataset))[1], expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world: int, port: int, blob: bytes, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dataset: CellDataset = pickle.loads(blob)
        result = {}
        for mode in ("random", "locality"):
            for drop_last in (False, True):
                sampler = CellSampler(dataset, 200, mode=mode, seed=21, drop_last=drop_last)
                seen = [out["index"].numpy() for out in make_loader(dataset, sampler)]
                result[f"{mode}-{drop_last}"] = (len(sampler), seen)
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(result, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_equal_batches_disjoint_complete(bundled, tmp_path):
    query = bundled.query().where("dataset_uid != 'mouse_10k'").on_unmeasured("keep")
    dataset = query.to_cell_dataset(SPACE, "log_normalized")
    n = len(dataset)
    tmp.spawn(_ddp_rank, args=(2, _free_port(), pickle.dumps(dataset), str(tmp_path)), nprocs=2, join=True)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    for key in ranks[0]:
        (n0, seen0), (n1, seen1) = ranks[0][key], ranks[1][key]
        assert n0 == n1 == len(seen0) == len(seen1)
        assert [b.size for b in seen0] == [b.size for b in seen1]
        a, b = np.concatenate(seen0), np.concatenate(seen1)
        if key.endswith("True"):
            assert np.intersect1d(a, b).size == 0 and a.size + b.size == n // 400 * 400
        else:
            assert np.array_equal(np.union1d(a, b), np.arange(n)) and a.size + b.size == n + n % 2


def _ddp_rank_of_its_own_dataset(rank: int, world: int, port: int, blobs: list[bytes], out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dataset: CellDataset = pickle.loads(blobs[rank])
        sampler = CellSampler(dataset, 200, seed=21)
        CellSampler(pickle.loads(blobs[0]), 200, seed=21).check_ranks()  # alike on every rank: passes
        try:
            sampler.check_ranks()
            outcome = "agreed"
        except QueryError as error:
            outcome = str(error)
        (Path(out_dir) / f"rank{rank}.txt").write_text(outcome)
        local = CellSampler(pickle.loads(blobs[0]), 200, seed=21, num_replicas=world, rank=0)  # both rank 0
        try:
            local.check_ranks()
            outcome = "agreed"
        except QueryError as error:
            outcome = str(error)
        (Path(out_dir) / f"rank{rank}_local.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_that_built_other_cells_are_refused_by_check_ranks(bundled, tmp_path):
    """Ranks that checked out the latest snapshot while another landed read different cell lists: cells were
    read twice or never, silently (and unequal batch counts hang a DDP step)."""
    everyone = bundled.query().where("dataset_uid != 'mouse_10k'").on_unmeasured("keep")
    fewer = bundled.query().where("dataset_uid = 'pbmc68k'")
    blobs = [pickle.dumps(q.to_cell_dataset(SPACE, "log_normalized")) for q in (everyone, fewer)]
    tmp.spawn(_ddp_rank_of_its_own_dataset, args=(2, _free_port(), blobs, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert outcome.startswith("rank 1's sampler differs from rank 0's in n_cells ("), outcome
        # rank=LOCAL_RANK on two nodes of one process each: half the cells read twice, half never, silently
        outcome = (tmp_path / f"rank{rank}_local.txt").read_text()
        assert outcome.startswith(
            "the samplers of the 2 ranks take the shares [0, 0]: share(s) [0] twice and [1] never"
        )
