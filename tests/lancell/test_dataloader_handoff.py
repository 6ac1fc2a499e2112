"""A loader with workers begins its first epoch in the calling process while the workers start, and its
forkserver runs the training script only in a worker that needs a name from it."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from lancell.atlas import RaggedAtlas
from lancell.dataloader import CellSampler, make_loader
from lancell.dataloader.handoff import WorkerLoader

SPACE = "gene_expression"
ROOT = Path(__file__).resolve().parents[2]


def _dense(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    return batch["index"].numpy().copy(), batch["X"].to_dense().numpy()


def _epoch(loader) -> list[tuple[np.ndarray, np.ndarray]]:
    return [_dense(batch) for batch in loader]


def test_first_batch_is_read_here_and_every_epoch_equals_the_in_process_loader(bundled_root: Path):
    atlas = RaggedAtlas.checkout_latest(str(bundled_root / "db"))
    query = atlas.query().where("dataset_uid = 'celltypist_sample'").layers(SPACE, "counts")  # uint32: mapped
    dataset = query.to_cell_dataset(SPACE, "counts")
    reference = query.to_cell_dataset(SPACE, "counts")
    sampler = CellSampler(dataset, 64, mode="random", seed=3)
    loader = make_loader(dataset, sampler, num_workers=2, timeout=120)
    assert isinstance(loader, WorkerLoader)
    assert loader.batch_sampler.batch_size == sampler.batch_size  # the sampler's attributes
    expected_sampler = CellSampler(reference, 64, mode="random", seed=3)
    expected_loader = make_loader(reference, expected_sampler)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected_sampler.set_epoch(epoch)
        batches = iter(loader)
        first = next(batches)
        if epoch == 0:  # read by this process, not sent by a worker
            assert dataset.mapped_batches == 1
        actual = [_dense(first), *(_dense(batch) for batch in batches)]
        expected = _epoch(expected_loader)
        assert len(actual) == len(expected) == len(sampler)
        for (index, x), (expected_index, expected_x) in zip(actual, expected, strict=True):
            np.testing.assert_array_equal(index, expected_index)
            np.testing.assert_array_equal(x, expected_x)


SCRIPT = """
import json, os, sys
with open(sys.argv[2], "a") as runs:  # one line per process that runs this script
    runs.write(f"{os.getpid()}\\n")


def own_collate(batch):
    return {"index": batch.index.copy(), "n": len(batch)}


if __name__ == "__main__":
    from lancell.atlas import RaggedAtlas
    from lancell.dataloader import CellSampler, make_loader

    atlas = RaggedAtlas.checkout_latest(sys.argv[1])
    query = atlas.query().where("dataset_uid != 'pbmc68k'").layers("gene_expression", "counts")
    dataset = query.to_cell_dataset("gene_expression", "counts")
    sampler = CellSampler(dataset, 128, mode="random", seed=0)
    collate = own_collate if sys.argv[3] == "own" else None
    loader = make_loader(dataset, sampler, num_workers=2, collate_fn=collate, timeout=120)
    seen = []
    for epoch in range(2):  # the second epoch is the workers' alone: both have started
        sampler.set_epoch(epoch)
        seen.append(sorted(int(i) for batch in loader for i in batch["index"]))
    print(json.dumps({"cells": len(dataset), "seen": seen}))
"""


@pytest.mark.parametrize(("collate", "runs"), [("lancell", 1), ("own", 3)])
def test_the_training_script_runs_only_where_a_worker_needs_it(bundled_root, tmp_path, collate, runs):
    """lancell's collate: the script runs once (this process), never in the forkserver or a worker; a collate
    the script defines: each of the 2 workers runs the script to unpickle it."""
    script, marker = tmp_path / "train.py", tmp_path / "runs.txt"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, str(script), str(bundled_root / "db"), str(marker), collate],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["seen"] == [list(range(result["cells"]))] * 2
    assert len(marker.read_text().split()) == runs


RANK = """
import multiprocessing, sys


def rank(db):  # a rank of torch.multiprocessing.spawn that ends in its first epoch
    from lancell.atlas import RaggedAtlas
    from lancell.dataloader import CellSampler, make_loader

    query = RaggedAtlas.checkout_latest(db).query().where("dataset_uid != 'pbmc68k'")
    dataset = query.to_cell_dataset("gene_expression", "counts")
    loader = make_loader(dataset, CellSampler(dataset, 32, seed=0), num_workers=2)
    next(iter(loader))


if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=rank, args=(sys.argv[1],))
    child.start()
    child.join()
    print(child.exitcode)
"""


def test_a_spawned_process_that_ends_in_its_first_epoch_exits_quietly(bundled_root, tmp_path):
    """multiprocessing's exit finalizers unlinked the workers' queue semaphores before the workers' start-up
    was joined: each worker printed a FileNotFoundError traceback (the exit code was still 0)."""
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, str(script), str(bundled_root / "db")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0 and out.stdout.split() == ["0"], out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]


def test_a_dropped_loader_stops_its_workers_at_once(bundled_root: Path):
    """A loader left mid-epoch and dropped goes at once, its workers with it: not whenever the garbage
    collector next runs, on whichever thread (its workers' queues were then closed under another loader's
    start, a feeder thread failing on a closed descriptor)."""
    atlas = RaggedAtlas.checkout_latest(str(bundled_root / "db"))
    dataset = atlas.query().on_unmeasured("keep").limit(500).to_cell_dataset(SPACE, "counts")
    sampler = CellSampler(dataset, 50, seed=1)
    loader = make_loader(dataset, sampler, num_workers=1, timeout=120)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for step, _ in enumerate(loader):
            if epoch == 1 and step == 2:
                break
    workers = list(loader._iterator._workers)
    assert all(worker.is_alive() for worker in workers)
    dropped = weakref.ref(loader)
    gc.disable()
    try:
        del loader, _
        assert dropped() is None
    finally:
        gc.enable()
    assert not any(worker.is_alive() for worker in workers)  # joined by the iterator's shutdown


def test_workers_that_could_not_start_are_told_after_the_first_epoch(bundled_root: Path, monkeypatch):
    """A read-only /dev/shm (or too few processes allowed): the first epoch was read here without a word and
    the next raised multiprocessing's bare OSError; a one-epoch job never learned its workers never ran."""
    import errno

    from torch.utils.data import DataLoader

    from lancell.errors import LancellWarning, WorkerStartError

    def refused(loader: DataLoader) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(DataLoader, "__iter__", refused)  # (what starting the workers calls)
    atlas = RaggedAtlas.checkout_latest(str(bundled_root / "db"))
    dataset = atlas.query().where("dataset_uid = 'pbmc68k'").to_cell_dataset(SPACE, "log_normalized")
    sampler = CellSampler(dataset, 128, mode="random", seed=1)
    loader = make_loader(dataset, sampler, num_workers=2, timeout=120)
    with pytest.warns(LancellWarning, match=r"workers could not start: OSError: \[Errno 30\] .*next raises"):
        assert len(_epoch(loader)) == len(sampler)  # every batch, read in this process
    with pytest.raises(WorkerStartError, match=r"workers could not start: .*/dev/shm writable") as raised:
        iter(loader)
    assert isinstance(raised.value.__cause__, OSError)
