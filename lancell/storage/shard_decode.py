"""The one decode path of sharded lancell arrays (docs/architecture.md, "Reading"; docs/integrity.md, "What is
checked").

Every read of a sharded array's chunks decodes here, whoever fetched the bytes: the batched reader's needed
chunks of many shards and its whole-shard reads (the CSC builder's), 1-D and 2-D arrays alike. A shard's index
is checked completely (:func:`lancell.storage.shard_index.parse_index`) before any chunk is fetched; a chunk's
crc32c is checked before a decoder runs; checksummed BP-128 chunks (lancell's integer arrays) are decoded by
one kernel call, any other chunk (zstd floats, chunks of older atlases without a crc32c, or a damaged chunk)
stage by stage through :data:`lancell.storage.codecs.BYTES_DECODERS`, so that an error names the chunk. The
fill-value rule: a chunk its index marks unwritten reads as the fill value (a missing shard *object* is the
reader's decision, :class:`lancell.storage.shard_reader.ShardedArrayReader`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import crc32c
import numpy as np

from kernels import bitpack
from lancell.errors import CodecError
from lancell.storage.codecs import CRC32C_RESIDUE, CRC_BP128
from lancell.storage.shard_index import MISSING, parse_index

if TYPE_CHECKING:
    from lancell.storage.shard_layout import ShardLayout

__all__ = ["decode_chunks", "decode_shard", "join_buffers", "read_index", "shard_elements"]


def read_index(layout: ShardLayout, raw: Any, size: int, where: str) -> np.ndarray:
    """Check the index bytes ``raw`` of a shard object of ``size`` bytes and return its entries.

    ``raw`` holds the object's last (index at the end) or first ``layout.index_nbytes`` bytes, fewer when the
    object is shorter; every chunk must lie in the rest of the object.

    Raises
    ------
    ChecksumError, ShardFormatError
        See :func:`lancell.storage.shard_index.parse_index`.
    """
    nbytes = layout.index_nbytes
    data = (0, size - nbytes) if layout.index_at_end else (nbytes, size)
    return parse_index(
        np.frombuffer(raw, np.uint8), layout.chunks_per_shard, crc=layout.index_crc, data=data, where=where
    )


def join_buffers(buffers: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(buf, offsets, sizes)``: the chunks ``buffers`` (bytes-like) back to back in one uint8 buffer."""
    raws = [np.frombuffer(buffer, np.uint8) for buffer in buffers]
    sizes = np.fromiter((raw.size for raw in raws), np.int64, len(raws))
    buf = np.concatenate(raws) if raws else np.zeros(0, np.uint8)
    return buf, np.cumsum(sizes) - sizes, sizes


def _checked_bitpacked(
    buf: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, total: int
) -> np.ndarray | None:
    """Chunks stored as :data:`lancell.storage.codecs.CRC_BP128`, their crc32c checked and all decoded by one
    kernel call; None when a chunk is damaged (the stage-by-stage path then raises the precise error)."""
    for offset, size in zip(offsets.tolist(), sizes.tolist(), strict=True):
        if size < 4 or crc32c.crc32c(buf[offset : offset + size]) != CRC32C_RESIDUE:
            return None
    decoded = np.empty(total, np.uint32)
    try:
        bitpack.decode_chunks(buf, offsets, sizes - 4, decoded)
    except bitpack.BitpackError:
        return None
    return decoded


def decode_chunks(
    layout: ShardLayout,
    buf: np.ndarray,
    offsets: np.ndarray,
    sizes: np.ndarray,
    where: Callable[[int], str],
) -> np.ndarray:
    """Decode the chunks ``buf[offsets[k] : offsets[k] + sizes[k]]`` of an array laid out as ``layout``.

    Parameters
    ----------
    layout
        The array's :class:`lancell.storage.shard_layout.ShardLayout`.
    buf
        1-D uint8 bytes holding the encoded chunks (a whole shard object, or chunks joined by
        :func:`join_buffers`).
    offsets, sizes
        int64 byte ranges of the chunks in ``buf``.
    where
        ``where(k)`` names chunk ``k`` (array, shard object, chunk) in an error message; called only on error.

    Returns
    -------
    np.ndarray
        The ``layout.chunk_len`` elements of each chunk back to back (``layout.dtype``).

    Raises
    ------
    ChecksumError
        If a chunk's crc32c does not match its bytes.
    CodecError
        If a chunk cannot be decoded or decodes to the wrong size.
    """
    chunk_len, dtype = layout.chunk_len, layout.dtype
    if layout.stages == CRC_BP128:
        decoded = _checked_bitpacked(buf, offsets, sizes, offsets.size * chunk_len)
        if decoded is not None:
            return decoded.view(dtype)
    decoded = np.empty(offsets.size * chunk_len, dtype)
    nbytes = chunk_len * dtype.itemsize
    for k, (offset, size) in enumerate(zip(offsets.tolist(), sizes.tolist(), strict=True)):
        data = buf[offset : offset + size]
        try:
            for stage in layout.stages:
                data = stage(data)
            if data.size != nbytes:
                raise CodecError(f"the chunk decodes to {data.size} bytes, expected {nbytes}")
        except CodecError as e:
            raise type(e)(f"{where(k)}: {e}") from e
        decoded[k * chunk_len : (k + 1) * chunk_len] = data.view(dtype)
    return decoded


def shard_elements(layout: ShardLayout, shard: int) -> int:
    """Elements of shard ``shard`` (the last one may be short), of the C-order flattened array when 2-D."""
    row = int(np.prod(layout.shape[1:], dtype=np.int64))
    rows = min(layout.shard_shape[0], layout.shape[0] - shard * layout.shard_shape[0])
    return max(rows, 0) * row


def decode_shard(layout: ShardLayout, raw: np.ndarray, shard: int, path: str) -> np.ndarray:
    """Every element of shard ``shard`` of the array at ``path``, from its whole object ``raw`` (1-D uint8).

    The index is checked, every written chunk decoded by :func:`decode_chunks`; chunks the index marks
    unwritten read as the fill value.

    Raises
    ------
    ChecksumError, ShardFormatError, CodecError
        As :func:`read_index` and :func:`decode_chunks`; messages name the array, shard object and chunk.
    """
    where = f"array {path!r}, shard {layout.shard_key(path, shard)!r}"
    nbytes = layout.index_nbytes
    edge = raw[max(raw.size - nbytes, 0) :] if layout.index_at_end else raw[:nbytes]
    entries = read_index(layout, edge, raw.size, where)
    length = shard_elements(layout, shard)
    n_chunks = -(-length // layout.chunk_len)
    entries = entries[:n_chunks]
    present = np.flatnonzero(entries[:, 0] != MISSING)
    decoded = decode_chunks(
        layout,
        raw,
        entries[present, 0].astype(np.int64),
        entries[present, 1].astype(np.int64),
        lambda k: f"{where}, chunk {int(present[k])}",
    )
    if present.size < n_chunks:
        out = np.full((n_chunks, layout.chunk_len), layout.fill_value, layout.dtype)
        out[present] = decoded.reshape(present.size, layout.chunk_len)
        decoded = out.reshape(-1)
    return decoded[:length]
