"""The per-block kernels of ingestion (checks, renumbering, row sorts) against numpy references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from kernels import bitpack as bp
from kernels.ingest import float_values, integer_values, map_indices, sort_rows

IDENTITY = np.zeros(0, np.uint32)  # map_indices without a map: var is in stored order


def _block(seed: int, n_rows: int = 200, n_cols: int = 3_000, density: float = 0.05) -> sp.csr_matrix:
    block = sp.random(n_rows, n_cols, density=density, format="csr", random_state=seed, dtype=np.float64)
    block.sort_indices()
    return block


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mapped", [False, True])
def test_map_indices_renumbers(seed: int, mapped: bool) -> None:
    block = _block(seed)
    permuted = np.random.default_rng(seed).permutation(block.shape[1]).astype(np.uint32)
    column_map = permuted if mapped else IDENTITY
    indptr = block.indptr.astype(np.int64)
    out = np.empty(block.nnz, np.uint32)
    assert map_indices(indptr, block.indices, block.shape[1], column_map, out) == 0
    np.testing.assert_array_equal(out, permuted[block.indices] if mapped else block.indices)
    rows = np.array([block.indptr[50], block.indptr[60]])  # a block that starts mid-matrix
    assert map_indices(indptr[50:61], block.indices[rows[0] : rows[1]], 3_000, column_map, out) == 0


@pytest.mark.parametrize(
    ("row", "why"),
    [([3, 3, 5], "repeated"), ([5, 3], "unsorted"), ([-1, 2], "negative"), ([1, 10], "outside")],
)
@pytest.mark.parametrize("mapped", [False, True])
def test_map_indices_rejects(row: list[int], why: str, mapped: bool) -> None:
    indices = np.array([0, 4, *row], np.int64)
    indptr = np.array([0, 2, indices.size], np.int64)
    out = np.empty(indices.size, np.uint32)
    column_map = np.arange(10, dtype=np.uint32)[::-1].copy() if mapped else IDENTITY
    assert map_indices(indptr, indices, 10, column_map, out) == 1, why


@pytest.mark.parametrize("mapped", [False, True])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("bad", ["negative", "outside", "repeated", "out of order"])
def test_map_indices_rejects_anywhere_in_a_block(mapped: bool, where: str, bad: str) -> None:
    block = _block(7, n_rows=300)
    indices, indptr = block.indices.astype(np.int64), block.indptr.astype(np.int64)
    row = {"first": 0, "middle": 150, "last": 299}[where]
    lo, hi = int(indptr[row]), int(indptr[row + 1])
    k = {"first": lo, "middle": (lo + hi) // 2, "last": hi - 1}[where]  # first, middle, last element
    neighbour = k + 1 if k + 1 < hi else k - 1
    if bad == "negative":
        indices[k] = -1
    elif bad == "outside":
        indices[k] = 3_000
    elif bad == "repeated":
        indices[k] = indices[neighbour]
    else:
        indices[k], indices[neighbour] = indices[neighbour], indices[k]
    column_map = np.arange(3_000, dtype=np.uint32) if mapped else IDENTITY
    out = np.empty(indices.size, np.uint32)
    assert map_indices(indptr, indices, 3_000, column_map, out) == 1


def test_map_indices_restarts_at_each_row() -> None:
    indices = np.array([5, 7, 1, 2], np.int32)  # a smaller index after a row boundary is fine
    out = np.empty(4, np.uint32)
    assert map_indices(np.array([0, 2, 2, 4]), indices, 8, IDENTITY, out) == 0
    np.testing.assert_array_equal(out, indices)


@pytest.mark.parametrize(
    ("values", "bad"),
    [
        (np.array([0, 1, 2**32 - 1], np.int64), 0),
        (np.array([0, 2**32], np.int64), 1),
        (np.array([3, -1], np.int32), 1),
        (np.array([2**32 - 1, 2**63], np.uint64), 1),
        (np.array([7, 200], np.uint8), 0),
    ],
)
def test_integer_values(values: np.ndarray, bad: int) -> None:
    out = np.empty(values.size, np.uint32)
    assert integer_values(values, out) == bad
    if not bad:
        np.testing.assert_array_equal(out, values.astype(np.uint32))


@pytest.mark.parametrize("position", [0, 4_999, 9_999])
@pytest.mark.parametrize(("dtype", "value"), [(np.int32, -1), (np.int64, 2**32), (np.float64, np.nan)])
def test_values_rejected_at_the_first_middle_and_last_element(
    position: int, dtype: type, value: float
) -> None:
    values = np.arange(10_000).astype(dtype)
    values[position] = value
    if np.dtype(dtype).kind == "f":
        assert float_values(values, False, np.empty(values.size, np.float32)) == 1
        values[position] = 0.5  # fractional counts
        assert float_values(values, True, np.empty(values.size, np.float32)) == 1
    else:
        assert integer_values(values, np.empty(values.size, np.uint32)) == 1


@pytest.mark.parametrize(
    ("values", "integral", "bad"),
    [
        (np.array([0.5, -2.0, 1e30]), False, 0),
        (np.array([1.0, np.nan]), False, 1),
        (np.array([1.0, -np.inf]), False, 1),
        (np.array([1e39]), False, 1),
        (np.array([0.0, 3.0, 1e7], np.float32), True, 0),
        (np.array([2.0, 0.5]), True, 1),
        (np.array([2.0, -1.0]), True, 1),
    ],
)
def test_float_values(values: np.ndarray, integral: bool, bad: int) -> None:
    out = np.empty(values.size, np.float32)
    assert float_values(values, integral, out) == bad
    if not bad:
        np.testing.assert_array_equal(out, values.astype(np.float32))


@pytest.mark.parametrize(
    ("n_cols", "sizes"), [(30_000, [0, 1, 5, 100, 2_000, 30_000, 3]), (65, [65, 64, 0, 1, 2])]
)
def test_sort_rows(n_cols: int, sizes: list[int]) -> None:
    rng = np.random.default_rng(n_cols)
    indptr = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    columns = np.concatenate([rng.permutation(n_cols)[:size] for size in sizes]).astype(np.uint32)
    values = rng.random(columns.size).astype(np.float32)
    out_columns, out_values = np.empty_like(columns), np.empty_like(values)
    sort_rows(indptr, columns, values, n_cols, out_columns, out_values)
    for lo, hi in itertools.pairwise(indptr):
        order = np.argsort(columns[lo:hi])
        np.testing.assert_array_equal(out_columns[lo:hi], columns[lo:hi][order])
        np.testing.assert_array_equal(out_values[lo:hi], values[lo:hi][order])


@pytest.mark.parametrize("transform", [bp.TRANSFORM_NONE, bp.TRANSFORM_DELTA])
def test_encode_chunks_equals_encode_per_chunk(transform: int) -> None:
    values = np.random.default_rng(5).negative_binomial(2, 0.2, 7 * 300).astype(np.uint32)
    values[::50] = 2**31  # exceptions
    buffer, ends = bp.encode_chunks(values, 300, transform, trailer=4)
    starts = np.concatenate(([0], ends[:-1]))
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        np.testing.assert_array_equal(
            buffer[start : end - 4], bp.encode(values[300 * i : 300 * (i + 1)], transform)
        )
    assert ends[-1] == buffer.size
    with pytest.raises(bp.BitpackError, match="whole number"):
        bp.encode_chunks(values[:-1], 300)
    with pytest.raises(bp.BitpackError, match="trailer of 3 bytes: expected a multiple of 4"):
        bp.encode_chunks(values, 300, transform, trailer=3)  # chunks would lose their word alignment


@pytest.mark.parametrize("transform", [bp.TRANSFORM_NONE, bp.TRANSFORM_DELTA])
def test_encode_chunks_into_a_reused_buffer(transform: int) -> None:
    """A reused ``out`` (dirty from a larger encoding) gives the same bytes, and leaves the rest as it was."""
    rng = np.random.default_rng(8)
    small, large = (rng.negative_binomial(2, 0.2, n * 300).astype(np.uint32) for n in (3, 7))
    out = np.full(bp.encoded_chunks_words(7, 300, 4) + 5, 0xDEADBEEF, np.uint32)
    bp.encode_chunks(large, 300, transform, 4, out=out)
    tail = out[bp.encoded_chunks_words(7, 300, 4) :].copy()
    buffer, ends = bp.encode_chunks(small, 300, transform, 4, out=out)
    expected, expected_ends = bp.encode_chunks(small, 300, transform, 4)
    np.testing.assert_array_equal(ends, expected_ends)
    starts = np.concatenate(([0], ends[:-1]))
    for start, end in zip(starts, ends, strict=True):  # the trailers are the caller's, uninitialized
        np.testing.assert_array_equal(buffer[start : end - 4], expected[start : end - 4])
    assert np.shares_memory(buffer, out) and buffer.size == ends[-1]
    np.testing.assert_array_equal(out[bp.encoded_chunks_words(7, 300, 4) :], tail)
    with pytest.raises(bp.BitpackError, match="at least 2163 words"):
        bp.encode_chunks(large, 300, transform, 4, out=out[:100])
    with pytest.raises(bp.BitpackError, match="contiguous 1-D uint32"):
        bp.encode_chunks(small, 300, transform, 4, out=out.view(np.int32))


def test_decode_chunks_equals_decode_and_names_a_bad_chunk() -> None:
    values = np.random.default_rng(6).negative_binomial(2, 0.2, 5 * 1_000).astype(np.uint32)
    chunks = [bp.encode(values[i : i + 1_000], bp.TRANSFORM_DELTA) for i in range(0, values.size, 1_000)]
    gap = np.zeros(4, np.uint8)  # the shard's crc32c trailers
    buf = np.concatenate([part for chunk in chunks for part in (chunk, gap)])
    sizes = np.array([c.size for c in chunks])
    offsets = np.concatenate(([0], np.cumsum(sizes + 4)[:-1]))
    out = np.empty(values.size, np.uint32)
    bp.decode_chunks(buf, offsets, sizes, out)
    np.testing.assert_array_equal(out, values)
    with pytest.raises(bp.BitpackError, match="chunk 2 is malformed"):
        bp.decode_chunks(buf, offsets, np.where(np.arange(5) == 2, sizes - 4, sizes), out)
    buf[offsets[3] + 16] = 60  # a block head wider than 32 bits
    with pytest.raises(bp.BitpackError, match="chunk 3 is malformed \\(bad block head\\)"):
        bp.decode_chunks(buf, offsets, sizes, out)
    with pytest.raises(bp.BitpackError, match="beyond"):
        bp.decode_chunks(buf, offsets + 10_000, sizes, out)
