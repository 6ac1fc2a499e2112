"""BP-128 kernels: exact round trips over lengths, widths and transforms; malformed buffers are rejected."""

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
    # All 32-bit: full blocks take 512 bytes, the tail 16 bytes per 4 values (rounded up).
    full = bp.encode(np.full(n, 2**32 - 1, np.uint32))
    assert full.size == header + 512 * (n // 128) + 16 * -(-(n % 128) // 4)
    assert bp.max_encoded_size(n) >= full.size + 4 * blocks


def test_delta_shrinks_sorted_indices() -> None:
    x = np.arange(0, 3 * 40_960, 3, dtype=np.uint32)
    assert bp.encode(x, bp.TRANSFORM_DELTA).size < bp.encode(x).size / 4


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


@pytest.mark.parametrize("width", [33, 64, 255])
def test_width_above_32_is_rejected(width: int) -> None:
    buf = encoded()
    buf[16 + 3] = width
    with pytest.raises(bp.BitpackError, match=f"block 3 has bit width {width}"):
        bp.decode(buf)


@pytest.mark.parametrize("n", [0, 872, 1128, 2**40, 2**64 - 1])
def test_wrong_value_count_is_rejected(n: int) -> None:
    buf = encoded(1000)
    buf[8:16] = np.frombuffer(struct.pack("<Q", n), np.uint8)
    with pytest.raises(bp.BitpackError):
        bp.decode(buf)


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [(0, ord("X"), "magic"), (3, 2, "version"), (4, 2, "transform"), (6, 1, "reserved")],
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
