"""Batches from workers through reusable shared-memory slots (lancell.dataloader.transport)."""

from __future__ import annotations

import gc
import io
import pickle
import subprocess
import sys
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lancell.atlas import RaggedAtlas
from lancell.dataloader import CellSampler, SharedMemoryCollate, make_loader

SPACE = "gene_expression"


@pytest.fixture(scope="module")
def bundled(bundled_root: Path) -> RaggedAtlas:
    return RaggedAtlas.checkout_latest(str(bundled_root / "db"))


def _send(batch: object) -> object:
    """What the training process receives: the collated batch pickled as a worker's result queue does."""
    buffer = io.BytesIO()
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(SharedMemoryCollate(lambda b: b)(batch))
    return pickle.loads(buffer.getvalue())


def _batch(seed: int, nnz: int = 40_000) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    crow = torch.from_numpy(np.linspace(0, nnz, 101).astype(np.int32))
    x = torch.sparse_csr_tensor(
        crow,
        torch.from_numpy(rng.integers(0, 5_000, nnz, dtype=np.int32)),
        torch.from_numpy(rng.random(nnz, dtype=np.float32)),
        size=(100, 5_000),
        check_invariants=False,
    )
    return {
        "X": x,
        "index": torch.arange(100, dtype=torch.int64) + seed,
        "presence": torch.from_numpy(rng.random((100, 300)) < 0.5),
        "dense": torch.from_numpy(rng.random((300, 100), dtype=np.float32)).t(),  # not contiguous
        "layers": {"half": torch.from_numpy(rng.random(30_000, dtype=np.float32)).to(torch.bfloat16)},
        "pair": (torch.zeros(0, 3), 7),
        "label": "cells",
    }


def _assert_equal(received: object, sent: object) -> None:
    if isinstance(sent, torch.Tensor):
        assert isinstance(received, torch.Tensor)
        assert received.layout == sent.layout and received.dtype == sent.dtype
        assert received.shape == sent.shape
        if sent.layout == torch.sparse_csr:
            for part in ("crow_indices", "col_indices", "values"):
                assert torch.equal(getattr(received, part)(), getattr(sent, part)())
        else:
            assert torch.equal(received, sent)
    elif isinstance(sent, dict):
        assert list(received) == list(sent)
        for key in sent:
            _assert_equal(received[key], sent[key])
    elif isinstance(sent, tuple | list):
        assert type(received) is type(sent) and len(received) == len(sent)
        for a, b in zip(received, sent, strict=True):
            _assert_equal(a, b)
    else:
        assert received == sent


def test_batch_arrives_equal():
    sent = _batch(1)
    received = _send(sent)
    _assert_equal(received, sent)
    assert not received["X"].values().is_shared()  # a view of the slot, not a new torch shared file


def test_held_batch_is_never_overwritten_and_a_released_slot_is_reused():
    first = _send(_batch(1))
    address = first["X"].values().data_ptr()
    second = _send(_batch(2))  # the first is held: another slot
    assert second["X"].values().data_ptr() != address
    _assert_equal(first, _batch(1))
    _assert_equal(second, _batch(2))
    del first
    gc.collect()
    third = _send(_batch(3))  # the first's slot is free again
    assert third["X"].values().data_ptr() == address
    _assert_equal(third, _batch(3))
    _assert_equal(second, _batch(2))


def test_a_kept_small_tensor_does_not_hold_the_slot():
    first = _send(_batch(4))
    address = first["X"].values().data_ptr()
    index = first["index"]  # small: carried in the message itself
    del first
    gc.collect()
    second = _send(_batch(5))
    assert second["X"].values().data_ptr() == address
    assert torch.equal(index, torch.arange(100, dtype=torch.int64) + 4)


def test_a_batch_read_by_a_process_never_given_its_slot_is_refused():
    first = _send(_batch(8))
    del first
    gc.collect()
    buffer = io.BytesIO()  # the freed slot is reused: its descriptor is not sent again
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(SharedMemoryCollate(lambda b: b)(_batch(9)))
    code = (
        "import pickle, sys\n"
        "from lancell.errors import BatchTransportError\n"
        "try:\n"
        "    pickle.loads(sys.stdin.buffer.read())\n"
        "except BatchTransportError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=buffer.getvalue(), capture_output=True, check=True, timeout=120
    )
    out = done.stdout.decode()
    assert out.startswith("BatchTransportError a batch from worker process") and "never sent" in out


def test_a_larger_batch_grows_a_free_slot():
    first = _send(_batch(6, nnz=10_000))
    del first
    gc.collect()
    big = _batch(7, nnz=2_000_000)
    _assert_equal(_send(big), big)


@pytest.mark.parametrize("mode", ["random", "locality"])
def test_two_workers_send_batches_through_slots(bundled, mode):
    """Every batch kept (slots in use are never reused): all equal ``to_anndata`` rows at the end."""
    query = bundled.query().where("dataset_uid != 'pbmc68k'").layers(SPACE, "counts")
    adata = query.to_anndata()
    expected = sp.csr_matrix(adata.X, dtype=np.float32)
    dataset = query.to_cell_dataset(SPACE, "counts")
    sampler = CellSampler(dataset, 256, mode=mode, seed=5)
    loader = make_loader(dataset, sampler, num_workers=2, timeout=120)
    assert isinstance(loader.collate_fn, SharedMemoryCollate)
    kept = []
    for out in loader:
        assert not out["X"].values().is_shared()
        kept.append(out)
    order = np.concatenate([out["index"].numpy() for out in kept])
    assert np.array_equal(np.sort(order), np.arange(len(dataset)))
    for out in kept:
        x = out["X"]
        actual = sp.csr_matrix(
            (x.values().numpy(), x.col_indices().numpy(), x.crow_indices().numpy()), shape=tuple(x.shape)
        )
        rows = expected[out["index"].numpy()]
        np.testing.assert_array_equal(actual.indptr, rows.indptr)
        np.testing.assert_array_equal(actual.indices, rows.indices)
        np.testing.assert_array_equal(actual.data, rows.data)


def test_a_batch_without_stored_values_arrives_equal():
    """Empty component tensors (a batch of cells without values, or of no features) need not be strided like
    filled ones: numpy's empty arrays may have stride 0, which ``Tensor.view`` to bytes refuses."""
    empty = torch.from_numpy(np.lib.stride_tricks.as_strided(np.zeros(1, np.int32), (0,), (0,)))
    assert empty.stride() == (0,)
    sent = {
        "X": torch.sparse_csr_tensor(
            torch.zeros(4, dtype=torch.int32), empty, torch.zeros(0), size=(3, 7), check_invariants=False
        ),
        "strided": empty,
    }
    _assert_equal(_send(sent), sent)
