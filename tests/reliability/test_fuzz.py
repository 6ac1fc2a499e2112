"""Fuzzing the decoders that stored bytes reach: BP-128 and the shard index parser.

BP-128 (extending ``tests/kernels/test_bitpack.py``, which throws random bytes and byte edits at
``bitpack.decode``): single-bit flips, truncations and extensions of valid encodings, and buffers that pass
``validate`` with adversarial contents (random block widths, exception info bytes and lists), through every
entry point (``bitpack.decode``, ``decode_into``, ``decode_chunks``, ``validate``, the zarr codec and the
batched reader's decoder). Each must raise its typed error or decode to exactly the header's count of values.
The numba kernels do no bounds checks, so these run in a child process (a segfault fails the test instead of
killing pytest), on buffers that end exactly where an unreadable page begins: a kernel that reads past the end
of its input faults there instead of reading garbage.

Shard indexes: random and structured index bytes, with valid or invalid crc32c, offsets and sizes past the end
of the shard, overlapping chunks, ``2**64 - 1`` sentinels, half sentinels and values that are negative as
int64, checked against a reference written with Python integers; and the same indexes behind a real shard
object read by :class:`lancell.storage.shard_reader.ShardedArrayReader`. Only ``ShardFormatError``,
``ChecksumError`` (``CodecError``) or ``OutOfBoundsError`` may come out, never a numpy error.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import mmap
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import crc32c
import numpy as np
import obstore.store
import pytest
import zarr
import zarr.storage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.core.buffer import default_buffer_prototype

from kernels import bitpack as bp
from lancell.errors import ChecksumError, CodecError, OutOfBoundsError, ShardFormatError
from lancell.storage.codecs import BYTES_DECODERS, BitpackingCodec
from lancell.storage.groups import value_codecs
from lancell.storage.shard_index import index_nbytes, parse_index
from lancell.storage.shard_reader import ShardedArrayReader

KERNEL_FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INDEX_FUZZ = settings(max_examples=300, deadline=None)
TRANSFORMS = [bp.TRANSFORM_NONE, bp.TRANSFORM_DELTA]
U64 = 2**64

# ---------------------------------------------------------------------------------------------- BP-128


_LIBC = ctypes.CDLL(None, use_errno=True)


def guarded(data: bytes) -> np.ndarray:
    """``data`` as a uint8 array that ends exactly where an inaccessible page begins (Linux)."""
    page = mmap.PAGESIZE
    size = -(-len(data) // page) * page + page
    region = mmap.mmap(-1, size)
    start = size - page - len(data)
    region[start : start + len(data)] = data
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    if _LIBC.mprotect(ctypes.c_void_p(address + size - page), ctypes.c_size_t(page), 0):  # PROT_NONE
        raise OSError(ctypes.get_errno(), "mprotect failed")
    return np.frombuffer(region, np.uint8, count=len(data), offset=start)


def values(kind: str, n: int, seed: int) -> np.ndarray:
    """``n`` uint32 values shaped like what lancell stores."""
    rng = np.random.default_rng(seed)
    if kind == "indices":  # sorted runs of ~40 (one CSR cell each): delta blocks with reset exceptions
        x = rng.integers(0, 30_000, n)
        return x[np.lexsort((x, np.arange(n) // 40))].astype(np.uint32)
    if kind == "counts":  # small counts with rare outliers: patched exceptions
        x = rng.geometric(0.5, n).astype(np.uint32)
        x[rng.random(n) < 0.02] = 70_000
        return x
    return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)  # "noise": 32-bit blocks


def decode_everywhere(buf: np.ndarray) -> None:
    """Every BP-128 decoder on ``buf``: the same typed rejection, or exactly the header's count of values."""
    try:
        expected = bp.decode(buf)
    except bp.BitpackError:
        expected = None
    else:
        assert expected.size == struct.unpack_from("<Q", buf.tobytes(), 8)[0]
    try:
        n = bp.validate(buf)[2]
    except bp.BitpackError:
        assert expected is None
    else:
        assert expected is not None and n == expected.size
        into = np.empty(n, np.uint32)
        bp.decode_into(buf, into)
        assert np.array_equal(into, expected)
        for wrong in (np.empty(n + 1, np.uint32), np.empty(n - 1, np.uint32) if n else np.empty(n, np.int32)):
            with pytest.raises(bp.BitpackError):
                bp.decode_into(buf, wrong)
    n_header = struct.unpack_from("<Q", buf.tobytes(), 8)[0] if buf.size >= 16 else 0
    if n_header <= 1 << 20:  # the batch decoder of whole shards, on one chunk of the header's length
        out = np.empty(n_header, np.uint32)
        try:
            bp.decode_chunks(buf, np.zeros(1, np.int64), np.array([buf.size]), out)
        except bp.BitpackError:
            assert expected is None
        else:
            assert expected is not None and np.array_equal(out, expected)
    prototype = default_buffer_prototype()
    codecs = [
        BYTES_DECODERS["lancell.bitpacking"],
        lambda b: (
            BitpackingCodec()
            ._decode_sync(prototype.buffer.from_array_like(b), SimpleNamespace(prototype=prototype))
            .as_numpy_array()
        ),
    ]
    for decode in codecs:
        try:
            out = decode(buf)
        except CodecError:
            assert expected is None
        else:
            assert expected is not None and np.array_equal(out.view(np.uint32), expected)


@st.composite
def encodings(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["indices", "counts", "noise"]))
    n = draw(st.integers(0, 1500))
    return bp.encode(
        values(kind, n, draw(st.integers(0, 2**16))), draw(st.sampled_from(TRANSFORMS))
    ).tobytes()


@KERNEL_FUZZ
@given(encodings(), st.lists(st.integers(0, 8 * 2**16), min_size=1, max_size=3))
def fuzz_bit_flips(encoded: bytes, bits: list[int]) -> None:
    raw = bytearray(encoded)
    for bit in bits:
        raw[(bit // 8) % len(raw)] ^= 1 << (bit % 8)
    decode_everywhere(guarded(bytes(raw)))


@KERNEL_FUZZ
@given(encodings(), st.integers(-4000, 40), st.binary(max_size=8))
def fuzz_truncations_and_extensions(encoded: bytes, cut: int, tail: bytes) -> None:
    raw = encoded[: max(len(encoded) + cut, 0)] if cut < 0 else encoded + tail[: cut % 9]
    decode_everywhere(guarded(raw))


def _block_words(m: int, width: int) -> int:
    return 4 * ((-(-m // 4) * width + 31) // 32)


@st.composite
def adversarial(draw: st.DrawFn) -> bytes:
    """A buffer of exactly the size its header, heads and exception info bytes call for (so that it passes
    ``validate`` unless a head is invalid), with random packed words, bases, positions and high parts."""
    n = draw(st.integers(0, 700))
    transform = draw(st.sampled_from(TRANSFORMS))
    version = draw(st.sampled_from([1, 2, 2, 2]))
    nb = -(-n // 128)
    modes = [0, bp.MODE_EXCEPTIONS] + (
        [bp.MODE_DELTA, bp.MODE_DELTA | bp.MODE_EXCEPTIONS] if transform else []
    )
    heads = [
        draw(st.integers(0, 32)) | (draw(st.sampled_from(modes)) if version == 2 else 0) for _ in range(nb)
    ]
    if nb and draw(st.integers(0, 9)) == 0:
        heads[draw(st.integers(0, nb - 1))] = draw(st.integers(0, 255))  # any head at all
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    words = -(-nb // 4) + (nb if transform else 0)  # head words, then bases
    for b, head in enumerate(heads):
        words += _block_words(min(128, n - 128 * b), min(head & bp.WIDTH_MASK, 32))
    infos = [int(rng.integers(0, 256)) for head in heads if head & bp.MODE_EXCEPTIONS]
    lists = sum(((i & 63) + 1) * ((i >> 6) + 2) for i in infos)
    body = rng.integers(0, 256, 4 * words + (len(infos) + lists + 3) // 4 * 4, dtype=np.uint8)
    body[: 4 * -(-nb // 4)] = 0
    body[:nb] = heads
    body[4 * words : 4 * words + len(infos)] = infos
    header = struct.pack("<3sBB3sQ", b"LBP", version, transform, b"\0\0\0", n)
    return header + body.tobytes()[: draw(st.sampled_from([None, None, None, -4, -1]))]


@KERNEL_FUZZ
@given(adversarial())
def fuzz_adversarial_contents(raw: bytes) -> None:
    decode_everywhere(guarded(raw))


KERNEL_PROPERTIES = ["fuzz_bit_flips", "fuzz_truncations_and_extensions", "fuzz_adversarial_contents"]


def test_bitpack_decoders_in_a_child_process() -> None:
    """The BP-128 properties above, run where a crash cannot take pytest down with it."""
    code = f"import test_fuzz as f\nfor name in {KERNEL_PROPERTIES!r}:\n    getattr(f, name)()\nprint('ok')"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    report = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, f"exit status {done.returncode} (negative: killed by that signal)\n{report}"
    assert done.stdout.strip().endswith("ok"), report


GUARD_CHILD = """
import ctypes, test_fuzz
buffer = test_fuzz.guarded(b"1234")
print(bytes(buffer), flush=True)
print(ctypes.cast(buffer.ctypes.data, ctypes.POINTER(ctypes.c_uint8))[4])
"""


def test_guard_page_catches_an_over_read() -> None:
    """The oracle works: reading one byte past a guarded buffer kills the process with SIGSEGV."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(
        [sys.executable, "-c", GUARD_CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.stdout.startswith("b'1234'") and done.returncode == -11, done.stderr


# ------------------------------------------------------------------------------------------ shard index


CHUNKS = 6  # chunks per shard in the structured fuzz


def reference(entries: list[tuple[int, int]], start: int, end: int) -> str | None:
    """Why the parser must reject these entries (computed with Python integers), or None."""
    written = [(o, s) for o, s in entries if (o, s) != (U64 - 1, U64 - 1)]
    if any((o == U64 - 1) != (s == U64 - 1) for o, s in entries):
        return "half missing"
    if any(s == 0 for _, s in written):
        return "empty"
    if any(o < start or o + s > end for o, s in written):
        return "outside"
    spans = sorted(written)
    if any(b[0] < a[0] + a[1] for a, b in itertools.pairwise(spans)):
        return "overlap"
    return None


def entry(draw: st.DrawFn, end: int) -> tuple[int, int]:
    kind = draw(st.sampled_from(["ok", "ok", "ok", "missing", "half", "past", "huge", "negative"]))
    if kind == "missing":
        return U64 - 1, U64 - 1
    if kind == "half":
        return draw(
            st.sampled_from([(U64 - 1, draw(st.integers(0, end))), (draw(st.integers(0, end)), U64 - 1)])
        )
    if kind == "huge":  # sums that wrap around 2**64
        return draw(st.sampled_from([(2**63, 2**63), (U64 - 2, 3), (5, U64 - 3), (2**63 + 1, 2**63 - 1)]))
    if kind == "negative":  # as int64: -1 .. -2**63
        return U64 - draw(st.integers(2, 2**63)), draw(st.integers(0, 64))
    offset = draw(st.integers(0, end))
    size = (
        draw(st.integers(0, end - offset)) if kind == "ok" else draw(st.integers(end - offset + 1, end + 64))
    )
    return offset, size


@st.composite
def indexes(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]], int, int]:
    """Index bytes of ``CHUNKS`` entries (a valid crc32c most of the time) and the chunk data range."""
    start = draw(st.sampled_from([0, index_nbytes(CHUNKS, True)]))
    end = start + draw(st.integers(0, 5000))
    if draw(st.booleans()):  # chunks laid out one after the other, then perhaps one entry moved
        sizes = draw(st.lists(st.integers(0, 800), min_size=CHUNKS, max_size=CHUNKS))
        offsets = start + np.concatenate(([0], np.cumsum(sizes)[:-1]))
        entries = [(int(o), s) for o, s in zip(offsets, sizes, strict=True)]
        end = max(end, int(offsets[-1]) + sizes[-1])
        if draw(st.booleans()):
            entries[draw(st.integers(0, CHUNKS - 1))] = entry(draw, end)
    else:
        entries = [entry(draw, end) for _ in range(CHUNKS)]
    body = struct.pack(f"<{2 * CHUNKS}Q", *(v for pair in entries for v in pair))
    crc = crc32c.crc32c(body)
    if not draw(st.integers(0, 7)):
        crc ^= 1 << draw(st.integers(0, 31))
    return body + struct.pack("<I", crc), entries, start, end


@INDEX_FUZZ
@given(indexes())
def test_index_parser_matches_the_reference(case: tuple[bytes, list[tuple[int, int]], int, int]) -> None:
    raw, entries, start, end = case
    checksum_ok = crc32c.crc32c(raw[:-4]) == struct.unpack("<I", raw[-4:])[0]
    why = reference(entries, start, end) if checksum_ok else "checksum"
    array = np.frombuffer(raw, np.uint8)
    if why is None:
        parsed = parse_index(array, CHUNKS, crc=True, data=(start, end), where="fuzz")
        assert parsed.dtype == np.uint64 and parsed.tolist() == [list(e) for e in entries]
        return
    error = ChecksumError if why == "checksum" else ShardFormatError
    with pytest.raises(error, match=r"^fuzz: "):
        parse_index(array, CHUNKS, crc=True, data=(start, end), where="fuzz")


@INDEX_FUZZ
@given(
    st.binary(max_size=200), st.integers(0, 12), st.booleans(), st.integers(-10, 10**6), st.integers(0, 10**6)
)
def test_index_parser_on_random_bytes(raw: bytes, chunks: int, crc: bool, start: int, length: int) -> None:
    """Any bytes, any sizes (the checksum is fixed up half of the time so that parsing goes on)."""
    if crc and len(raw) >= 4 and raw[0] & 1:
        raw = raw[:-4] + struct.pack("<I", crc32c.crc32c(raw[:-4]))
    try:
        parsed = parse_index(
            np.frombuffer(raw, np.uint8), chunks, crc=crc, data=(start, start + length), where="x"
        )
    except (ShardFormatError, ChecksumError):
        return
    pairs = [tuple(p) for p in parsed.tolist()]
    assert len(pairs) == chunks and reference(pairs, max(start, 0), max(start + length, 0)) is None


SHARD_CHUNK = 64


@pytest.fixture(scope="module")
def shard_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[obstore.store.LocalStore, Path, bytes]:
    """A BP-128 + crc32c array of one shard of ``CHUNKS`` chunks, as lancell writes them; its shard bytes."""
    path = tmp_path_factory.mktemp("shard")
    store = obstore.store.LocalStore(str(path))
    root = zarr.open_group(zarr.storage.ObjectStore(store), mode="w")
    array = root.create_array(
        "a",
        shape=(CHUNKS * SHARD_CHUNK,),
        dtype="uint32",
        chunks=(SHARD_CHUNK,),
        shards=(CHUNKS * SHARD_CHUNK,),
        **value_codecs(np.dtype("uint32"), "indices"),
    )
    array[:] = np.arange(CHUNKS * SHARD_CHUNK, dtype=np.uint32) * 3
    meta = json.loads((path / "a" / "zarr.json").read_text())
    assert meta["codecs"][0]["configuration"]["index_location"] == "end"
    return store, path / "a" / "c" / "0", (path / "a" / "c" / "0").read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_reader_on_fuzzed_shards(
    shard_store: tuple[obstore.store.LocalStore, Path, bytes], data: st.DataObject
) -> None:
    """The real shard with some index entries replaced (crc32c fixed up, or not) and its chunk data cut or
    padded: a read of any range raises a typed error, or returns the array's values (the fill value where
    the index says a chunk was never written), never what a misplaced byte range decodes to."""
    store, shard_file, original = shard_store
    nbytes = index_nbytes(CHUNKS, True)
    chunks, entries = (
        original[:-nbytes],
        parse_index(
            np.frombuffer(original[-nbytes:], np.uint8),
            CHUNKS,
            crc=True,
            data=(0, len(original) - nbytes),
            where="",
        ).tolist(),
    )
    end = data.draw(st.sampled_from([len(chunks)] * 3 + [len(chunks) - 1, len(chunks) + 7, len(chunks) // 2]))
    fuzzed = list(entries)
    for slot in data.draw(st.lists(st.integers(0, CHUNKS - 1), max_size=3)):
        fuzzed[slot] = (
            entry(data.draw, end) if data.draw(st.booleans()) else entries[data.draw(st.integers(0, 5))]
        )
    body = struct.pack(f"<{2 * CHUNKS}Q", *(v for pair in fuzzed for v in pair))
    crc = crc32c.crc32c(body) ^ (data.draw(st.sampled_from([0] * 7 + [1 << 9])))
    shard_file.write_bytes((chunks + bytes(max(end - len(chunks), 0)))[:end] + body + struct.pack("<I", crc))
    first = data.draw(st.integers(0, CHUNKS * SHARD_CHUNK))
    last = data.draw(st.integers(first, CHUNKS * SHARD_CHUNK))
    try:
        flat, _ = ShardedArrayReader(store, "a", complete=True).read_ranges([first], [last])
    except (ShardFormatError, ChecksumError, CodecError, OutOfBoundsError):
        return
    source = {tuple(e): k for k, e in enumerate(entries)}  # a real chunk's bytes decode to its own values
    expected = np.zeros(CHUNKS * SHARD_CHUNK, np.uint32)
    for k in range(first // SHARD_CHUNK, -(-last // SHARD_CHUNK) if last > first else 0):  # chunks touched
        if fuzzed[k][0] != U64 - 1:
            assert tuple(fuzzed[k]) in source, f"chunk {k} decoded from bytes {fuzzed[k]}"
            chunk = source[tuple(fuzzed[k])]
            expected[k * SHARD_CHUNK : (k + 1) * SHARD_CHUNK] = (
                np.arange(SHARD_CHUNK) * 3 + 3 * SHARD_CHUNK * chunk
            )
    assert np.array_equal(flat, expected[first:last])
