"""Whole-shard writes of lancell's sharded arrays, without zarr-python's per-chunk machinery.

zarr-python encodes every inner chunk of a shard as its own asyncio task (about 10x the BP-128 encoding
itself for 4,096-value chunks). A :class:`ShardWriter` encodes the chunks of a whole shard in one kernel
call (:func:`kernels.bitpack.encode_chunks`; zstd chunk by chunk), appends each chunk's crc32c (one
:func:`kernels.crc32c.chunk_trailers` call), adds the shard index and stores the object with one ``set``
through the array's own zarr store. The objects are byte for byte what zarr-python writes for the same
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
from lancell.storage.codecs import BitpackingCodec

__all__ = ["ShardWriter"]

_MISSING = np.uint64(2**64 - 1)
_CRC_BYTES = 4
_TRANSFORMS = {"none": bitpack.TRANSFORM_NONE, "delta": bitpack.TRANSFORM_DELTA}


def _little_bytes(codec: object) -> bool:
    return isinstance(codec, BytesCodec) and codec.endian is not None and codec.endian.value == "little"


# encode(values, chunk, reserve) -> (buffer, ends): the chunks, each followed by a 4-byte gap ending at
# ends[i], then at least ``reserve`` bytes of the (uint8) buffer free for the shard index
ChunkEncoder = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


def _bitpack_encoder(transform: int) -> ChunkEncoder:
    """A BP-128 :data:`ChunkEncoder` that encodes into one buffer, reused while large enough: a shard's
    bytes are stored before the next shard is encoded (no fresh pages to fault in, no copy to add the
    index)."""
    reused = np.empty(0, np.uint32)

    def encode(values: np.ndarray, chunk: int, reserve: int) -> tuple[np.ndarray, np.ndarray]:
        nonlocal reused
        words = bitpack.encoded_chunks_words(values.size // chunk, chunk, _CRC_BYTES)
        if reused.size < words + -(-reserve // 4):
            reused = np.empty(words + -(-reserve // 4), np.uint32)
        _, ends = bitpack.encode_chunks(values.view(np.uint32), chunk, transform, _CRC_BYTES, out=reused)
        return reused.view(np.uint8), ends

    return encode


def _zstd_encoder(codec: ZstdCodec) -> ChunkEncoder:
    """A zstd :data:`ChunkEncoder` (chunk by chunk, as zarr-python's own codec)."""
    zstd = Zstd.from_config({"level": codec.level, "checksum": codec.checksum})

    def encode(values: np.ndarray, chunk: int, reserve: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [
            np.frombuffer(zstd.encode(values[i : i + chunk]), np.uint8) for i in range(0, values.size, chunk)
        ]
        sizes = np.array([p.size + _CRC_BYTES for p in parts], np.int64)
        out = np.empty(int(sizes.sum()) + reserve, np.uint8)
        ends = np.cumsum(sizes)
        for part, end in zip(parts, ends, strict=True):
            out[end - _CRC_BYTES - part.size : end - _CRC_BYTES] = part
        return out, ends

    return encode


def _chunk_encoder(codec: object) -> ChunkEncoder | None:
    """The :data:`ChunkEncoder` of ``codec``, None for codecs other than BP-128 and zstd."""
    if isinstance(codec, BitpackingCodec):
        return _bitpack_encoder(_TRANSFORMS[codec.transform])
    if isinstance(codec, ZstdCodec):
        return _zstd_encoder(codec)
    return None


class ShardWriter:
    """Writes whole shards of one zarr array straight to its store (see the module docstring).

    Parameters
    ----------
    array
        The array (as checked by :meth:`for_array`).
    encode
        The chunk encoder of the array's compressor (its own: a BP-128 encoder reuses its buffer, so one
        writer stores one shard at a time).
    """

    def __init__(self, array: zarr.Array, encode: ChunkEncoder) -> None:
        self.array = array
        self._encode = encode
        self._metadata: ArrayV3Metadata = array.metadata  # type: ignore[assignment]
        self._row = int(np.prod(array.shape[1:], dtype=np.int64))  # elements per first-axis index
        self._chunk_rows = int(array.chunks[0])
        self._shard_rows = int(array.shards[0])  # type: ignore[index]

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

    def write(self, shard: int, data: np.ndarray) -> None:
        """Store shard number ``shard``: ``data`` is all of it, or the rest of the array for the last one."""
        chunk_rows = self._chunk_rows
        chunks_per_shard = self._shard_rows // chunk_rows
        n_chunks = -(-data.shape[0] // chunk_rows)
        chunk = chunk_rows * self._row
        values = np.ascontiguousarray(data, dtype=self.array.dtype).reshape(-1)
        if values.size != n_chunks * chunk:  # the array's last chunk: padded with the fill value
            values = np.concatenate((values, np.zeros(n_chunks * chunk - values.size, values.dtype)))
        index_bytes = 16 * chunks_per_shard
        encoded, ends = self._encode(values, chunk, index_bytes + _CRC_BYTES)
        chunk_trailers(encoded, ends)
        starts = np.concatenate(([0], ends[:-1]))
        index = np.full((chunks_per_shard, 2), _MISSING, np.uint64)
        index[:n_chunks, 0] = starts
        index[:n_chunks, 1] = ends - starts
        end = int(ends[-1])
        encoded[end : end + index_bytes] = index.view(np.uint8).ravel()
        encoded[end + index_bytes : end + index_bytes + _CRC_BYTES] = np.array(
            [crc32c.crc32c(index)], np.uint32
        ).view(np.uint8)
        shard_bytes = encoded[: end + index_bytes + _CRC_BYTES]
        key = self._metadata.encode_chunk_key((shard,) + (0,) * (len(self.array.shape) - 1))
        buffer = default_buffer_prototype().buffer.from_array_like(shard_bytes)
        sync((self.array.store_path / key).set(buffer))
