"""Shard indexes of zarr v3 ``sharding_indexed`` arrays, checked completely before any chunk is fetched.

An index holds ``chunks_per_shard`` pairs ``(offset, nbytes)`` (little-endian uint64, offsets from the start
of the shard object), followed by a crc32c of those bytes under zarr's default index codecs; it is stored at
the end (default) or the start of the object. A pair of ``2**64 - 1`` marks a chunk that was never written (it
reads as the fill value).

The numbers go on to range requests and numpy slicing, so :func:`parse_index` accepts an index only if every
written chunk has bytes, lies inside the shard object's chunk data (the object less its index), and no two
chunks overlap; sums are formed so that no value near ``2**64`` can wrap around.
"""

from __future__ import annotations

import crc32c
import numpy as np

from lancell.errors import ChecksumError, ShardFormatError

__all__ = ["CRC_BYTES", "ENTRY_BYTES", "MISSING", "index_nbytes", "parse_index"]

MISSING = np.uint64(2**64 - 1)  # an index entry's offset and size where its chunk was never written
ENTRY_BYTES = 16  # an index entry: offset and size, little-endian uint64 each
CRC_BYTES = 4  # a crc32c trailer (of each chunk, and of the index)


def index_nbytes(chunks_per_shard: int, crc: bool) -> int:
    """Bytes of the index of a shard of ``chunks_per_shard`` chunks (with a crc32c trailer when ``crc``)."""
    return ENTRY_BYTES * chunks_per_shard + (CRC_BYTES if crc else 0)


def parse_index(
    raw: np.ndarray, chunks_per_shard: int, *, crc: bool, data: tuple[int, int], where: str
) -> np.ndarray:
    """Check a shard index and return its entries.

    Parameters
    ----------
    raw
        The index bytes (1-D uint8), as read from the shard object.
    chunks_per_shard
        Entries the index must hold.
    crc
        Whether the index ends in a crc32c (little-endian) of its entries.
    data
        ``(start, end)``: the byte range of the shard object that holds chunk data (the object less its
        index); every written chunk must lie inside it.
    where
        Names the array and shard in error messages.

    Returns
    -------
    np.ndarray
        ``(chunks_per_shard, 2)`` uint64 ``(offset, nbytes)`` pairs; ``MISSING`` pairs mark unwritten chunks.

    Raises
    ------
    ChecksumError
        If the crc32c does not match the entries.
    ShardFormatError
        If the index has the wrong size, an entry is half ``MISSING``, a chunk has no bytes or lies outside
        ``data``, or two chunks overlap.
    """
    expected = index_nbytes(chunks_per_shard, crc)
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.shape != (expected,):
        size = getattr(raw, "size", None)
        raise ShardFormatError(
            f"{where}: the index is {size} bytes, expected {expected} (a truncated shard?)"
        )
    if crc:
        stored = int.from_bytes(raw[-4:].tobytes(), "little")
        computed = crc32c.crc32c(raw[:-4])
        if stored != computed:
            raise ChecksumError(f"{where}: index checksum {computed:#010x} != stored {stored:#010x}")
    entries = raw[: ENTRY_BYTES * chunks_per_shard].view("<u8").reshape(-1, 2).astype(np.uint64)
    missing = entries[:, 0] == MISSING
    half = np.flatnonzero(missing != (entries[:, 1] == MISSING))
    if half.size:
        raise ShardFormatError(f"{where}: the index marks chunk {half[0]} half missing {entries[half[0]]}")
    start, end = (np.uint64(max(bound, 0)) for bound in data)
    offsets, sizes = entries[:, 0], entries[:, 1]
    empty = np.flatnonzero(~missing & (sizes == 0))
    if empty.size:  # no codec encodes a chunk to nothing
        raise ShardFormatError(f"{where}: the index gives chunk {empty[0]} no bytes")
    # offset + nbytes <= end, written as nbytes <= end - offset so that it cannot wrap
    outside = ~missing & ((offsets < start) | (offsets > end) | (sizes > end - np.minimum(offsets, end)))
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        first, last = int(offsets[k]), int(offsets[k]) + int(sizes[k])
        raise ShardFormatError(
            f"{where}: chunk {k} at bytes [{first}, {last}) lies outside the shard's chunk data "
            f"[{int(start)}, {int(end)}) ({int(outside.sum())} such chunks)"
        )
    written = np.flatnonzero(~missing)
    order = written[np.argsort(offsets[written], kind="stable")]
    overlap = np.flatnonzero(offsets[order[1:]] < offsets[order[:-1]] + sizes[order[:-1]])
    if overlap.size:
        a, b = sorted((int(order[overlap[0]]), int(order[overlap[0] + 1])))
        raise ShardFormatError(f"{where}: chunks {a} and {b} overlap in the shard object")
    return entries
