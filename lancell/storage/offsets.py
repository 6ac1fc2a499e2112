"""Offsets arrays (``<group>/csr/indptr``, ``<group>/csc/indptr``): written whole, read whole and checked.

A sparse array's offsets say which stored values belong to which cell (CSR) or feature (CSC); zarr reads a
missing chunk object as fill values (zeros), so a lost offsets chunk would silently move values to other
cells or make a feature's values read as measured zeros. The one rule, kept here:

- every chunk is written, even one of zeros (zarr skips those by default), and the array says so in its
  attributes (``EVERY_CHUNK_WRITTEN``): a missing chunk object of such an array is damage (a read asks
  whether the chunks that read as zeros exist; ``validate()`` compares them all with its listing);
- read whole, the offsets must start at 0, never decrease, end at the group's ``nnz`` and hold one entry
  more than the group's cells (CSR) or features (CSC). Offsets of older atlases (not marked) are held to
  these checks alone: they catch a lost chunk anywhere but in a prefix of zero chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import zarr
import zarr.codecs
from zarr.core.sync import sync

from lancell.errors import ChecksumError, CodecError, ShardFormatError

__all__ = ["EVERY_CHUNK_WRITTEN", "missing_chunk_keys", "read_offsets", "write_offsets"]

EVERY_CHUNK_WRITTEN = "every_chunk_written"
_CODECS = (zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec())  # a flipped bit shifts no range
_CHUNK = 65_536
_COUNTED = {"csr": "n_cells", "csc": "n_features"}

Orient = Literal["csr", "csc"]


def write_offsets(parent: zarr.Group, offsets: np.ndarray) -> None:
    """Store ``offsets`` (int64) as ``parent/indptr``, every chunk written (zstd, crc32c), replacing any."""
    parent.create_array(
        "indptr",
        shape=offsets.shape,
        dtype="int64",
        chunks=(min(max(offsets.size, 1), _CHUNK),),
        compressors=_CODECS,
        attributes={EVERY_CHUNK_WRITTEN: True},
        config={"write_empty_chunks": True},
        overwrite=True,
    )[:] = offsets


def read_offsets(array: zarr.Array, group_attrs: Mapping[str, Any], orient: Orient) -> np.ndarray:
    """The whole offsets array ``array`` of a dataset group with attributes ``group_attrs``, checked.

    Raises
    ------
    ShardFormatError
        A chunk object of a marked array is missing, or the offsets do not describe the group (not starting
        at 0, decreasing, another length or total than the group's attributes say).
    ChecksumError
        A chunk does not match its crc32c.
    CodecError
        A chunk does not decode.
    """
    path = array.path
    try:
        offsets = np.asarray(array[:], dtype=np.int64)
    except ValueError as exc:  # zarr's codecs: a crc32c mismatch, a chunk that does not decode
        kind = ChecksumError if "checksum" in str(exc).lower() else CodecError
        raise kind(f"array {path!r} cannot be read: {exc}") from exc
    if array.attrs.get(EVERY_CHUNK_WRITTEN) and array.nchunks > 1:
        _check_zero_chunks(array, offsets)
    counted = _COUNTED[orient]
    expected = (int(group_attrs[counted]) + 1, int(group_attrs["nnz"]))
    found = (offsets.size, int(offsets[-1]) if offsets.size else None)
    if found != expected or offsets[0] != 0 or (np.diff(offsets) < 0).any():
        raise ShardFormatError(
            f"array {path!r} does not hold the group's offsets (expected {expected[0]} entries from 0 to "
            f"nnz {expected[1]} that never decrease; found {found[0]} from "
            f"{int(offsets[0]) if offsets.size else None} to {found[1]}): a chunk object is lost or replaced"
        )
    return offsets


def _check_zero_chunks(array: zarr.Array, offsets: np.ndarray) -> None:
    """Raise unless every chunk of ``array`` that read as zeros is stored (one existence request each).

    A lost chunk reads as zeros: the value checks catch it unless it lies in a prefix of chunks that are
    zeros (empty first cells or features), which these requests tell from one written with zeros. A
    single chunk is left to the value checks (lost, it ends at 0, not at ``nnz``): reads of most arrays make
    no request more than the read.
    """
    (chunk,) = array.chunks
    for i in range(array.nchunks):
        if offsets[i * chunk : (i + 1) * chunk].any():
            break  # offsets never decrease: no later chunk is all zeros
        key = f"{array.path}/{array.metadata.encode_chunk_key((i,))}"
        if not sync(array.store.exists(key)):
            raise ShardFormatError(
                f"array {array.path!r}: chunk object {key!r} is missing from the store (read as zeros)"
            )


def missing_chunk_keys(meta: Mapping[str, Any], path: str, listed: set[str]) -> tuple[list[str], int] | None:
    """``(missing chunk keys, number of chunks)`` of the marked 1-D array at ``path`` whose ``zarr.json`` is
    ``meta``, among the ``listed`` object keys; None for an array that is not marked (or not 1-D with
    zarr's default chunk key encoding)."""
    attrs = meta.get("attributes") or {}
    encoding = meta.get("chunk_key_encoding") or {}
    try:
        (size,) = meta["shape"]
        (chunk,) = meta["chunk_grid"]["configuration"]["chunk_shape"]
    except (KeyError, TypeError, ValueError):
        return None
    if not attrs.get(EVERY_CHUNK_WRITTEN) or encoding.get("name") != "default":
        return None
    separator = (encoding.get("configuration") or {}).get("separator", "/")
    n_chunks = -(-int(size) // int(chunk))
    keys = (f"{path}/c{separator}{i}" for i in range(n_chunks))
    return [key for key in keys if key not in listed], n_chunks
