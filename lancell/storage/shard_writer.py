"""Whole-shard writes of lancell's sharded arrays, without zarr-python's per-chunk machinery.

zarr-python encodes every inner chunk of a shard as its own asyncio task (about 10x the BP-128 encoding
itself for 4,096-value chunks). A :class:`ShardWriter` encodes a shard's chunks as the values arrive: the
whole chunks of each append in one kernel call (:func:`kernels.bitpack.encode_chunks`; zstd chunk by
chunk) straight from the caller's array, each chunk's crc32c appended (one
:func:`kernels.crc32c.chunk_trailers` call per append); a full shard gets its index and is stored with one
``set`` through the array's own zarr store. The objects are byte for byte what zarr-python writes for the same
data (``tests/lancell/test_shard_writer.py``):

* chunks in order, each its encoded bytes and their crc32c (little-endian); the index at the end: one
  ``(offset, nbytes)`` pair of little-endian uint64 per chunk and the crc32c of those pairs;
* the last chunk of the array is encoded at full chunk size, padded with the fill value (0); chunks of the
  last shard that lie wholly past the end of the array are not written (both index words ``2**64 - 1``).

Only arrays that lancell itself creates qualify (:meth:`ShardWriter.for_array`): ``sharding_indexed`` with
the index at the end under ``bytes`` + ``crc32c``, inner codecs ``bytes`` (little-endian), then
``lancell.bitpacking`` or ``zstd``, then ``crc32c``; shards split along the first axis only; fill value 0.
Anything else is left to zarr-python.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import crc32c
import numpy as np
import zarr
from numcodecs.zstd import Zstd
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync

from kernels import bitpack
from kernels.crc32c import chunk_trailers
from lancell.storage.codecs import TRANSFORMS, BitpackingCodec
from lancell.storage.shard_index import CRC_BYTES, ENTRY_BYTES, MISSING

__all__ = ["ShardWriter"]


def _little_bytes(codec: object) -> bool:
    return isinstance(codec, BytesCodec) and codec.endian is not None and codec.endian.value == "little"


# encode(values, chunk, room) -> ends: the chunks of ``values``, each followed by a 4-byte gap ending at
# ends[i], written into ``room(nbytes)`` (a uint8 view of at least ``nbytes`` free bytes, 4-byte aligned)
ChunkEncoder = Callable[[np.ndarray, int, Callable[[int], np.ndarray]], np.ndarray]


def _bitpack_encoder(transform: int) -> ChunkEncoder:
    """A BP-128 :data:`ChunkEncoder`: the kernel encodes straight into the room it is given."""

    def encode(values: np.ndarray, chunk: int, room: Callable[[int], np.ndarray]) -> np.ndarray:
        words = bitpack.encoded_chunks_words(values.size // chunk, chunk, CRC_BYTES)
        out = room(4 * words).view(np.uint32)
        return bitpack.encode_chunks(values.view(np.uint32), chunk, transform, CRC_BYTES, out=out)[1]

    return encode


def _zstd_encoder(codec: ZstdCodec) -> ChunkEncoder:
    """A zstd :data:`ChunkEncoder` (chunk by chunk, as zarr-python's own codec)."""
    zstd = Zstd.from_config({"level": codec.level, "checksum": codec.checksum})

    def encode(values: np.ndarray, chunk: int, room: Callable[[int], np.ndarray]) -> np.ndarray:
        parts = [
            np.frombuffer(zstd.encode(values[i : i + chunk]), np.uint8) for i in range(0, values.size, chunk)
        ]
        ends = np.cumsum([part.size + CRC_BYTES for part in parts], dtype=np.int64)
        out = room(int(ends[-1]))
        for part, end in zip(parts, ends, strict=True):
            out[end - CRC_BYTES - part.size : end - CRC_BYTES] = part
        return ends

    return encode


def _chunk_encoder(codec: object) -> ChunkEncoder | None:
    """The :data:`ChunkEncoder` of ``codec``, None for codecs other than BP-128 and zstd."""
    if isinstance(codec, BitpackingCodec):
        return _bitpack_encoder(TRANSFORMS[codec.transform])
    if isinstance(codec, ZstdCodec):
        return _zstd_encoder(codec)
    return None


class ShardWriter:
    """Encodes one zarr array's chunks as its values arrive and stores each shard whole (see the module
    docstring).

    :meth:`add` encodes every whole chunk of what it is given straight from the caller's array (no copy into
    a shard buffer) and keeps the rest of a chunk for the next call; :meth:`shard_bytes` completes the shard
    (the last chunk of the array padded with the fill value), and :meth:`store` stores it on a store thread.
    The encoded bytes go into two buffers that alternate from shard to shard (one encoded into while the other
    is stored; no fresh pages to fault in).

    Parameters
    ----------
    array
        The array (as checked by :meth:`for_array`).
    encode
        The chunk encoder of the array's compressor.
    """

    def __init__(self, array: zarr.Array, encode: ChunkEncoder) -> None:
        self.array = array
        self._encode_chunks = encode
        self._metadata: ArrayV3Metadata = array.metadata  # type: ignore[assignment]
        self._chunk = int(array.chunks[0]) * int(np.prod(array.shape[1:], dtype=np.int64))  # elements
        self._chunks_per_shard = int(array.shards[0]) // int(array.chunks[0])  # type: ignore[index]
        self._out = np.empty(0, np.uint8)  # the shard being encoded
        self._spare = np.empty(0, np.uint8)  # the shard being stored (or free)
        self._stores: ThreadPoolExecutor | None = None
        self._stored: Future[None] | None = None
        self._used = 0  # bytes of the current shard encoded so far
        self._ends: list[np.ndarray] = []
        self._carry = np.empty(self._chunk, array.dtype)  # the start of a chunk not complete yet
        self._carried = 0

    @classmethod
    def for_array(cls, array: zarr.Array) -> ShardWriter | None:
        """A writer for ``array``, or None when its layout or codecs are not the ones described above."""
        metadata = array.metadata
        if not isinstance(metadata, ArrayV3Metadata) or len(metadata.codecs) != 1:
            return None
        sharding = metadata.codecs[0]
        if (
            not isinstance(sharding, ShardingCodec)
            or sharding.index_location != ShardingCodecIndexLocation.end
            or len(sharding.index_codecs) != 2
            or not _little_bytes(sharding.index_codecs[0])
            or not isinstance(sharding.index_codecs[1], Crc32cCodec)
            or len(sharding.codecs) != 3
            or not _little_bytes(sharding.codecs[0])
            or not isinstance(sharding.codecs[2], Crc32cCodec)
            or tuple(array.chunks[1:]) != tuple(array.shape[1:])
            or tuple(array.shards[1:]) != tuple(array.shape[1:])  # type: ignore[index]
            or array.dtype.kind not in "uif"
            or array.dtype.byteorder == ">"
            or metadata.fill_value != 0
        ):
            return None
        encode = _chunk_encoder(sharding.codecs[1])
        return None if encode is None else cls(array, encode)

    def add(self, values: np.ndarray) -> None:
        """Encode the array's next elements, ``values`` (C order; the current shard's only)."""
        values = np.ascontiguousarray(values, dtype=self.array.dtype).reshape(-1)
        if self._carried:
            take = min(self._chunk - self._carried, values.size)
            self._carry[self._carried : self._carried + take] = values[:take]
            self._carried += take
            values = values[take:]
            if self._carried < self._chunk:
                return
            self._encode(self._carry)
            self._carried = 0
        whole = values.size - values.size % self._chunk
        if whole:
            self._encode(values[:whole])
        self._carry[: values.size - whole] = values[whole:]
        self._carried = values.size - whole

    def shard_bytes(self) -> np.ndarray:
        """The current shard's object: its chunks (a partial last one padded with the fill value, 0), their
        index and its crc32c. A view of the buffer being encoded into, for :meth:`store`."""
        if self._carried:
            self._carry[self._carried :] = 0
            self._encode(self._carry)
            self._carried = 0
        ends = np.concatenate(self._ends)
        index_bytes = ENTRY_BYTES * self._chunks_per_shard
        tail = self._room(index_bytes + CRC_BYTES)
        index = np.full((self._chunks_per_shard, 2), MISSING, np.uint64)
        index[: ends.size, 0] = np.concatenate(([0], ends[:-1]))
        index[: ends.size, 1] = np.diff(ends, prepend=0)
        tail[:index_bytes] = index.view(np.uint8).ravel()
        tail[index_bytes:] = np.array([crc32c.crc32c(index)], np.uint32).view(np.uint8)
        size, self._used, self._ends = self._used + index_bytes + CRC_BYTES, 0, []
        return self._out[:size]

    def store(self, shard: int, shard_bytes: np.ndarray) -> None:
        """Store ``shard_bytes`` (:meth:`shard_bytes`) as shard number ``shard`` on a store thread, while the
        next shard is encoded into a second buffer: this returns once the previous store is done (raising its
        error), with this one in flight. :meth:`close` waits for the last."""
        self.wait()
        key = self._metadata.encode_chunk_key((shard,) + (0,) * (len(self.array.shape) - 1))
        buffer = default_buffer_prototype().buffer.from_array_like(shard_bytes)
        if self._stores is None:
            self._stores = ThreadPoolExecutor(1, thread_name_prefix="lancell-store")
        self._stored = self._stores.submit(sync, (self.array.store_path / key).set(buffer))
        self._out, self._spare = self._spare, self._out

    def wait(self) -> None:
        """Wait for the store in flight; raise its error."""
        if self._stored is not None:
            stored, self._stored = self._stored, None
            stored.result()

    def close(self) -> None:
        """Wait for the store in flight (raising its error) and stop the store thread."""
        try:
            self.wait()
        finally:
            if self._stores is not None:
                self._stores.shutdown(wait=True)
                self._stores = None

    def _encode(self, values: np.ndarray) -> None:
        """Encode whole chunks after the current shard's bytes and write their crc32c trailers."""
        ends = self._encode_chunks(values, self._chunk, self._room)
        chunk_trailers(self._out[self._used : self._used + int(ends[-1])], ends)
        self._ends.append(ends + self._used)
        self._used += int(ends[-1])

    def _room(self, nbytes: int) -> np.ndarray:
        """``nbytes`` free bytes after the current shard's (the buffer grown, keeping them, if needed)."""
        if self._out.size < self._used + nbytes:
            grown = np.empty(max(2 * self._out.size, self._used + nbytes), np.uint8)
            grown[: self._used] = self._out[: self._used]
            self._out = grown
        return self._out[self._used : self._used + nbytes]
