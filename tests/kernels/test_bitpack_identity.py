"""BP-128 encode is byte-identical to the encoder before the bytes-based width search (commit 1b53c60):
digests of that encoder's output, recorded here, on ``benchmarks/codec.py``'s synthetic matrix, the bundled
celltypist matrix and many seeded random arrays of every shape the encoder distinguishes, both transforms;
every buffer also decodes exactly."""

import hashlib
from collections.abc import Iterator

import numpy as np
import pytest

from benchmarks.codec import REAL, SYNTHETIC, real_csr, synthetic_csr
from kernels import bitpack as bp

RANDOM_ARRAYS = 600


def random_arrays(seed: int, count: int) -> Iterator[np.ndarray]:
    """Seeded uint32 arrays of 0..2,999 values: uniform widths, small values with outliers, sorted runs
    (CSR indices), a width per block, negative-binomial counts, and short increasing runs with resets."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = int(rng.integers(0, 3000))
        kind = i % 6
        if kind == 0:
            x = rng.integers(0, 2**32, n, dtype=np.uint64) >> np.uint64(rng.integers(0, 33))
        elif kind == 1:
            x = rng.geometric(1 / rng.uniform(1, 300), n).astype(np.uint64)
            k = int(rng.integers(0, n // 10 + 2))
            if n:
                x[rng.integers(0, n, k)] = rng.integers(0, 2**32, k, dtype=np.uint64)
        elif kind == 2:
            highs = [2, 300, 30_000, 2**32]
            runs = [
                np.sort(rng.integers(0, highs[int(rng.integers(0, 4))], int(rng.integers(0, 500)), np.uint64))
                for _ in range(int(rng.integers(1, 8)))
            ]
            x = np.concatenate(runs)
        elif kind == 3:
            widths = np.repeat(rng.integers(0, 33, -(-n // 128) + 1).astype(np.uint64), 128)[:n]
            x = rng.integers(0, 2**32, n, dtype=np.uint64) % (np.uint64(1) << widths)
        elif kind == 4:
            x = (rng.negative_binomial(2, rng.uniform(0.01, 0.9), n) + 1).astype(np.uint64)
        else:
            steps = [2, 20, 300, 70_000][int(rng.integers(0, 4))]
            x = np.cumsum(rng.integers(0, steps, n, dtype=np.uint64))
            x[rng.random(n) < rng.uniform(0, 0.2)] = 0
        yield (x % np.uint64(2**32)).astype(np.uint32)


def matrix_arrays() -> Iterator[tuple[np.ndarray, int]]:
    """``benchmarks/codec.py``'s synthetic matrix (its first 300 cells) and the bundled celltypist matrix
    (its first 400,000 nonzeros): CSR indices (delta) and counts (plain), in 4,096-value chunks."""
    indices, counts = synthetic_csr(**{**SYNTHETIC, "n_cells": 300})
    yield indices, bp.TRANSFORM_DELTA
    yield counts, bp.TRANSFORM_NONE
    indices, counts = real_csr(REAL["celltypist"])
    yield indices[:400_000], bp.TRANSFORM_DELTA
    yield counts[:400_000], bp.TRANSFORM_NONE


def digest(buffers: Iterator[np.ndarray]) -> str:
    h = hashlib.sha256()
    for buf in buffers:
        h.update(len(buf).to_bytes(8, "little"))
        h.update(buf.tobytes())
    return h.hexdigest()


RECORDED = {
    "random plain": "f5831281afce99be4611f86cf61831d60fd51cee43327c5abb99e6631f4b0865",
    "random delta": "01642e4082f909412967e5da493ba3d2308321b26bc3923e789b1c624e3a92a5",
    "matrices": "9cf09e92b92a6653206b5cedadcbcb78bd49b9d15c34b53feb8b66df365eb0da",
}


@pytest.mark.parametrize("transform", [bp.TRANSFORM_NONE, bp.TRANSFORM_DELTA], ids=["plain", "delta"])
def test_random_arrays_encode_as_recorded(transform: int) -> None:
    def buffers() -> Iterator[np.ndarray]:
        for x in random_arrays(21, RANDOM_ARRAYS):
            buf = bp.encode(x, transform)
            assert np.array_equal(bp.decode(buf), x)
            yield buf

    name = "random " + ("delta" if transform else "plain")
    assert digest(buffers()) == RECORDED[name]


def test_codec_matrices_encode_as_recorded() -> None:
    def buffers() -> Iterator[np.ndarray]:
        for x, transform in matrix_arrays():
            n = x.size // 4096 * 4096
            buf, ends = bp.encode_chunks(x[:n], 4096, transform)
            starts = np.concatenate(([0], ends[:-1]))
            out = np.empty(n, np.uint32)
            bp.decode_chunks(buf, starts, ends - starts, out)
            assert np.array_equal(out, x[:n])
            yield buf
            tail = bp.encode(x[n:], transform)
            assert np.array_equal(bp.decode(tail), x[n:])
            yield tail

    assert digest(buffers()) == RECORDED["matrices"]
