"""Range -> chunk mapping and slice gathering for batched reads of chunked 1-D arrays.

A read asks for many element ranges ``[start, end)`` of one array stored in equal chunks of ``chunk_len``
elements. :func:`plan_pieces` cuts every range at chunk boundaries into *pieces*; each piece copies
``length`` elements from offset ``src`` of chunk ``chunk`` to offset ``dst`` of the flat output, where the
ranges lie back to back in request order. :func:`sort_pieces` groups the pieces by chunk, so that each chunk
is decoded once; :func:`copy_chunk_pieces` scatters the pieces of a run of decoded chunks in one call.

The kernels do no bounds checks: callers validate ``0 <= start <= end <= size`` first.
"""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def count_pieces(starts: np.ndarray, ends: np.ndarray, chunk_len: int) -> int:
    """Number of pieces the ranges cut into at multiples of ``chunk_len`` (empty ranges give none)."""
    total = 0
    for i in range(starts.size):
        if ends[i] > starts[i]:
            total += (ends[i] - 1) // chunk_len - starts[i] // chunk_len + 1
    return total


@numba.njit(cache=True, nogil=True)
def plan_pieces(
    starts: np.ndarray, ends: np.ndarray, chunk_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut ranges (int64, validated) at chunk boundaries.

    Returns
    -------
    tuple of np.ndarray
        ``(chunk, src, dst, length)``, int64 each, one value per piece in request order: the chunk index,
        the offset inside the chunk, the offset in the flat output and the number of elements.
    """
    n = count_pieces(starts, ends, chunk_len)
    chunk = np.empty(n, np.int64)
    src = np.empty(n, np.int64)
    dst = np.empty(n, np.int64)
    length = np.empty(n, np.int64)
    p = 0
    out = 0
    for i in range(starts.size):
        pos = starts[i]
        end = ends[i]
        while pos < end:
            c = pos // chunk_len
            stop = min(end, (c + 1) * chunk_len)
            chunk[p] = c
            src[p] = pos - c * chunk_len
            dst[p] = out
            length[p] = stop - pos
            out += stop - pos
            pos = stop
            p += 1
    return chunk, src, dst, length


@numba.njit(cache=True, nogil=True)
def sort_pieces(
    chunk: np.ndarray, src: np.ndarray, dst: np.ndarray, length: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group pieces by chunk (stable within a chunk).

    Returns
    -------
    tuple of np.ndarray
        ``(chunks, bounds, src, dst, length)``: the distinct chunk indices in increasing order, int64
        ``bounds`` (``len(chunks) + 1`` values) such that the pieces of ``chunks[k]`` are
        ``bounds[k]:bounds[k+1]``, and the piece arrays reordered accordingly.
    """
    order = np.argsort(chunk, kind="mergesort")
    n = chunk.size
    s_src = np.empty(n, np.int64)
    s_dst = np.empty(n, np.int64)
    s_len = np.empty(n, np.int64)
    distinct = 0
    previous = -1
    for k in range(n):
        j = order[k]
        s_src[k] = src[j]
        s_dst[k] = dst[j]
        s_len[k] = length[j]
        if chunk[j] != previous:
            distinct += 1
            previous = chunk[j]
    chunks = np.empty(distinct, np.int64)
    bounds = np.empty(distinct + 1, np.int64)
    previous = -1
    d = 0
    for k in range(n):
        c = chunk[order[k]]
        if c != previous:
            chunks[d] = c
            bounds[d] = k
            d += 1
            previous = c
    bounds[distinct] = n
    return chunks, bounds, s_src, s_dst, s_len


@numba.njit(cache=True, nogil=True)
def copy_chunk_pieces(
    decoded: np.ndarray,
    chunk_len: int,
    slots: np.ndarray,
    bounds: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    length: np.ndarray,
    out: np.ndarray,
) -> None:
    """Scatter the pieces of several decoded chunks, laid back to back in ``decoded``, into ``out``.

    Chunk ``k`` of ``decoded`` (``decoded[k * chunk_len : (k + 1) * chunk_len]``) is the chunk of position
    ``slots[k]`` of :func:`sort_pieces`' output, whose pieces are ``bounds[slots[k]] : bounds[slots[k] + 1]``:
    ``out[dst[p] : dst[p] + length[p]] = chunk[src[p] : src[p] + length[p]]``.
    """
    for k in range(slots.size):
        base = np.uint64(k) * np.uint64(chunk_len)
        for p in range(bounds[slots[k]], bounds[slots[k] + 1]):
            # Unsigned indices: numba wraps negative signed indices, and that check stops LLVM vectorizing.
            s = base + np.uint64(src[p])
            d = np.uint64(dst[p])
            for i in range(np.uint64(length[p])):
                out[d + i] = decoded[s + i]
