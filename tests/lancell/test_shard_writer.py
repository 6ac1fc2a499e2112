"""Shards written without zarr-python's chunk machinery are byte for byte what zarr-python writes."""

import threading
from pathlib import Path

import crc32c as crc32c_library
import numpy as np
import pytest
import zarr
import zarr.codecs

from kernels.crc32c import chunk_trailers
from lancell.storage import shard_writer
from lancell.storage.groups import value_codecs
from lancell.storage.shard_buffer import ShardBuffer
from lancell.storage.shard_writer import ShardWriter

RNG = np.random.default_rng(7)


def _indices(n: int) -> np.ndarray:
    """Sorted runs that restart every ~300 values, like CSR indices."""
    return (np.arange(n) % 300 * 50 + RNG.integers(0, 50, n)).astype(np.uint32)


CASES = [  # (shape, chunks, shards, dtype, role)
    ((10_000,), (4_096,), (8_192,), "uint32", "values"),  # last shard: one padded chunk, one unwritten
    ((3 * 8_192,), (4_096,), (8_192,), "uint32", "indices"),  # whole shards only
    ((1_000,), (1_000,), (1_000,), "uint32", "indices"),  # one chunk
    ((5,), (4_096,), (4_096,), "uint32", "values"),  # fewer values than one chunk
    ((9_999,), (1_024,), (4_096,), "float32", "values"),  # zstd
    ((301, 40), (16, 40), (64, 40), "uint32", "values"),  # dense rows
    ((70, 33), (8, 33), (32, 33), "float32", "values"),
]


def _data(shape: tuple[int, ...], dtype: str, role: str) -> np.ndarray:
    if role == "indices":
        return _indices(int(np.prod(shape))).reshape(shape)
    values = RNG.negative_binomial(2, 0.3, int(np.prod(shape))).astype(dtype).reshape(shape)
    values.ravel()[::97] = 70_000  # a few wide values: BP-128 exceptions
    return values


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[3]}-{c[4]}")
def test_identical_to_zarr_and_read_back(tmp_path: Path, case: tuple) -> None:
    shape, chunks, shards, dtype, role = case
    data = _data(shape, dtype, role)
    arrays = {}
    for name in ("zarr", "direct"):
        arrays[name] = zarr.create_array(
            zarr.storage.LocalStore(tmp_path / name),
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            shards=shards,
            **value_codecs(np.dtype(dtype), role),
        )
    arrays["zarr"][:] = data
    assert ShardWriter.for_array(arrays["direct"]) is not None
    buffer = ShardBuffer(arrays["direct"], shards[0])
    for start in range(0, shape[0], 777):  # appends that straddle shard boundaries
        buffer.append(data[start : start + 777])
    assert buffer.close() == shape[0]
    assert _files(tmp_path / "direct") == _files(tmp_path / "zarr")
    np.testing.assert_array_equal(zarr.open_array(zarr.storage.LocalStore(tmp_path / "direct"))[:], data)


def test_other_layouts_are_left_to_zarr(tmp_path: Path) -> None:
    store = zarr.storage.LocalStore(tmp_path)
    unsharded = zarr.create_array(store, name="a", shape=(100,), dtype="uint32", chunks=(10,))
    gzip = zarr.create_array(
        store,
        name="b",
        shape=(100,),
        dtype="uint32",
        chunks=(10,),
        shards=(20,),
        compressors=[zarr.codecs.GzipCodec()],
    )
    assert ShardWriter.for_array(unsharded) is None
    assert ShardWriter.for_array(gzip) is None
    buffer = ShardBuffer(gzip, 20)
    buffer.append(np.arange(100, dtype=np.uint32))
    with pytest.raises(ValueError, match="overflows"):
        buffer.append(np.arange(1, dtype=np.uint32))
    buffer.close()
    np.testing.assert_array_equal(gzip[:], np.arange(100))


def test_chunk_trailers_are_each_chunks_crc32c() -> None:
    sizes = [0, 1, 7, 8, 9, 4_096, 13]  # empty, shorter than a word, word-aligned and not
    ends = np.cumsum(np.array(sizes) + 4)
    buf = RNG.integers(0, 256, int(ends[-1])).astype(np.uint8)
    chunk_trailers(buf, ends)
    for start, end in zip(np.concatenate(([0], ends[:-1])), ends, strict=True):
        expected = crc32c_library.crc32c(buf[start : end - 4].tobytes())
        assert int.from_bytes(buf[end - 4 : end].tobytes(), "little") == expected


def test_a_failed_store_is_raised_and_no_store_outlives_the_buffer(tmp_path: Path, monkeypatch) -> None:
    """A shard is stored on a store thread while the next is encoded: a store's error is raised by a later
    append or by close, and leaving the buffer waits for the store in flight."""
    array = zarr.create_array(
        zarr.storage.LocalStore(tmp_path),
        shape=(10 * 4_096,),
        dtype="uint32",
        chunks=(1_024,),
        shards=(4_096,),
        **value_codecs(np.dtype("uint32"), "values"),
    )
    stored, sync = [], shard_writer.sync

    def failing_sync(coroutine):  # the second shard's store fails
        stored.append(coroutine)
        if len(stored) == 2:
            coroutine.close()
            raise OSError("disk full")
        return sync(coroutine)

    monkeypatch.setattr(shard_writer, "sync", failing_sync)
    data = _data((10 * 4_096,), "uint32", "values")
    with pytest.raises(OSError, match="disk full"), ShardBuffer(array, 4_096) as buffer:
        for start in range(0, data.size, 3_000):
            buffer.append(data[start : start + 3_000])
        buffer.close()
    assert 2 <= len(stored) < 10  # raised by the append after the failed store, before the rest
    assert not [t for t in threading.enumerate() if t.name.startswith("lancell-store")]
