"""BP-128 kernels: exact round trips over lengths, widths, transforms and block modes; malformed buffers are
rejected."""

import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import bitpack as bp

TRANSFORMS = [bp.TRANSFORM_NONE, bp.TRANSFORM_DELTA]
EDGE_LENGTHS = [0, 1, 2, 3, 4, 5, 31, 127, 128, 129, 255, 256, 257, 1000, 4096]
PROPERTY = settings(max_examples=60, deadline=None)


def round_trip(x: np.ndarray, transform: int) -> np.ndarray:
    buf = bp.encode(x, transform)
    assert buf.dtype == np.uint8 and buf.size % 4 == 0
    assert buf.size <= bp.max_encoded_size(x.size)
    out = bp.decode(buf)
    into = np.full(x.size, 7, np.uint32)
    bp.decode_into(buf, into)
    assert np.array_equal(out, into)
    return out


@st.composite
def uniform_width(draw: st.DrawFn) -> np.ndarray:
    """Up to 10,000 values below 2**w for one random width w in 0..32."""
    n = draw(st.integers(0, 10_000))
    width = draw(st.integers(0, 32))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (rng.integers(0, 2**32, n, dtype=np.uint64) >> np.uint64(32 - width)).astype(np.uint32)


@st.composite
def mixed_widths(draw: st.DrawFn) -> np.ndarray:
    """Blocks of different widths, with a partial last block most of the time."""
    widths = draw(st.lists(st.integers(0, 32), min_size=1, max_size=40))
    n = draw(st.integers(128 * (len(widths) - 1) + 1, 128 * len(widths)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shifts = np.repeat(np.asarray([32 - w for w in widths], np.uint64), 128)[:n]
    values = rng.integers(0, 2**32, n, dtype=np.uint64) >> shifts
    return values.astype(np.uint32)


@st.composite
def sorted_runs(draw: st.DrawFn) -> np.ndarray:
    """CSR-like indices: concatenated sorted runs, so deltas wrap at every run boundary."""
    lengths = draw(st.lists(st.integers(0, 3000), min_size=1, max_size=8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    high = draw(st.sampled_from([2, 300, 30_000, 2**32]))
    runs = [np.sort(rng.integers(0, high, k, dtype=np.uint64)) for k in lengths]
    return np.concatenate(runs).astype(np.uint32)


@st.composite
def short_runs(draw: st.DrawFn) -> np.ndarray:
    """CSR indices of cells with few nonzeros: strictly increasing runs of 1..max_run values (a reset every
    few values), some gene-panel size, and now and then a stretch of long runs or of unsorted values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_genes = draw(st.sampled_from([3, 100, 1000, 30_000, 2**32 - 1]))
    max_run = draw(st.integers(1, 100))
    parts = []
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.sampled_from(["cell"] * 6 + ["long", "noise"]))
        k = int(rng.integers(1, max_run + 1)) if kind == "cell" else int(rng.integers(1, 400))
        if kind == "noise":
            parts.append(rng.integers(0, n_genes, k, dtype=np.uint64))
        else:
            parts.append(np.sort(rng.choice(n_genes, min(k, n_genes), replace=False)).astype(np.uint64))
    return np.concatenate(parts).astype(np.uint32)


def block_modes(buf: np.ndarray) -> set[int]:
    """The mode flags (head bits 6-7) of the blocks of an encoded buffer."""
    heads = bp.validate(buf)[1]
    return set((heads & ~np.uint8(bp.WIDTH_MASK)).tolist())


@PROPERTY
@given(uniform_width(), st.sampled_from(TRANSFORMS))
def test_round_trip_uniform_width(x: np.ndarray, transform: int) -> None:
    assert np.array_equal(round_trip(x, transform), x)


@PROPERTY
@given(mixed_widths(), st.sampled_from(TRANSFORMS))
def test_round_trip_mixed_widths(x: np.ndarray, transform: int) -> None:
    assert np.array_equal(round_trip(x, transform), x)


@PROPERTY
@given(sorted_runs(), st.sampled_from(TRANSFORMS))
def test_round_trip_sorted_runs_with_resets(x: np.ndarray, transform: int) -> None:
    assert np.array_equal(round_trip(x, transform), x)


@settings(max_examples=150, deadline=None)
@given(short_runs(), st.sampled_from(TRANSFORMS))
def test_round_trip_short_runs_with_resets(x: np.ndarray, transform: int) -> None:
    assert np.array_equal(round_trip(x, transform), x)


@PROPERTY
@given(st.lists(st.integers(0, 2**32 - 1), max_size=600), st.sampled_from(TRANSFORMS))
def test_round_trip_lists(values: list[int], transform: int) -> None:
    x = np.asarray(values, dtype=np.uint32)
    assert np.array_equal(round_trip(x, transform), x)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("n", EDGE_LENGTHS)
@pytest.mark.parametrize("fill", ["zeros", "max", "alternating", "descending"])
def test_round_trip_edge_values(n: int, transform: int, fill: str) -> None:
    x = {
        "zeros": np.zeros(n, np.uint32),
        "max": np.full(n, 2**32 - 1, np.uint32),
        "alternating": np.tile(np.asarray([0, 2**32 - 1], np.uint32), n)[:n],
        "descending": np.arange(n, dtype=np.uint32)[::-1].copy(),
    }[fill]
    assert np.array_equal(round_trip(x, transform), x)


@pytest.mark.parametrize("n", EDGE_LENGTHS)
def test_sizes_are_exact(n: int) -> None:
    blocks = -(-n // 128)
    header = 16 + 4 * -(-blocks // 4)
    assert bp.encode(np.zeros(n, np.uint32)).size == header
    assert bp.encode(np.zeros(n, np.uint32), bp.TRANSFORM_DELTA).size == header + 4 * blocks
    # Random 32-bit values: a full block is cheapest at 32 bits (512 bytes), never above the bound.
    noise = np.random.default_rng(n).integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    for transform in TRANSFORMS:
        size = bp.encode(noise, transform).size
        assert size <= bp.max_encoded_size(n)
        if n % 128 == 0:
            assert size == header + (4 * blocks if transform else 0) + 512 * blocks


def test_exception_layout() -> None:
    """Zeros with one 300 at position 5: width 0, then after the (empty) packed blocks the info byte
    (count 1 - 1, 2 - 1 high bytes << 6) and the list (position 5, 300 little-endian)."""
    x = np.zeros(128, np.uint32)
    x[5] = 300
    buf = bp.encode(x)
    assert buf[16:20].tolist() == [bp.MODE_EXCEPTIONS, 0, 0, 0]
    assert buf[20:].tolist() == [1 << 6, 5, 300 & 255, 300 >> 8]
    # An exception wider than 16 bits takes 3 high bytes; the section is zero-padded to a word.
    x[5] = 2**20
    assert bp.encode(x)[20:].tolist() == [2 << 6, 5, 0, 0, 16, 0, 0, 0]
    # Two blocks: the info bytes of both, then both lists.
    y = np.zeros(256, np.uint32)
    y[[5, 128 + 9]] = 300
    assert bp.encode(y)[20:].tolist() == [64, 64, 5, 44, 1, 9, 44, 1]


def test_at_most_64_exceptions_per_block() -> None:
    """70 wide values among 128: 70 exceptions would be smaller, but a list holds at most 64."""
    x = np.ones(128, np.uint32)
    x[:70] = 2**20
    buf = bp.encode(x)
    assert bp.validate(buf)[1].tolist() == [21]
    assert np.array_equal(bp.decode(buf), x)


def test_block_modes_mix_in_one_buffer() -> None:
    """Delta blocks without and with exceptions and frame-of-reference blocks, chosen per block."""
    rng = np.random.default_rng(0)
    smooth = np.arange(0, 3 * 128, 3, dtype=np.uint32)  # deltas of 3, no reset
    cells = np.concatenate([np.sort(rng.choice(1000, 64, replace=False)) for _ in range(2)])  # one reset
    noise = rng.integers(0, 1000, 128)  # runs of ~2: offsets from the minimum beat deltas
    x = np.concatenate([smooth, cells, noise, smooth]).astype(np.uint32)
    buf = bp.encode(x, bp.TRANSFORM_DELTA)
    heads = bp.validate(buf)[1]
    assert heads.tolist() == [
        bp.MODE_DELTA | 2,
        bp.MODE_DELTA | bp.MODE_EXCEPTIONS | int(heads[1] & bp.WIDTH_MASK),
        10,
        bp.MODE_DELTA | 2,
    ]
    assert np.array_equal(bp.decode(buf), x)
    assert block_modes(bp.encode(noise.astype(np.uint32))) <= {0, bp.MODE_EXCEPTIONS}


def test_delta_shrinks_sorted_indices() -> None:
    x = np.arange(0, 3 * 40_960, 3, dtype=np.uint32)
    assert bp.encode(x, bp.TRANSFORM_DELTA).size < bp.encode(x).size / 4


@pytest.mark.parametrize(("nnz", "n_genes", "limit"), [(5, 1000, 1.4), (70, 1000, 1.0), (2000, 30_000, 1.0)])
def test_delta_packs_short_cells(nnz: int, n_genes: int, limit: float) -> None:
    """CSR indices with a reset every ``nnz`` values: resets are exceptions, not 32-bit blocks."""
    rng = np.random.default_rng(nnz)
    x = np.concatenate([np.sort(rng.choice(n_genes, nnz, replace=False)) for _ in range(80_000 // nnz)])
    buf = bp.encode(x.astype(np.uint32), bp.TRANSFORM_DELTA)
    assert buf.size / x.size < limit
    assert np.array_equal(bp.decode(buf), x)


def test_plain_patches_outliers() -> None:
    """Counts: mostly small with rare large values, which become exceptions instead of widening blocks."""
    x = np.random.default_rng(0).geometric(0.5, 40_960).astype(np.uint32)
    x[::97] = 5000
    buf = bp.encode(x)
    assert bp.MODE_EXCEPTIONS in block_modes(buf)
    assert buf.size / x.size < 0.6  # 13 bits for every value would be 1.6 bytes
    assert np.array_equal(bp.decode(buf), x)


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(bp.BitpackError, match="uint32"):
        bp.encode(np.arange(10, dtype=np.int64))
    with pytest.raises(bp.BitpackError, match="uint32"):
        bp.encode(np.zeros((2, 128), np.uint32))
    with pytest.raises(bp.BitpackError, match="transform"):
        bp.encode(np.zeros(4, np.uint32), 2)


def test_non_contiguous_input_is_encoded_exactly() -> None:
    x = np.arange(1000, dtype=np.uint32)[::3]
    assert np.array_equal(bp.decode(bp.encode(x, bp.TRANSFORM_DELTA)), x)


def test_unaligned_buffer_decodes() -> None:
    x = np.arange(300, dtype=np.uint32) * 7
    buf = bp.encode(x, bp.TRANSFORM_DELTA)
    shifted = np.empty(buf.size + 1, np.uint8)[1:]
    shifted[:] = buf
    assert np.array_equal(bp.decode(shifted), x)


def encoded(n: int = 1000, transform: int = bp.TRANSFORM_DELTA, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return bp.encode(np.sort(rng.integers(0, 30_000, n)).astype(np.uint32), transform).copy()


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_every_truncation_is_rejected(transform: int) -> None:
    buf = encoded(300, transform)
    for size in range(buf.size):
        with pytest.raises(bp.BitpackError):
            bp.decode(buf[:size])


def test_trailing_bytes_are_rejected() -> None:
    buf = encoded()
    for extra in (1, 4, 16):
        with pytest.raises(bp.BitpackError, match="trailing"):
            bp.decode(np.concatenate([buf, np.zeros(extra, np.uint8)]))


@pytest.mark.parametrize("head", [33, 63, 33 | 64, 255])
def test_width_above_32_is_rejected(head: int) -> None:
    buf = encoded()
    buf[16 + 3] = head
    with pytest.raises(bp.BitpackError, match=f"block 3 has bit width {head & 63} > 32"):
        bp.decode(buf)


def test_delta_flag_without_bases_is_rejected() -> None:
    buf = encoded(transform=bp.TRANSFORM_NONE)
    buf[16 + 2] |= bp.MODE_DELTA
    with pytest.raises(bp.BitpackError, match=r"block 2 has head 1\d+: mode flags"):
        bp.decode(buf)


def with_exceptions() -> tuple[np.ndarray, int]:
    """A plain buffer whose only block has 2 exceptions; returns it and the byte offset of its info byte."""
    x = np.full(128, 3, np.uint32)
    x[[7, 90]] = 1000
    buf = bp.encode(x).copy()
    at = 20 + 4 * 2 * 4  # header, head word, 2-bit block of 8 words
    assert buf[16] == bp.MODE_EXCEPTIONS | 2 and buf[at:].tolist() == [1, 7, 90, 250, 250, 0, 0, 0]
    return buf, at


def test_exception_list_length_is_checked() -> None:
    buf, at = with_exceptions()
    for info in (3, 1 | 2 << 6, 255):  # more entries or wider high parts: past the end (and padding)
        buf[at] = info
        with pytest.raises(bp.BitpackError, match="truncated"):
            bp.decode(buf)
    buf[at] = 0  # one entry: the buffer has bytes left over
    with pytest.raises(bp.BitpackError, match="trailing"):
        bp.decode(buf)
    buf, at = with_exceptions()
    buf[16] &= ~np.uint8(bp.MODE_EXCEPTIONS)  # the info byte and list are now trailing garbage
    with pytest.raises(bp.BitpackError, match="trailing"):
        bp.decode(buf)


def test_exception_positions_stay_in_their_block() -> None:
    """Positions are masked to 0..127: a corrupt position patches some value of its own block."""
    buf, at = with_exceptions()
    buf[at + 1] = 200  # 200 & 127 = 72
    out = bp.decode(buf)
    # Slot 72 gets 1000's high bits over its own 3; slot 7 keeps only 1000's low two bits.
    assert (out[72], out[7], out[90]) == (3 | 1000, 1000 & 3, 1000)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_version_1_buffers_decode(transform: int) -> None:
    """Version 1 heads are bare widths and every delta-transform block is a delta block."""
    x = np.arange(0, 7 * 1000, 7, dtype=np.uint32)
    buf = bp.encode(x, transform).copy()
    heads = buf[16 : 16 + 8]
    assert not (heads & bp.MODE_EXCEPTIONS).any()
    heads &= np.uint8(bp.WIDTH_MASK)
    buf[3] = 1
    assert np.array_equal(bp.decode(buf), x)
    buf[16] = 40
    with pytest.raises(bp.BitpackError, match="bit width 40"):
        bp.decode(buf)
    buf[16] = bp.MODE_EXCEPTIONS | 2  # version 1 has no mode flags
    with pytest.raises(bp.BitpackError, match="mode flags"):
        bp.decode(buf)


@pytest.mark.parametrize("n", [0, 872, 1128, 2**40, 2**64 - 1])
def test_wrong_value_count_is_rejected(n: int) -> None:
    buf = encoded(1000)
    buf[8:16] = np.frombuffer(struct.pack("<Q", n), np.uint8)
    with pytest.raises(bp.BitpackError):
        bp.decode(buf)


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [(0, ord("X"), "magic"), (3, 0, "version"), (3, 3, "version"), (4, 2, "transform"), (6, 1, "reserved")],
)
def test_bad_header_is_rejected(offset: int, value: int, match: str) -> None:
    buf = encoded()
    buf[offset] = value
    with pytest.raises(bp.BitpackError, match=match):
        bp.decode(buf)


def test_decode_rejects_bad_arguments() -> None:
    buf = encoded(1000)
    with pytest.raises(bp.BitpackError, match="uint8"):
        bp.decode(buf.view(np.uint32))
    with pytest.raises(bp.BitpackError, match="uint8"):
        bp.decode(bytes(buf))  # type: ignore[arg-type]
    for out in (np.empty(999, np.uint32), np.empty(1000, np.int32), np.empty(2000, np.uint32)[::2]):
        with pytest.raises(bp.BitpackError, match="out"):
            bp.decode_into(buf, out)
    assert issubclass(bp.BitpackError, ValueError)


def decode_or_reject(buf: np.ndarray) -> None:
    """A malformed buffer must raise BitpackError or decode to exactly its header's count; never crash."""
    try:
        out = bp.decode(buf)
    except bp.BitpackError:
        return
    assert out.size == struct.unpack_from("<Q", buf.tobytes(), 8)[0]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_never_crash(data: bytes) -> None:
    decode_or_reject(np.frombuffer(data, np.uint8))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 2000),
    st.sampled_from(TRANSFORMS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(-8, 8),
)
def test_corrupted_buffers_never_crash(
    n: int, transform: int, edits: list[tuple[int, int]], cut: int
) -> None:
    buf = encoded(n, transform, seed=n)
    for position, value in edits:
        buf[position % buf.size] = value
    if cut < 0:
        buf = buf[:cut]
    elif cut > 0:
        buf = np.concatenate([buf, np.full(cut, 0xAB, np.uint8)])
    decode_or_reject(buf)


def test_threads_decode_concurrently() -> None:
    """The kernels release the GIL; concurrent decodes of shared buffers stay exact."""
    chunks = [
        np.sort(np.random.default_rng(i).integers(0, 30_000, 20_000)).astype(np.uint32) for i in range(8)
    ]
    encoded_chunks = [bp.encode(c, bp.TRANSFORM_DELTA) for c in chunks]
    with ThreadPoolExecutor(max_workers=4) as pool:
        decoded = list(pool.map(bp.decode, encoded_chunks * 4))
    assert all(np.array_equal(d, c) for d, c in zip(decoded, chunks * 4, strict=True))


def test_kernels_import_neither_zarr_nor_lancell() -> None:
    code = "import sys, kernels.bitpack; print([m for m in ('zarr', 'lancell', 'h5py') if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
