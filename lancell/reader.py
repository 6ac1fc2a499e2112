"""Read many element ranges of a 1-D zarr array (or many rows of a 2-D one) in one pass.

Ranges are sorted, coalesced into runs (ranges closer than ``max_gap`` elements share one read), each run is
read once, and the requested slices are gathered back in request order into one flat buffer.
"""

from __future__ import annotations

import numpy as np
import zarr

__all__ = ["gather_ranges", "read_element_ranges", "read_rows"]


def coalesce(starts: np.ndarray, ends: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted-by-start ranges into runs ``[run_start, run_end)`` with gaps below ``max_gap``."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    breaks = np.flatnonzero(s[1:] > reach[:-1] + max_gap) + 1
    run_starts = s[np.concatenate(([0], breaks))]
    run_ends = reach[np.concatenate((breaks - 1, [len(s) - 1]))]
    return run_starts, run_ends


def gather_ranges(buffer: np.ndarray, buffer_offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``buffer[o:o+n]`` for each ``(o, n)`` in order, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return buffer[:0].copy()
    out_offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    index = np.arange(total, dtype=np.int64) + np.repeat(buffer_offsets - out_offsets, lengths)
    return buffer[index]


def read_element_ranges(
    array: zarr.Array, starts: np.ndarray, ends: np.ndarray, *, max_gap: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(flat, lengths)``: ``flat`` is ``array[s:e]`` for every range concatenated in request order.

    Parameters
    ----------
    array
        A 1-D zarr array.
    starts, ends
        int64 arrays of equal length, ``0 <= start <= end <= array.shape[0]``.
    max_gap
        Ranges whose gap is smaller are read together (default: one inner chunk).
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    lengths = ends - starts
    if starts.size == 0 or int(lengths.sum()) == 0:
        return np.zeros(0, dtype=array.dtype), lengths
    nonempty = lengths > 0
    gap = int(array.chunks[0]) if max_gap is None else max_gap
    run_starts, run_ends = coalesce(starts[nonempty], ends[nonempty], gap)
    parts = [np.asarray(array[int(a) : int(b)]) for a, b in zip(run_starts, run_ends, strict=True)]
    buffer = np.concatenate(parts) if len(parts) > 1 else parts[0]
    run_base = np.concatenate(([0], np.cumsum(run_ends - run_starts)[:-1]))
    run_of = np.searchsorted(run_starts, starts, side="right") - 1
    offsets = np.where(
        nonempty, run_base[np.maximum(run_of, 0)] + starts - run_starts[np.maximum(run_of, 0)], 0
    )
    return gather_ranges(buffer, offsets, lengths), lengths


def read_rows(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows of a 2-D zarr array in request order (each distinct row read once)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0, array.shape[1]), dtype=array.dtype)
    unique, inverse = np.unique(rows, return_inverse=True)
    block = array.get_orthogonal_selection((unique, slice(None)))
    return np.asarray(block)[inverse]
