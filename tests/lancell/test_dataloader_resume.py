"""Resuming an interrupted epoch: ``CellSampler.state_dict`` / ``load_state_dict`` on the bundled atlas.

A resumed run must yield exactly the batches the uninterrupted run had left, in order, through every loader,
and refuse a state whose epoch order differs (cells would be read twice or never)."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lancell.atlas import RaggedAtlas
from lancell.dataloader import CellSampler, SparseCollate, StatefulBatchSampler, batch_entropy, make_loader
from lancell.dataloader.resume import cells_digest
from lancell.errors import ArgumentError, LancellWarning, QueryError

SPACE = "gene_expression"


@pytest.fixture(scope="module")
def dataset(bundled_root: Path):
    snapshot = RaggedAtlas.checkout_latest(str(bundled_root / "db"))
    return snapshot.query().on_unmeasured("keep").limit(1000).to_cell_dataset(SPACE, "counts")


def _batches(sampler: CellSampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def _state_after(sampler: CellSampler, taken: int) -> dict:
    """The state once a loop has taken ``taken`` batches of the sampler's epoch (it iterates them)."""
    batches = iter(sampler)
    for _ in range(taken):
        next(batches)
    return sampler.state_dict(taken)


def _epoch(sampler: CellSampler, epoch: int) -> CellSampler:
    sampler.set_epoch(epoch)
    return sampler


@pytest.mark.parametrize("world", [1, 3])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("mode", ["random", "locality"])
def test_a_resumed_epoch_yields_exactly_the_batches_left(dataset, mode, drop_last, world):
    settings = {"mode": mode, "seed": 3, "drop_last": drop_last, "num_replicas": world}
    for rank in range(world):
        expected = _batches(_epoch(CellSampler(dataset, 32, rank=rank, **settings), 2))
        for taken in (0, 1, 5, len(expected) - 1, len(expected)):
            first = _epoch(CellSampler(dataset, 32, rank=0, **settings), 2)  # rank 0 saves the checkpoint
            assert len(_batches(first)) == len(expected)
            state = json.loads(json.dumps(first.state_dict(taken)))  # plain values
            resumed = CellSampler(dataset, 32, rank=rank, **settings)
            resumed.load_state_dict(state)
            assert resumed.epoch == 2
            assert _batches(resumed) == expected[taken:]
            assert _batches(resumed) == expected  # the iteration after the resumed one is whole
            next_epoch = _batches(_epoch(CellSampler(dataset, 32, rank=rank, **settings), 3))
            assert _batches(_epoch(resumed, 3)) == next_epoch


def test_a_state_taken_after_a_resume_counts_from_the_epochs_start(dataset):
    full = CellSampler(dataset, 50, seed=1)
    expected = _batches(full)
    sampler = CellSampler(dataset, 50, seed=1)
    sampler.load_state_dict(_state_after(CellSampler(dataset, 50, seed=1), 4))
    assert _batches(sampler)[:3] == expected[4:7]
    state = sampler.state_dict(3)  # three batches of the resumed iteration
    assert state["batches_done"] == 7
    again = CellSampler(dataset, 50, seed=1)
    again.load_state_dict(torch.load(_saved(state), weights_only=True))  # as a checkpoint keeps it
    assert _batches(again) == expected[7:]
    with pytest.raises(QueryError, match="batches_taken=17, but this iteration of epoch 0 has yielded 16"):
        sampler.state_dict(17)  # 20 batches, the iteration began after the 4th
    with pytest.raises(QueryError, match="batches_taken must be an integer"):
        sampler.state_dict(2.0)


def _saved(state: dict) -> str:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("change", ["seed", "batch_size", "mode", "block_size", "drop_last", "num_replicas"])
def test_another_epoch_order_is_refused_mid_epoch_and_taken_at_an_epochs_start(dataset, change):
    base = {"seed": 0, "mode": "locality", "drop_last": False, "num_replicas": 1, "rank": 0, "block_size": 8}
    other = dict(base)
    other[change] = {
        "seed": 1,
        "batch_size": 64,
        "mode": "random",
        "block_size": 4,
        "drop_last": True,
        "num_replicas": 2,
    }[change]
    if change == "mode":
        other.pop("block_size")
    batch_size = other.pop("batch_size", 32)
    state = _state_after(CellSampler(dataset, 32, **base), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)  # the live atlas / random block_size warnings
        sampler = CellSampler(dataset, batch_size, **other)
    with pytest.raises(QueryError, match=f"cannot resume epoch 0 after batch 3: {change} was "):
        sampler.load_state_dict(state)
    assert sampler.epoch == 0 and _batches(sampler) == _batches(CellSampler(dataset, batch_size, **other))
    state = CellSampler(dataset, 32, **base).state_dict(0)
    state["epoch"] = 4
    sampler.load_state_dict(state)  # an epoch's start: any settings
    assert sampler.epoch == 4


def test_other_cells_are_refused(dataset, bundled_root):
    state = _state_after(CellSampler(dataset, 32), 2)
    snapshot = RaggedAtlas.checkout_latest(str(bundled_root / "db"))
    fewer = snapshot.query().on_unmeasured("keep").limit(999).to_cell_dataset(SPACE, "counts")
    with pytest.raises(
        QueryError,
        match=r"n_cells was 1000, now 999.*with the state's query \(both read snapshot 0\)",
    ):
        CellSampler(fewer, 32).load_state_dict(state)
    groups, positions = dataset.cell_groups.copy(), dataset.cell_positions.copy()
    names = list(dataset.groups.names)
    digest = cells_digest(names, groups, positions)
    positions[[0, 1]] = positions[[1, 0]]
    assert cells_digest(names, groups, positions) != digest  # two cells swapped: another list
    assert cells_digest(names[::-1], dataset.cell_groups, dataset.cell_positions) != digest
    assert state["cells"] == digest
    state["cells"] = cells_digest(names, groups, positions)
    with pytest.raises(QueryError, match="the dataset's cells differ"):
        CellSampler(dataset, 32).load_state_dict(state)


def test_malformed_states_are_refused(dataset):
    sampler = CellSampler(dataset, 100)
    good = _state_after(CellSampler(dataset, 100), 2)
    with pytest.raises(ArgumentError, match="got list"):
        sampler.load_state_dict([("epoch", 0)])
    for key in ("format", "epoch", "batches_done", "seed"):
        broken = {k: v for k, v in good.items() if k != key}
        with pytest.raises(QueryError, match=f"this sampler state has no '{key}'"):
            sampler.load_state_dict(broken)
    with pytest.raises(QueryError, match="sampler state format 2 is not 1"):
        sampler.load_state_dict({**good, "format": 2})
    with pytest.raises(QueryError, match="batches_done=11 exceeds the 10 batches of an epoch"):
        sampler.load_state_dict({**good, "batches_done": 11})
    with pytest.raises(QueryError, match="epoch must be >= 0"):
        sampler.load_state_dict({**good, "epoch": -1})
    assert sampler.epoch == 0 and len(_batches(sampler)) == 10  # nothing taken from a refused state


def test_set_epoch_keeps_the_resume_point_of_its_epoch_and_warns_when_it_drops_it(dataset):
    expected = _batches(_epoch(CellSampler(dataset, 100), 1))
    sampler = CellSampler(dataset, 100)
    state = _state_after(_epoch(CellSampler(dataset, 100), 1), 6)
    sampler.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.set_epoch(1)  # the usual loop's first call
    assert _batches(sampler) == expected[6:]
    sampler.load_state_dict(state)
    with pytest.warns(LancellWarning, match=r"set_epoch\(0\) drops the resume point loaded for epoch 1"):
        sampler.set_epoch(0)
    assert len(_batches(sampler)) == 10


class OwnCollate(SparseCollate):
    """A collate of the user's: ``make_loader`` gives torch's own DataLoader (which makes an iterator of the
    sampler and drops it before the one it reads)."""


@pytest.mark.parametrize(
    "readers",
    [
        {"num_workers": 0},
        {"threads": 2},
        {"num_workers": 1},
        {"num_workers": 1, "collate_fn": OwnCollate()},
        "torch",
    ],
)
def test_a_loader_interrupted_mid_epoch_goes_on_where_it_stopped(dataset, readers):
    """The training loop's view: stop after some batches (a loader read ahead), save, resume in a new
    sampler and loader; every later batch is the uninterrupted run's, cells and values."""

    def loader_of(sampler):
        if readers == "torch":  # the user's own DataLoader with workers
            options = {"num_workers": 1, "multiprocessing_context": "forkserver", "persistent_workers": True}
            return DataLoader(dataset, batch_sampler=sampler, collate_fn=SparseCollate(), **options)
        return make_loader(dataset, sampler, **readers)

    def run(sampler, epochs, stop=None):
        loader = loader_of(sampler)
        seen = []
        for epoch in epochs:
            sampler.set_epoch(epoch)
            for step, batch in enumerate(loader):
                seen.append((batch["index"].tolist(), batch["X"].to_dense().sum().item()))
                if stop is not None and (epoch, step + 1) == stop:
                    return seen, sampler.state_dict(step + 1)
        return seen, None

    expected, _ = run(CellSampler(dataset, 64, seed=9), [0, 1])
    before, state = run(CellSampler(dataset, 64, seed=9), [0, 1], stop=(1, 5))
    resumed = CellSampler(dataset, 64, seed=9)
    resumed.load_state_dict(state)
    after, _ = run(resumed, range(resumed.epoch, 2))
    assert before + after == expected


def test_the_resume_point_is_taken_by_the_iteration_that_reads(dataset):
    """Not by an iterator made and dropped, nor by ``batch_entropy``; a state saved before the resumed
    iteration begins is the loaded one; an iterator reads the epoch set before its first batch."""
    expected = _batches(_epoch(CellSampler(dataset, 64, seed=2), 1))
    state = _state_after(_epoch(CellSampler(dataset, 64, seed=2), 1), 5)
    sampler = CellSampler(dataset, 64, seed=2)
    sampler.load_state_dict(state)
    assert sampler.state_dict(0) == state  # saved again before the first batch (a handler at start-up)
    with pytest.raises(QueryError, match="batches_taken=2, but this iteration of epoch 1 has yielded 0"):
        sampler.state_dict(2)  # nothing yielded since the load
    iter(sampler)
    batch_entropy(dataset, sampler)
    assert _batches(sampler) == expected[5:]
    fresh = CellSampler(dataset, 64, seed=2)
    batches = iter(fresh)
    fresh.set_epoch(1)
    assert list(batches) == expected


def test_the_cells_digest_follows_the_cells_not_the_group_numbering(dataset):
    names = list(dataset.groups.names)
    groups, positions = dataset.cell_groups, dataset.cell_positions
    renumbered = np.arange(len(names))[::-1].astype(np.int32)  # code k becomes len - 1 - k
    new_groups = np.where(groups < 0, groups, renumbered[groups]).astype(np.int32)
    assert cells_digest(names[::-1], new_groups, positions) == cells_digest(names, groups, positions)


def test_a_pickled_sampler_keeps_the_digest_not_the_pointers(dataset):
    sampler = CellSampler(dataset, 64, mode="random", seed=4)
    state = _state_after(sampler, 3)
    copy = pickle.loads(pickle.dumps(sampler))
    assert len(pickle.dumps(sampler)) < 2_000
    copy.load_state_dict(state)
    assert _batches(copy) == _batches(CellSampler(dataset, 64, mode="random", seed=4))[3:]


def test_a_batch_peeked_at_does_not_use_up_the_resume_point(dataset):
    """``next(iter(loader))`` for the input's shape, then the loop: the loop resumes; the point goes once an
    iteration of its epoch ran to its end."""
    expected = _batches(_epoch(CellSampler(dataset, 64, seed=6), 2))
    state = _state_after(_epoch(CellSampler(dataset, 64, seed=6), 2), 10)
    sampler = CellSampler(dataset, 64, seed=6)
    loader = make_loader(dataset, sampler)
    sampler.load_state_dict(state)
    assert next(iter(loader))["index"].tolist() == expected[10]
    sampler.set_epoch(2)
    assert sampler.state_dict(0)["batches_done"] == 10  # where the loop will begin
    assert [batch["index"].tolist() for batch in loader] == expected[10:]
    assert [batch["index"].tolist() for batch in loader] == expected  # ran to its end: whole again


def test_misuses_are_refused_or_warned_with_what_to_do(dataset, bundled_root):
    sampler = CellSampler(dataset, 64, seed=6)
    with pytest.raises(ArgumentError, match="state_dict needs batches_taken"):
        sampler.state_dict()
    start = _epoch(CellSampler(dataset, 64, seed=6), 3).state_dict(0)  # an epoch's start
    sampler.load_state_dict(start)
    with pytest.warns(LancellWarning, match=r"set_epoch\(0\) after loading a state at the start of epoch 3"):
        sampler.set_epoch(0)
    live = RaggedAtlas.open(str(bundled_root / "db"), read_only=True)
    other = live.query().on_unmeasured("keep").limit(999).to_cell_dataset(SPACE, "counts")
    with pytest.raises(QueryError, match=r"RaggedAtlas.checkout\(db, 0\)"):
        CellSampler(other, 64, seed=6).load_state_dict(_state_after(CellSampler(dataset, 64, seed=6), 2))


@pytest.mark.parametrize("workers", [0, 2])
def test_torchdatas_stateful_dataloader_resumes_through_the_stateful_batch_sampler(dataset, workers):
    """torchdata's loader checkpoints the batch sampler itself (``state_dict()`` with no argument, at each
    batch handed out) and replays what it had read ahead: the wrapper gives it the state it expects."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    options = {"num_workers": workers, "collate_fn": SparseCollate()}
    if workers:
        options |= {"multiprocessing_context": "forkserver", "persistent_workers": True}

    def loader_of(sampler):
        return StatefulDataLoader(dataset, batch_sampler=StatefulBatchSampler(sampler), **options)

    expected = []
    sampler = CellSampler(dataset, 64, seed=5)
    loader = loader_of(sampler)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected += [batch["index"].tolist() for batch in loader]
    sampler = CellSampler(dataset, 64, seed=5)
    loader = loader_of(sampler)
    before = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for step, batch in enumerate(loader):
            before.append(batch["index"].tolist())
            if (epoch, step) == (1, 4):
                break
    state = torch.load(_saved({"loader": loader.state_dict(), "epoch": 1}), weights_only=True)
    sampler = CellSampler(dataset, 64, seed=5)
    loader = loader_of(sampler)
    loader.load_state_dict(state["loader"])
    sampler.set_epoch(state["epoch"])
    after = [batch["index"].tolist() for batch in loader]
    assert before + after == expected
    with pytest.raises(ArgumentError, match="StatefulBatchSampler wraps a CellSampler"):
        StatefulBatchSampler(loader)
