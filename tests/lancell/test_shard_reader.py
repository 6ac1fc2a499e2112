"""The batched shard reader against zarr-python on the same arrays: ranges, rows, fill values, checksums."""

from __future__ import annotations

import asyncio
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import obstore
import obstore.store
import pytest
import zarr
import zarr.codecs
import zarr.storage
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import gather
from lancell.bundled import build_bundled_atlas
from lancell.errors import ChecksumError, CodecError, OutOfBoundsError, ShardFormatError
from lancell.storage import reader as lancell_reader
from lancell.storage import shard_reader
from lancell.storage.codecs import BitpackingCodec
from lancell.storage.shard_reader import MISSING, ShardedArrayReader

N = 300_007  # not a multiple of the chunk: the last chunk is an edge chunk
CHUNK = 1024
SHARD = CHUNK * 8

CODECS = {
    "uint32-zstd": ("uint32", lambda: [zarr.codecs.ZstdCodec(level=3)]),
    "uint32-bitpack-delta": ("uint32", lambda: [BitpackingCodec("delta")]),
    "uint32-bitpack-none": ("uint32", lambda: [BitpackingCodec("none")]),
    "float32-zstd": ("float32", lambda: [zarr.codecs.ZstdCodec(level=3)]),
    "uint32-zstd-crc32c": ("uint32", lambda: [zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec()]),
    "uint32-raw": ("uint32", lambda: None),
}


def _values(dtype: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if dtype == "float32":
        return rng.standard_normal(n).astype(np.float32)
    # Sorted runs like the CSR indices of cells, so that delta packing wraps at every run boundary.
    values = rng.integers(0, 30_000, n)
    return values[np.lexsort((values, np.arange(n) // 50))].astype(np.uint32)


def _random_ranges(n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unsorted ranges with duplicates: empty, small, several chunks and several shards long."""
    kind = rng.choice(4, count, p=[0.2, 0.45, 0.3, 0.05])
    length = np.select(
        [kind == 0, kind == 1, kind == 2],
        [0, rng.integers(1, 200, count), rng.integers(CHUNK, 4 * CHUNK, count)],
        rng.integers(SHARD, 3 * SHARD, count),
    )
    starts = rng.integers(0, n + 1, count)
    ends = np.minimum(starts + length, n)
    duplicated = rng.integers(0, count, count // 10)
    starts[: duplicated.size], ends[: duplicated.size] = starts[duplicated], ends[duplicated]
    return starts, ends


@pytest.fixture(autouse=True, params=["pread", "obstore"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: local files read with pread, and the same store read through obstore calls."""
    if request.param == "obstore":
        monkeypatch.setattr(shard_reader, "local_path", lambda store, key: None)
    return request.param


def _local_root(path: Path) -> tuple[obstore.store.LocalStore, zarr.Group]:
    path.mkdir(parents=True, exist_ok=True)
    store = obstore.store.LocalStore(str(path))
    return store, zarr.open_group(zarr.storage.ObjectStore(store), mode="w")


def _array(root: zarr.Group, name: str, data: np.ndarray, codec: str, **kwargs: object) -> zarr.Array:
    dtype, compressors = CODECS[codec]
    chunks = kwargs.pop("chunks", (CHUNK,))
    shards = kwargs.pop("shards", (SHARD,))
    array = root.create_array(
        name, shape=data.shape, dtype=dtype, chunks=chunks, shards=shards, compressors=compressors(), **kwargs
    )
    array[...] = data
    return array


def _expected(full: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    parts = [full[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    return np.concatenate(parts) if parts else full[:0]


def _check_ranges(array: zarr.Array, reader: ShardedArrayReader, rng: np.random.Generator) -> None:
    full = array[:]
    starts, ends = _random_ranges(array.shape[0], 10_000, rng)
    flat, lengths = reader.read_ranges(starts, ends)
    assert flat.dtype == array.dtype
    np.testing.assert_array_equal(lengths, ends - starts)
    np.testing.assert_array_equal(flat, _expected(full, starts, ends))
    # The reference itself, slice by slice through zarr-python, on a sample of the ranges.
    sample = rng.choice(starts.size, 40, replace=False)
    direct = np.concatenate([array[int(starts[i]) : int(ends[i])] for i in sample])
    np.testing.assert_array_equal(reader.read_ranges(starts[sample], ends[sample])[0], direct)


@pytest.mark.parametrize("codec", list(CODECS))
def test_random_ranges_match_zarr(tmp_path: Path, codec: str) -> None:
    rng = np.random.default_rng(list(CODECS).index(codec))
    store, root = _local_root(tmp_path)
    dtype = CODECS[codec][0]
    array = _array(root, "g/csr/indices", _values(dtype, N, rng), codec)
    _check_ranges(array, ShardedArrayReader(store, array.path), rng)


def test_memory_store_and_reader_module(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    store = obstore.store.MemoryStore()
    root = zarr.open_group(zarr.storage.ObjectStore(store), mode="w")
    array = _array(root, "g/csr/layers/counts", _values("uint32", N, rng), "uint32-bitpack-none")
    _check_ranges(array, ShardedArrayReader(store, array.path), rng)
    # lancell.storage.reader routes obstore-backed arrays to one cached batched reader per array.
    cached = lancell_reader.array_reader(array)
    assert isinstance(cached, ShardedArrayReader)
    assert lancell_reader.array_reader(root["g/csr/layers/counts"]) is cached
    starts, ends = _random_ranges(N, 500, rng)
    flat, _ = lancell_reader.read_element_ranges(array, starts, ends)
    np.testing.assert_array_equal(flat, _expected(array[:], starts, ends))


def test_other_stores_and_layouts_use_zarr(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = _values("uint32", 50_000, rng)
    plain = zarr.create_array(zarr.storage.MemoryStore(), shape=data.shape, dtype="uint32", chunks=(4096,))
    plain[:] = data
    store, root = _local_root(tmp_path)
    unsharded = root.create_array("unsharded", shape=data.shape, dtype="uint32", chunks=(4096,))
    unsharded[:] = data
    with pytest.raises(ShardFormatError, match="not simply sharded"):
        ShardedArrayReader(store, "unsharded")
    starts, ends = _random_ranges(data.size, 300, rng)
    for array in (plain, unsharded):
        assert lancell_reader.array_reader(array) is None
        flat, _ = lancell_reader.read_element_ranges(array, starts, ends)
        np.testing.assert_array_equal(flat, _expected(data, starts, ends))


@pytest.mark.parametrize("codec", ["float32-zstd", "uint32-bitpack-none"])
def test_dense_rows(tmp_path: Path, codec: str) -> None:
    rng = np.random.default_rng(3)
    store, root = _local_root(tmp_path)
    data = _values(CODECS[codec][0], 1003 * 37, rng).reshape(1003, 37)
    array = _array(root, "g/layers/X", data, codec, chunks=(16, 37), shards=(64, 37))
    reader = ShardedArrayReader(store, array.path)
    rows = rng.integers(0, 1003, 700)  # unsorted, with duplicates
    np.testing.assert_array_equal(reader.read_rows(rows), array[:][rows])
    np.testing.assert_array_equal(lancell_reader.read_rows(array, rows), data[rows])
    assert reader.read_rows([]).shape == (0, 37)
    with pytest.raises(OutOfBoundsError, match="row 1003"):
        reader.read_rows([0, 1003])
    _array(root, "g/layers/Y", data[:, :32], codec, chunks=(16, 8), shards=(64, 32))
    with pytest.raises(ShardFormatError, match="by rows"):
        ShardedArrayReader(store, "g/layers/Y")


def test_missing_chunks_and_shards_read_as_fill_value(tmp_path: Path) -> None:
    store, root = _local_root(tmp_path)
    n = 20 * SHARD
    array = root.create_array(
        "sparse", shape=(n,), dtype="float32", chunks=(CHUNK,), shards=(SHARD,), fill_value=float("nan")
    )
    data = np.full(n, np.nan, np.float32)
    data[3 * SHARD + 100 : 5 * SHARD - 3 * CHUNK] = np.arange(2 * SHARD - 3 * CHUNK - 100, dtype=np.float32)
    data[9 * SHARD + 5 * CHUNK : 9 * SHARD + 6 * CHUNK] = 1.5
    array[:] = data  # all-NaN chunks are not written (write_empty_chunks=False), nor all-NaN shards
    reader = ShardedArrayReader(store, "sparse")
    starts, ends = _random_ranges(n, 2000, np.random.default_rng(4))
    starts, ends = np.append(starts, [0, 9 * SHARD]), np.append(ends, [SHARD, 10 * SHARD])
    flat, _ = reader.read_ranges(starts, ends)
    np.testing.assert_array_equal(flat, _expected(array[:], starts, ends))
    assert reader._indices[0] is None  # no shard object at all
    assert (reader._indices[9][:, 0] == MISSING).sum() == 7  # one chunk written out of eight
    values = np.full(3 * SHARD, 7, np.uint32)
    values[2 * CHUNK : 3 * CHUNK] = np.arange(CHUNK)
    ints = _array(root, "ints", values, "uint32-bitpack-delta", fill_value=7)
    flat, _ = ShardedArrayReader(store, ints.path).read_ranges([5, 2 * CHUNK - 2], [9, 2 * CHUNK + 2])
    np.testing.assert_array_equal(flat, [7, 7, 7, 7, 7, 7, 0, 1])


def test_one_get_ranges_per_shard_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_path: str
) -> None:
    store, root = _local_root(tmp_path)
    array = _array(root, "a", _values("uint32", N, np.random.default_rng(5)), "uint32-zstd")
    calls: list[str] = []
    if read_path == "obstore":
        original = obstore.get_ranges

        def counting(store: object, path: str, **kwargs: object) -> object:
            calls.append(path)
            return original(store, path, **kwargs)

        monkeypatch.setattr(obstore, "get_ranges", counting)
    else:
        original_pread = shard_reader.pread_ranges

        def counting_pread(path: str, starts: np.ndarray, ends: np.ndarray) -> list:
            calls.append(Path(path).relative_to(tmp_path).as_posix())
            return original_pread(path, starts, ends)

        monkeypatch.setattr(shard_reader, "pread_ranges", counting_pread)
    reader = ShardedArrayReader(store, "a")
    # Shard 0: chunks 0, 1 and 5; shard 2: chunk 0 (twice); shard 3: chunks 7 and its neighbour in shard 4.
    starts = np.array([5 * CHUNK + 3, 10, 2 * SHARD, 2 * SHARD + 1, 4 * SHARD - 10, CHUNK + 1, 77])
    ends = starts + np.array([9, CHUNK, 50, 2, 20, 0, 0])
    flat, _ = reader.read_ranges(starts, ends)
    np.testing.assert_array_equal(flat, _expected(array[:], starts, ends))
    assert sorted(calls) == ["a/c/0", "a/c/2", "a/c/3", "a/c/4"]
    assert reader.get_ranges_calls == reader.shards_touched == reader.index_reads == 4
    assert reader.chunks_decoded == 6
    reader.read_ranges(starts, ends)
    assert reader.get_ranges_calls == reader.shards_touched == 8
    assert reader.index_reads == 4  # indices are cached


def test_corrupt_shard_index_raises_checksum_error(tmp_path: Path) -> None:
    store, root = _local_root(tmp_path)
    _array(root, "g/csr/indices", _values("uint32", N, np.random.default_rng(6)), "uint32-zstd")
    shard_file = tmp_path / "g" / "csr" / "indices" / "c" / "3"
    raw = bytearray(shard_file.read_bytes())
    raw[-20] ^= 0x01  # a byte of the last index entry
    shard_file.write_bytes(bytes(raw))
    reader = ShardedArrayReader(store, "g/csr/indices")
    reader.read_ranges([0], [SHARD])  # other shards still read
    with pytest.raises(ChecksumError, match=r"'g/csr/indices'.*'g/csr/indices/c/3'.*checksum"):
        reader.read_ranges([0, 3 * SHARD + 5], [10, 3 * SHARD + 6])


def test_index_at_start_without_checksum_and_v2_keys(tmp_path: Path) -> None:
    store, root = _local_root(tmp_path)
    sharding = zarr.codecs.ShardingCodec(
        chunk_shape=(CHUNK,),
        codecs=[zarr.codecs.BytesCodec(), zarr.codecs.ZstdCodec()],
        index_codecs=[zarr.codecs.BytesCodec()],
        index_location="start",
    )
    array = root.create_array(
        "a",
        shape=(N,),
        dtype="int64",
        chunks=(SHARD,),
        serializer=sharding,
        compressors=None,
        chunk_key_encoding={"name": "v2", "separator": "."},
    )
    array[:] = np.arange(N) * 3
    reader = ShardedArrayReader(store, "a")
    assert reader.layout.shard_key("a", 3) == "a/3"
    _check_ranges(array, reader, np.random.default_rng(10))


def test_corrupt_chunk_raises_naming_the_chunk(tmp_path: Path) -> None:
    store, root = _local_root(tmp_path)
    _array(root, "crc", _values("uint32", N, np.random.default_rng(11)), "uint32-zstd-crc32c")
    _array(root, "bp", _values("uint32", N, np.random.default_rng(11)), "uint32-bitpack-delta")
    for name, error in (("crc", ChecksumError), ("bp", CodecError)):
        reader = ShardedArrayReader(store, name)
        reader.read_ranges([SHARD], [SHARD + 1])  # caches shard 1's index
        offset = int(reader._indices[1][2, 0])
        shard_file = tmp_path / name / "c" / "1"
        raw = bytearray(shard_file.read_bytes())
        raw[offset + 1] ^= 0xFF  # a header byte of chunk 2 (crc: zstd frame header)
        shard_file.write_bytes(bytes(raw))
        with pytest.raises(error, match=rf"'{name}/c/1', chunk 2"):
            reader.read_ranges([SHARD + 2 * CHUNK], [SHARD + 2 * CHUNK + 1])


def test_out_of_bounds_and_bad_arguments(tmp_path: Path) -> None:
    store, root = _local_root(tmp_path)
    _array(root, "a", _values("uint32", N, np.random.default_rng(7)), "uint32-zstd")
    reader = ShardedArrayReader(store, "a")
    for starts, ends in [([0], [N + 1]), ([-1], [3]), ([10], [9]), ([0, 1], [2]), ([0.5], [2])]:
        with pytest.raises(OutOfBoundsError):
            reader.read_ranges(starts, ends)
    with pytest.raises(IndexError, match=r"range 1 \[5, 300008\)"):
        reader.read_ranges([0, 5], [1, N + 1])
    with pytest.raises(OutOfBoundsError, match="2-D"):
        reader.read_rows([0])
    flat, lengths = reader.read_ranges([N, 0, 7], [N, 0, 7])
    assert flat.size == 0 and flat.dtype == np.uint32 and lengths.tolist() == [0, 0, 0]
    assert reader.read_ranges([], [])[0].size == 0
    assert reader.get_ranges_calls == 0
    with pytest.raises(ShardFormatError, match=r"no zarr\.json"):
        ShardedArrayReader(store, "nothing/here")


def test_concurrent_callers_and_running_event_loop(tmp_path: Path) -> None:
    store, root = _local_root(tmp_path)
    array = _array(root, "a", _values("float32", N, np.random.default_rng(8)), "float32-zstd")
    reader = ShardedArrayReader(store, "a")
    full = array[:]
    batches = [_random_ranges(N, 200, np.random.default_rng(seed)) for seed in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: reader.read_ranges(*b)[0], batches))
    for (starts, ends), flat in zip(batches, results, strict=True):
        np.testing.assert_array_equal(flat, _expected(full, starts, ends))

    async def inside_a_loop() -> np.ndarray:
        return reader.read_ranges(*batches[0])[0]

    np.testing.assert_array_equal(asyncio.run(inside_a_loop()), results[0])


def test_bundled_celltypist_cells_match_zarr(tmp_path: Path) -> None:
    atlas = build_bundled_atlas(tmp_path)
    datasets = atlas.core.tables.datasets.to_arrow().select(["uid", "zarr_group"]).to_pylist()
    group = atlas.core.zarr_root[next(d["zarr_group"] for d in datasets if d["uid"] == "celltypist_sample")]
    indptr = group["csr/indptr"][:]
    cells = np.random.default_rng(9).integers(0, indptr.size - 1, 10_000)
    starts, ends = indptr[cells], indptr[cells + 1]
    for name in ("csr/indices", "csr/layers/counts"):
        array = group[name]
        reader = lancell_reader.array_reader(array)
        assert reader is not None
        flat, lengths = reader.read_ranges(starts, ends)
        np.testing.assert_array_equal(flat, _expected(array[:], starts, ends))
        sample = cells[:30]
        direct = np.concatenate([array[int(indptr[c]) : int(indptr[c + 1])] for c in sample])
        np.testing.assert_array_equal(flat[: int(lengths[:30].sum())], direct)
        assert reader.get_ranges_calls == reader.shards_touched


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 700)), max_size=60),
    st.sampled_from([1, 3, 128, 1024]),
)
def test_plan_pieces_cover_each_range_in_order(ranges: list[tuple[int, int]], chunk_len: int) -> None:
    starts = np.array([s for s, _ in ranges], np.int64)
    ends = starts + np.array([n for _, n in ranges], np.int64)
    chunk, src, dst, length = gather.plan_pieces(starts, ends, chunk_len)
    source = np.arange(6000, dtype=np.int64)
    out = np.full(int((ends - starts).sum()), -1, np.int64)
    chunks, bounds, s_src, s_dst, s_len = gather.sort_pieces(chunk, src, dst, length)
    assert np.all(np.diff(chunks) > 0) and bounds[-1] == chunk.size
    padded = np.concatenate([source, np.zeros(chunk_len, source.dtype)])
    slots = np.arange(chunks.size)[::-1].copy()  # decoded chunks in any order: here reversed
    decoded = np.concatenate(
        [padded[c * chunk_len : (c + 1) * chunk_len] for c in chunks[slots]] + [source[:0]]
    )
    gather.copy_chunk_pieces(decoded, chunk_len, slots, bounds, s_src, s_dst, s_len, out)
    np.testing.assert_array_equal(out, _expected(source, starts, ends))
    assert np.all((src + length <= chunk_len) & (length > 0))


def test_a_local_read_decodes_a_bounded_number_of_chunks_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_path: str
) -> None:
    """Ranges touching a chunk each: every touched chunk was decoded into one buffer before any piece was
    copied out (100,000 cells spread over a 1M-cell dataset held every chunk of it, ~400 MB an array)."""
    monkeypatch.setattr(shard_reader, "_DECODED_CHUNKS", 3)  # a shard's chunks split across batches too
    rng = np.random.default_rng(5)
    store, root = _local_root(tmp_path)
    array = _array(root, "g/csr/indices", _values("uint32", N, rng), "uint32-bitpack-delta")
    reader = ShardedArrayReader(store, array.path)
    _check_ranges(array, reader, rng)
    starts = np.arange(0, N, CHUNK)
    tracemalloc.start()
    try:
        flat, _ = reader.read_ranges(starts, starts + 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(flat, array[:][starts])
    if read_path == "pread":  # (a remote store's shards are fetched and decoded a shard at a time)
        assert peak < starts.size * CHUNK * 4 / 4
