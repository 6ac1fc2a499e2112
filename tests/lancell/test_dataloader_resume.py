"""Resuming an interrupted epoch: ``CellSampler.state_at`` / ``resume`` on the bundled atlas.

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
from lancell.dataloader import CellSampler, SparseCollate, batch_entropy, make_loader
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
    return sampler.state_at(taken)


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
            state = json.loads(json.dumps(first.state_at(taken)))  # plain values
            resumed = CellSampler(dataset, 32, rank=rank, **settings)
            resumed.resume(state)
            assert resumed.epoch == 2
            assert _batches(resumed) == expected[taken:]
            assert _batches(resumed) == expected  # it drew every batch: the next iteration is whole
            next_epoch = _batches(_epoch(CellSampler(dataset, 32, rank=rank, **settings), 3))
            assert _batches(_epoch(resumed, 3)) == next_epoch


def test_a_state_taken_after_a_resume_counts_from_the_epochs_start(dataset):
    full = CellSampler(dataset, 50, seed=1)
    expected = _batches(full)
    sampler = CellSampler(dataset, 50, seed=1)
    sampler.resume(_state_after(CellSampler(dataset, 50, seed=1), 4))
    assert _batches(sampler)[:3] == expected[4:7]
    state = sampler.state_at(3)  # three batches of the resumed iteration
    assert state["batches_done"] == 7
    again = CellSampler(dataset, 50, seed=1)
    again.resume(torch.load(_saved(state), weights_only=True))  # as a checkpoint keeps it
    assert _batches(again) == expected[7:]
    with pytest.raises(QueryError, match="batches_taken=17, but this iteration of epoch 0 has yielded 16"):
        sampler.state_at(17)  # 20 batches, the iteration began after the 4th
    with pytest.raises(QueryError, match="batches_taken must be an integer"):
        sampler.state_at(2.0)


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
        sampler.resume(state)
    assert sampler.epoch == 0 and _batches(sampler) == _batches(CellSampler(dataset, batch_size, **other))
    state = CellSampler(dataset, 32, **base).state_at(0)
    state["epoch"] = 4
    sampler.resume(state)  # an epoch's start: any settings
    assert sampler.epoch == 4
    whole = CellSampler(dataset, 32, **base)
    finished = _state_after(whole, len(whole))  # and its end: none of it is left (it was refused, and the
    sampler.resume(finished)  # remedy named, set_epoch(0), read the finished epoch again)
    assert sampler.epoch == 0 and _batches(sampler) == []
    assert sampler.state_at(0)["batches_done"] == len(sampler)


def test_other_cells_are_refused(dataset, bundled_root):
    state = _state_after(CellSampler(dataset, 32), 2)
    snapshot = RaggedAtlas.checkout_latest(str(bundled_root / "db"))
    fewer = snapshot.query().on_unmeasured("keep").limit(999).to_cell_dataset(SPACE, "counts")
    with pytest.raises(
        QueryError,
        match=r"n_cells was 1000, now 999.*with the state's query \(both read snapshot 0\)",
    ):
        CellSampler(fewer, 32).resume(state)
    groups, positions = dataset.cell_groups.copy(), dataset.cell_positions.copy()
    names = list(dataset.groups.names)
    digest = cells_digest(names, groups, positions)
    positions[[0, 1]] = positions[[1, 0]]
    assert cells_digest(names, groups, positions) != digest  # two cells swapped: another list
    assert cells_digest(names[::-1], dataset.cell_groups, dataset.cell_positions) != digest
    assert state["cells"] == digest
    state["cells"] = cells_digest(names, groups, positions)
    with pytest.raises(QueryError, match="the dataset's cells differ"):
        CellSampler(dataset, 32).resume(state)


def test_malformed_states_are_refused(dataset):
    sampler = CellSampler(dataset, 100)
    good = _state_after(CellSampler(dataset, 100), 2)
    with pytest.raises(ArgumentError, match="got list"):
        sampler.resume([("epoch", 0)])
    for key in ("format", "epoch", "batches_done", "seed"):
        broken = {k: v for k, v in good.items() if k != key}
        with pytest.raises(QueryError, match=f"this sampler state has no '{key}'"):
            sampler.resume(broken)
    with pytest.raises(QueryError, match="sampler state format 2 is not 1"):
        sampler.resume({**good, "format": 2})
    with pytest.raises(QueryError, match="batches_done=11 exceeds the 10 batches of an epoch"):
        sampler.resume({**good, "batches_done": 11})
    with pytest.raises(QueryError, match="epoch must be >= 0"):
        sampler.resume({**good, "epoch": -1})
    assert sampler.epoch == 0 and len(_batches(sampler)) == 10  # nothing taken from a refused state


def test_set_epoch_keeps_the_resume_point_of_its_epoch_and_warns_when_it_drops_it(dataset):
    expected = _batches(_epoch(CellSampler(dataset, 100), 1))
    sampler = CellSampler(dataset, 100)
    state = _state_after(_epoch(CellSampler(dataset, 100), 1), 6)
    sampler.resume(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.set_epoch(1)  # the usual loop's first call
    assert _batches(sampler) == expected[6:]
    sampler.resume(state)
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
                    return seen, sampler.state_at(step + 1)
        return seen, None

    expected, _ = run(CellSampler(dataset, 64, seed=9), [0, 1])
    before, state = run(CellSampler(dataset, 64, seed=9), [0, 1], stop=(1, 5))
    resumed = CellSampler(dataset, 64, seed=9)
    resumed.resume(state)
    after, _ = run(resumed, range(resumed.epoch, 2))
    assert before + after == expected


def test_the_resume_point_is_not_taken_by_an_iterator_dropped_or_batch_entropy(dataset):
    """Nor by an iterator made and dropped; a state saved before the resumed iteration begins is the loaded
    one."""
    expected = _batches(_epoch(CellSampler(dataset, 64, seed=2), 1))
    state = _state_after(_epoch(CellSampler(dataset, 64, seed=2), 1), 5)
    sampler = CellSampler(dataset, 64, seed=2)
    sampler.resume(state)
    assert sampler.state_at(0) == state  # saved again before the first batch (a handler at start-up)
    with pytest.raises(QueryError, match="batches_taken=2, but this iteration of epoch 1 has yielded 0"):
        sampler.state_at(2)  # nothing yielded since the load
    iter(sampler)
    batch_entropy(dataset, sampler)
    assert _batches(sampler) == expected[5:]
    fresh = CellSampler(dataset, 64, seed=2)
    batches = iter(fresh)  # an iteration begins at iter(), with its epoch (as DistributedSampler's)
    fresh.set_epoch(1)
    assert list(batches) == _batches(CellSampler(dataset, 64, seed=2)) != expected


def test_the_cells_digest_follows_the_group_numbering_that_the_locality_order_sorts_by(dataset):
    names = list(dataset.groups.names)
    groups, positions = dataset.cell_groups, dataset.cell_positions
    renumbered = np.arange(len(names))[::-1].astype(np.int32)  # code k becomes len - 1 - k
    new_groups = np.where(groups < 0, groups, renumbered[groups]).astype(np.int32)
    assert len(names) > 1
    assert cells_digest(names[::-1], new_groups, positions) != cells_digest(names, groups, positions)
    order = np.lexsort((positions, groups))
    assert not np.array_equal(np.lexsort((positions, new_groups)), order)  # another locality order


def test_a_pickled_sampler_keeps_the_digest_not_the_pointers(dataset):
    sampler = CellSampler(dataset, 64, mode="random", seed=4)
    state = _state_after(sampler, 3)
    copy = pickle.loads(pickle.dumps(sampler))
    assert len(pickle.dumps(sampler)) < 2_000
    copy.resume(state)
    assert _batches(copy) == _batches(CellSampler(dataset, 64, mode="random", seed=4))[3:]


def test_a_batch_peeked_at_or_a_loop_retried_does_not_use_up_the_resume_point(dataset):
    """``next(iter(loader))`` for the input's shape, a loop that failed at its first batch and is run again:
    the loop resumes; once an iteration drew every batch, the next is whole."""
    expected = _batches(_epoch(CellSampler(dataset, 64, seed=6), 2))
    state = _state_after(_epoch(CellSampler(dataset, 64, seed=6), 2), 10)
    sampler = CellSampler(dataset, 64, seed=6)
    loader = make_loader(dataset, sampler)
    sampler.resume(state)
    assert next(iter(loader))["index"].tolist() == expected[10]
    sampler.set_epoch(2)
    assert sampler.state_at(0)["batches_done"] == 10  # where the loop will begin
    with pytest.raises(RuntimeError, match="a failing step"):
        for _ in loader:
            raise RuntimeError("a failing step")
    assert [batch["index"].tolist() for batch in loader] == expected[10:]
    assert [batch["index"].tolist() for batch in loader] == expected


def test_misuses_are_refused_or_warned_with_what_to_do(dataset, bundled_root):
    sampler = CellSampler(dataset, 64, seed=6)
    start = _epoch(CellSampler(dataset, 64, seed=6), 3).state_at(0)  # an epoch's start
    sampler.resume(start)
    with pytest.warns(LancellWarning, match=r"set_epoch\(0\) after loading a state at the start of epoch 3"):
        sampler.set_epoch(0)
    live = RaggedAtlas.open(str(bundled_root / "db"), read_only=True)
    other = live.query().on_unmeasured("keep").limit(999).to_cell_dataset(SPACE, "counts")
    with pytest.raises(QueryError, match=r"RaggedAtlas.checkout\(db, 0\)"):
        CellSampler(other, 64, seed=6).resume(_state_after(CellSampler(dataset, 64, seed=6), 2))


def test_an_epoch_resumed_at_its_end_reads_nothing_and_its_state_stays_at_its_end(dataset):
    """A job stopped after a whole epoch saved (e, N): the next job's loop from ``sampler.epoch`` reads
    nothing of e, its end-of-epoch checkpoint is (e, N) again (not e's start), and e + 1 is whole."""
    first = CellSampler(dataset, 100, seed=1)
    state = first.state_at(len(_batches(first)))
    sampler = CellSampler(dataset, 100, seed=1)
    sampler.resume(state)
    assert _batches(sampler) == []
    assert sampler.state_at(0) == state
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.set_epoch(1)
    assert _batches(sampler) == _batches(_epoch(CellSampler(dataset, 100, seed=1), 1))
    skipped = CellSampler(dataset, 100, seed=1)
    skipped.resume(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        skipped.set_epoch(1)  # the epoch was whole: going on to the next loses nothing


@pytest.mark.parametrize("readers", [{"threads": 2}, {"num_workers": 2}])
def test_a_peek_holds_unless_its_loader_read_the_rest_of_the_epoch_ahead(dataset, readers):
    """Documented: a peek whose loader drew every batch left spends the point (peek before resuming)."""
    expected = _batches(_epoch(CellSampler(dataset, 64, seed=3), 1))
    for done, ahead in ((2, False), (13, True)):  # 14 left (more than read ahead), then 3
        state = _state_after(_epoch(CellSampler(dataset, 64, seed=3), 1), done)
        sampler = CellSampler(dataset, 64, seed=3)
        loader = make_loader(dataset, sampler, **readers)
        sampler.resume(state)
        assert next(iter(loader))["index"].tolist() == expected[done]
        sampler.set_epoch(1)
        assert [batch["index"].tolist() for batch in loader] == (expected if ahead else expected[done:])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the point was used: moving on is no loss
            sampler.set_epoch(2)


def test_a_loop_without_set_epoch_reads_whole_passes_after_the_resumed_one(dataset):
    expected = _batches(CellSampler(dataset, 64, seed=3))
    sampler = CellSampler(dataset, 64, seed=3)
    sampler.resume(_state_after(CellSampler(dataset, 64, seed=3), 5))
    assert [_batches(sampler) for _ in range(3)] == [expected[5:], expected, expected]


def test_set_epoch_with_the_current_epoch_changes_nothing(dataset):
    sampler = CellSampler(dataset, 64, seed=3)
    batches = iter(sampler)
    for _ in range(3):
        next(batches)
    sampler.set_epoch(0)  # an iterator made before (torchdata's for a state), then the loop's set_epoch
    next(batches)
    assert sampler.state_at(4)["batches_done"] == 4


def test_a_second_iterator_does_not_shrink_what_the_loop_may_have_taken(dataset):
    sampler = CellSampler(dataset, 64, seed=3)
    loop = iter(sampler)
    for _ in range(5):
        next(loop)
    next(iter(sampler))  # a batch drawn aside (to log it)
    next(loop), next(loop), next(loop)
    assert sampler.state_at(8)["batches_done"] == 8


def test_torchdatas_stateful_dataloader_takes_a_bare_sampler_as_before(dataset):
    """The sampler has no ``state_dict``: torchdata fast-forwards it (it counts the batches it drew)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    sampler = CellSampler(dataset, 64, seed=5)
    expected = _batches(CellSampler(dataset, 64, seed=5))
    loader = StatefulDataLoader(dataset, batch_sampler=sampler, collate_fn=SparseCollate())
    for step, _ in enumerate(loader):
        if step == 3:
            state = loader.state_dict()
            break
    again = StatefulDataLoader(
        dataset, batch_sampler=CellSampler(dataset, 64, seed=5), collate_fn=SparseCollate()
    )
    again.load_state_dict(state)
    assert [batch["index"].tolist() for batch in again] == expected[4:]
