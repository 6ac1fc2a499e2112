"""The pieces of :class:`~lancell.dataloader.sampler.CellSampler`'s ``"locality"`` epoch order: each zarr
group's cells cut into blocks of contiguous cells, the shuffled blocks expanded back into cells, and the cells
of each batch shuffled."""

from __future__ import annotations

import numpy as np

__all__ = ["EXPAND_CELLS", "expand_blocks", "locality_blocks", "shuffle_within_batches"]

EXPAND_CELLS = 1 << 16  # cells gathered per step of expand_blocks: its temporaries stay ~2 MB


def locality_blocks(order: np.ndarray, group: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Start (into ``order``) and length of each block: a new block at a group change or every block_size.

    Computed per run of one group, so the only per-cell temporaries are the groups in ``order``'s order and
    one comparison of neighbours (not the 40 B per cell of a per-cell offset within its run)."""
    n = order.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    sorted_group = group[order]
    change = np.flatnonzero(sorted_group[1:] != sorted_group[:-1]) + 1
    del sorted_group
    run_start = np.concatenate(([0], change)).astype(np.int64)
    run_end = np.concatenate((change, [n])).astype(np.int64)
    per_run = -(-(run_end - run_start) // block_size)
    first_block = np.cumsum(per_run) - per_run
    k = np.arange(int(per_run.sum()), dtype=np.int64) - np.repeat(first_block, per_run)  # number in its run
    starts = np.repeat(run_start, per_run) + k * block_size
    return starts, np.minimum(block_size, np.repeat(run_end, per_run) - starts)


def expand_blocks(order: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``order[s:s+l]`` for every block ``(s, l)``, concatenated (gathered about ``EXPAND_CELLS`` cells at a
    time, so the gather's index arrays never span the whole order)."""
    ends = np.cumsum(lengths)
    out = np.empty(int(ends[-1]) if ends.size else 0, dtype=order.dtype)
    lo = 0
    while lo < lengths.size:
        written = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, written + EXPAND_CELLS, side="right")))
        part_starts, part_lengths = starts[lo:hi], lengths[lo:hi]
        offset = np.repeat(part_starts - (ends[lo:hi] - part_lengths - written), part_lengths)
        out[written : int(ends[hi - 1])] = order[np.arange(offset.size) + offset]
        lo = hi
    return out


def shuffle_within_batches(order: np.ndarray, share: int, batch_size: int, rng: np.random.Generator) -> None:
    """Shuffle, in place, the cells of each batch of each rank's ``share`` of ``order`` (full batches as the
    rows of one view, each rank's last, shorter batch on its own)."""
    for begin in range(0, order.size, max(share, 1)):
        cells = order[begin : begin + share]
        full = cells.size // batch_size * batch_size
        if full:
            rows = cells[:full].reshape(-1, batch_size)
            rng.permuted(rows, axis=1, out=rows)
        rng.shuffle(cells[full:])
