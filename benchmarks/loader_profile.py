"""Where a DataLoader worker's time goes, per batch: CPU time of each step, in one process.

A worker reads the batch (``CellDataset.__getitems__``), collates it (``SparseCollate``) and pickles it onto
its result queue; the training process unpickles it. This script does the same steps in one process (torch
at one thread, as in a worker) and measures each with ``time.thread_time`` (CPU time of this thread: other
work on the machine inflates it far less than wall time), for the two ways a batch can cross to the training
process:

- ``torch``: the collated tensors pickled by torch's ``ForkingPickler`` reductions (what a DataLoader does
  with a plain collate: each tensor copied into a new shared-memory file whose descriptor is fetched by the
  receiver over a socket);
- ``slots``: through :class:`lancell.dataloader.SharedMemoryCollate` (what ``make_loader`` uses with workers:
  one copy into a reused slot, the slot's descriptor sent once).

Run: ``.venv/bin/python benchmarks/loader_profile.py --db /tmp/lb19/synthetic-200000/db`` (the atlas that
``benchmarks/loader.py --data synthetic --cells 200000 --workdir /tmp/lb19`` builds). Prints microseconds
per cell for each step, random and locality batches of 256 and 1024 cells.
"""

from __future__ import annotations

import argparse
import io
import pickle
import time
from multiprocessing.reduction import ForkingPickler

import numpy as np
import torch

from lancell.atlas import RaggedAtlas
from lancell.dataloader import CellSampler, SharedMemoryCollate, SparseCollate

STEPS = ("read", "collate", "copy to slot", "pickle", "unpickle (training process)")


def profile(dataset, mode: str, batch_size: int, transport: str, batches: int, warmup: int) -> np.ndarray:
    """Mean CPU microseconds per cell of each step in :data:`STEPS`."""
    collate = SparseCollate()
    send = SharedMemoryCollate(lambda batch: batch) if transport == "slots" else (lambda batch: batch)
    positions = iter(CellSampler(dataset, batch_size, mode=mode, seed=0))
    held: list[object] = []  # the training loop holds a few batches (prefetch), as slots must survive
    total = np.zeros(len(STEPS))
    for k in range(warmup + batches):
        marks = [time.thread_time()]
        batch = dataset.__getitems__(next(positions))
        marks.append(time.thread_time())
        out = collate(batch)
        marks.append(time.thread_time())
        out = send(out)
        marks.append(time.thread_time())
        buffer = io.BytesIO()
        ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(out)
        marks.append(time.thread_time())
        held = [*held[-5:], pickle.loads(buffer.getvalue())]
        marks.append(time.thread_time())
        if k >= warmup:
            total += np.diff(marks)
    return total / (batches * batch_size) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", required=True)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as DataLoader workers run
    dataset = RaggedAtlas.checkout_latest(args.db).query().to_cell_dataset("gene_expression", "counts")
    print(f"{len(dataset):,} cells; CPU microseconds per cell of each step (thread time)")
    print(f"{'mode':9s} {'batch':>5s} {'transport':9s} " + " ".join(f"{s:>14s}" for s in STEPS) + "  worker")
    for mode in ("random", "locality"):
        for batch_size in (256, 1024):
            for transport in ("torch", "slots"):
                us = profile(dataset, mode, batch_size, transport, args.batches, args.warmup)
                print(
                    f"{mode:9s} {batch_size:5d} {transport:9s} "
                    + " ".join(f"{v:14.1f}" for v in us)
                    + f"  {us[:4].sum():6.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
