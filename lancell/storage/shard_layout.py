"""The layout of a sharded zarr v3 array, digested from its ``zarr.json`` for the batched reader.

:func:`parse_layout` accepts exactly what :class:`lancell.storage.shard_reader.ShardedArrayReader` can read:
1-D arrays, or 2-D arrays with whole-row chunks, of a plain numeric type, sharded with ``sharding_indexed``
over a little-endian ``bytes`` serializer followed by any of zstd / lancell.bitpacking / crc32c, with a
``bytes`` (+ crc32c) index at either end of the shard, and default or v2 chunk keys. Anything else raises
``ShardFormatError`` and is read through zarr-python instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lancell.errors import ShardFormatError
from lancell.storage.codecs import BYTES_DECODERS
from lancell.storage.shard_index import index_nbytes

__all__ = ["ShardLayout", "parse_layout"]

_FLOAT_WORDS = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}


@dataclass(frozen=True)
class ShardLayout:
    """What the reader needs from ``zarr.json``; 2-D arrays are read as their flattened C-order elements."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    chunk_shape: tuple[int, ...]
    shard_shape: tuple[int, ...]
    chunk_len: int
    chunks_per_shard: int
    stages: tuple[Callable[[np.ndarray], np.ndarray], ...]
    index_crc: bool
    index_at_end: bool
    key_prefix: str
    key_separator: str

    @property
    def index_nbytes(self) -> int:
        return index_nbytes(self.chunks_per_shard, self.index_crc)

    @property
    def chunk_crc(self) -> bool:
        """Whether every chunk's stored bytes end in a crc32c (checked before anything decodes them)."""
        return self.stages[:1] == (BYTES_DECODERS["crc32c"],)

    def shard_key(self, path: str, shard: int) -> str:
        """The object key of shard ``shard`` (along the first axis) of the array at ``path``."""
        coords = [str(shard)] + ["0"] * (len(self.shape) - 1)
        return f"{path}/{self.key_prefix}{self.key_separator.join(coords)}"


def _named(codec: Any, path: str) -> tuple[str, dict[str, Any]]:
    if isinstance(codec, str):
        return codec, {}
    if not isinstance(codec, dict) or not isinstance(codec.get("name"), str):
        raise ShardFormatError(f"{path}: malformed codec entry {codec!r}")
    return codec["name"], dict(codec.get("configuration") or {})


def _parse_fill(value: Any, dtype: np.dtype, path: str) -> Any:
    try:
        if isinstance(value, str) and dtype.kind == "f" and value in _FLOAT_WORDS:
            return dtype.type(_FLOAT_WORDS[value])
        if isinstance(value, str) and dtype.kind == "f" and value.startswith("0x"):
            raw = int(value, 16).to_bytes(dtype.itemsize, "big")
            return np.frombuffer(raw, dtype.newbyteorder(">"))[0].astype(dtype)
        if isinstance(value, bool | int | float):
            return dtype.type(value)
    except (OverflowError, ValueError) as e:
        raise ShardFormatError(f"{path}: fill value {value!r} does not fit {dtype}") from e
    raise ShardFormatError(f"{path}: unsupported fill value {value!r} for {dtype}")


def parse_layout(meta: dict[str, Any], path: str) -> ShardLayout:
    """Check that ``meta`` (an array's ``zarr.json``) describes a layout the reader handles, and digest it.

    Raises
    ------
    ShardFormatError
        Unless the array is a zarr v3 1-D array, or 2-D array with whole-row chunks, of a plain numeric type,
        sharded with ``sharding_indexed`` over the little-endian ``bytes`` serializer followed by any of
        zstd / lancell.bitpacking / crc32c, with a ``bytes`` (+ crc32c) index.
    """
    data_type, shape = meta.get("data_type"), tuple(int(n) for n in meta.get("shape", ()))
    dtype = np.dtype(data_type) if isinstance(data_type, str) and data_type.isidentifier() else None
    if meta.get("zarr_format") != 3 or dtype is None or dtype.kind not in "biuf" or len(shape) not in (1, 2):
        raise ShardFormatError(f"{path}: not a 1-D or 2-D zarr v3 array of numbers ({data_type!r}, {shape})")
    codecs = meta.get("codecs", [])
    if (
        len(codecs) != 1
        or _named(codecs[0], path)[0] != "sharding_indexed"
        or meta.get("storage_transformers")
    ):
        raise ShardFormatError(f"{path}: the array is not simply sharded (codecs {codecs!r})")
    grid_name, grid = _named(meta.get("chunk_grid"), path)
    sharding = _named(codecs[0], path)[1]
    shard_shape = tuple(int(n) for n in grid.get("chunk_shape", ()))
    chunk_shape = tuple(int(n) for n in sharding.get("chunk_shape", ()))
    if (
        grid_name != "regular"
        or not len(shard_shape) == len(chunk_shape) == len(shape)
        or min(chunk_shape) < 1
        or shard_shape[0] % chunk_shape[0]
        or (len(shape) == 2 and not chunk_shape[1] == shard_shape[1] == shape[1])
    ):
        raise ShardFormatError(f"{path}: shards {shard_shape} of chunks {chunk_shape} cannot be read by rows")
    inner = [_named(c, path) for c in sharding.get("codecs", [])]
    index = [_named(c, path) for c in sharding.get("index_codecs", ["bytes", "crc32c"])]
    for chain in (inner, index):
        if not chain or chain[0][0] != "bytes" or chain[0][1].get("endian", "little") != "little":
            raise ShardFormatError(f"{path}: codecs {chain} do not start with a little-endian 'bytes'")
    unknown = [name for name, _ in inner[1:] if name not in BYTES_DECODERS]
    index_rest = [name for name, _ in index[1:]]
    if unknown or index_rest not in ([], ["crc32c"]):
        raise ShardFormatError(
            f"{path}: codecs {unknown or index_rest} are not supported by the batched reader"
        )
    location = sharding.get("index_location", "end")
    key_name, key_config = _named(meta.get("chunk_key_encoding", {"name": "default"}), path)
    if location not in ("start", "end") or key_name not in ("default", "v2"):
        raise ShardFormatError(f"{path}: index location {location!r} / chunk keys {key_name!r} unsupported")
    separator = key_config.get("separator", "/" if key_name == "default" else ".")
    return ShardLayout(
        shape=shape,
        dtype=dtype,
        fill_value=_parse_fill(meta.get("fill_value", 0), dtype, path),
        chunk_shape=chunk_shape,
        shard_shape=shard_shape,
        chunk_len=int(np.prod(chunk_shape)),
        chunks_per_shard=shard_shape[0] // chunk_shape[0],
        stages=tuple(BYTES_DECODERS[name] for name, _ in reversed(inner[1:])),
        index_crc=bool(index_rest),
        index_at_end=location == "end",
        key_prefix=f"c{separator}" if key_name == "default" else "",
        key_separator=separator,
    )
