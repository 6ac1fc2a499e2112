"""``lancell.bitpacking``: the BP-128 codec as a zarr v3 bytes-to-bytes codec.

It sits after the ``bytes`` serializer (inside the sharding codec's inner chain for sharded arrays) and treats
the chunk's bytes as little-endian 4-byte words: ``transform="none"`` for counts, ``"delta"`` for CSR
indices (sorted runs, one per cell). Each 128-value block picks its own width and mode; rare wide values
(a count outlier, the negative step at a cell boundary) are patched exceptions rather than widening the
block. The work is done by :mod:`kernels.bitpack`; this module validates configuration and maps kernel
errors to :class:`lancell.errors.CodecError`.

The class is registered with zarr through the ``zarr.codecs`` entry point of the installed package, so any
zarr-python process that has lancell installed can read the arrays without importing lancell first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import crc32c
import numcodecs.zstd
import numpy as np
from zarr.abc.codec import BytesBytesCodec
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

from kernels import bitpack
from kernels.crc32c import RESIDUE
from lancell.errors import ChecksumError, CodecError

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer
    from zarr.core.chunk_grids import ChunkGrid
    from zarr.core.dtype.wrapper import TBaseDType, TBaseScalar, ZDType

__all__ = [
    "BYTES_DECODERS",
    "CODEC_NAME",
    "CRC32C_RESIDUE",
    "CRC_BP128",
    "TRANSFORMS",
    "BitpackingCodec",
]

CODEC_NAME = "lancell.bitpacking"
ELEMENT_SIZE = 4
TRANSFORMS = {"none": bitpack.TRANSFORM_NONE, "delta": bitpack.TRANSFORM_DELTA}
# Chunks up to this many bytes are coded on the event loop: that takes tens of microseconds, less than a
# hand-off to a worker thread costs. Larger chunks go to a thread (the kernels release the GIL).
_INLINE_BYTES = 256 * 1024


def parse_transform(data: JSON) -> Literal["none", "delta"]:
    """Return ``data`` if it names a transform (``"none"`` or ``"delta"``), else raise ``CodecError``."""
    if isinstance(data, str) and data in TRANSFORMS:
        return data  # type: ignore[return-value]
    raise CodecError(f"{CODEC_NAME}: transform must be 'none' or 'delta', got {data!r}")


def parse_element_size(data: JSON) -> int:
    """Return ``data`` if it is 4 (the only element size BP-128 packs), else raise ``CodecError``."""
    if isinstance(data, int) and not isinstance(data, bool) and data == ELEMENT_SIZE:
        return data
    raise CodecError(f"{CODEC_NAME}: element_size must be {ELEMENT_SIZE}, got {data!r}")


@dataclass(frozen=True)
class BitpackingCodec(BytesBytesCodec):
    """BP-128 bit packing of 4-byte integers, plain or delta-coded.

    Parameters
    ----------
    transform : {"none", "delta"}
        ``"delta"`` packs differences between neighbours (CSR indices: sorted runs that restart at every
        cell), or offsets from the block minimum where runs are very short; ``"none"`` packs the values.
    element_size : int
        Bytes per element; must be 4.

    Raises
    ------
    CodecError
        If the configuration is invalid (at construction) or a chunk is malformed (when decoding).
    """

    is_fixed_size = False

    transform: Literal["none", "delta"] = "none"
    element_size: int = ELEMENT_SIZE

    def __init__(self, transform: str = "none", *, element_size: int = ELEMENT_SIZE) -> None:
        object.__setattr__(self, "transform", parse_transform(transform))
        object.__setattr__(self, "element_size", parse_element_size(element_size))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        """Build the codec from its JSON form ``{"name": ..., "configuration": {...}}``."""
        try:
            _, config = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        except (TypeError, ValueError) as e:
            raise CodecError(f"not a {CODEC_NAME} codec configuration: {data!r} ({e})") from e
        config = config or {}
        unknown = sorted(set(config) - {"transform", "element_size"})
        if unknown:
            raise CodecError(f"{CODEC_NAME}: unknown configuration keys {unknown}")
        return cls(config.get("transform", "none"), element_size=config.get("element_size", ELEMENT_SIZE))

    def to_dict(self) -> dict[str, JSON]:
        """The codec's JSON form, as stored in ``zarr.json``."""
        return {
            "name": CODEC_NAME,
            "configuration": {"transform": self.transform, "element_size": self.element_size},
        }

    def validate(
        self, *, shape: tuple[int, ...], dtype: ZDType[TBaseDType, TBaseScalar], chunk_grid: ChunkGrid
    ) -> None:
        """Reject arrays whose elements are not 4 bytes wide."""
        itemsize = dtype.to_native_dtype().itemsize
        if itemsize != self.element_size:
            raise CodecError(f"{CODEC_NAME} packs {self.element_size}-byte elements; the array has {dtype}")

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        decoded = _bitpacking(chunk_bytes.as_numpy_array().view(np.uint8))
        return chunk_spec.prototype.buffer.from_array_like(decoded)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        if len(chunk_bytes) <= _INLINE_BYTES:
            return self._decode_sync(chunk_bytes, chunk_spec)
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer | None:
        raw = chunk_bytes.as_numpy_array().view(np.uint8)
        if raw.size % ELEMENT_SIZE:
            raise CodecError(f"{CODEC_NAME}: chunk of {raw.size} bytes is not a whole number of 4-byte words")
        encoded = bitpack.encode(np.ascontiguousarray(raw).view(np.uint32), TRANSFORMS[self.transform])
        return chunk_spec.prototype.buffer.from_array_like(encoded)

    async def _encode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer | None:
        if len(chunk_bytes) <= _INLINE_BYTES:
            return self._encode_sync(chunk_bytes, chunk_spec)
        return await asyncio.to_thread(self._encode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, _input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        """Not available: the encoded size depends on the data."""
        raise NotImplementedError


def _zstd(data: np.ndarray) -> np.ndarray:
    try:
        return np.frombuffer(numcodecs.zstd.decompress(data), np.uint8)
    except (RuntimeError, ValueError) as e:
        raise CodecError(f"zstd cannot decode the chunk ({e})") from e


def _bitpacking(data: np.ndarray) -> np.ndarray:
    try:
        return bitpack.decode(data).view(np.uint8)
    except bitpack.BitpackError as e:
        raise CodecError(f"{CODEC_NAME} cannot decode the chunk ({e})") from e


# crc32c over bytes followed by their own crc32c (little-endian) is always this: one call checks a chunk.
CRC32C_RESIDUE = RESIDUE


def _crc32c(data: np.ndarray) -> np.ndarray:
    if data.size < 4:
        raise ChecksumError(f"the chunk is {data.size} bytes, too short for its crc32c")
    if crc32c.crc32c(data) != CRC32C_RESIDUE:
        stored, computed = int.from_bytes(data[-4:].tobytes(), "little"), crc32c.crc32c(data[:-4])
        raise ChecksumError(f"chunk checksum {computed:#010x} != stored {stored:#010x}")
    return data[:-4]


# Decoders of the bytes-to-bytes codecs that lancell writes, by zarr codec name, for the decode path that
# reads chunks without zarr-python (lancell.storage.shard_decode): each takes a chunk's bytes (1-D uint8) and
# returns the decoded bytes, or raises CodecError (ChecksumError when a crc32c does not match).
BYTES_DECODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "zstd": _zstd,
    CODEC_NAME: _bitpacking,
    "crc32c": _crc32c,
}
# The decoding stages of lancell's checksummed integer arrays, in order: one crc32c check, then BP-128.
CRC_BP128 = (_crc32c, _bitpacking)


# zarr finds the codec through the entry point; registering here too covers a source checkout that is on
# sys.path without being installed, as zarr's own codec modules do.
register_codec(CODEC_NAME, BitpackingCodec)
