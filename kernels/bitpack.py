"""BP-128 bit packing of uint32 arrays: blocks of 128 values, each packed at its own bit width (0..32).

A block's *head* byte holds its width ``w`` (bits 0-5) and two flags. ``MODE_EXCEPTIONS`` (bit 6): values
wider than ``w`` are *exceptions* (patched frame of reference, as in PFOR): their slot keeps the low ``w``
bits, and the block's exception list holds their positions and high bits (1 to 64 per block). ``MODE_DELTA``
(bit 7, delta transform only): the block packs ``x[i] - x[i-1]`` modulo 2**32 (slot 0 holds 0) and decodes
by prefix sums from its base, the block's first value; its exceptions hold the deltas zigzag-coded, so the
negative step at a cell boundary of CSR indices costs one exception of a few bytes instead of forcing the
block to 32 bits. A delta-transform block without the flag packs ``x[i] - base`` with the block minimum as
base (frame of reference), which wins on runs of a few values. ``TRANSFORM_NONE`` packs the values (no
bases). The encoder packs each block at the width of fewest bytes, exceptions included, and tries the
frame of reference where deltas need more than 8 exceptions; every uint32 input round-trips exactly.

Encoded buffer (little-endian; the sections up to the packed blocks start on 4-byte words)::

    byte 0        3         4          5          8                      16
         | "LBP" | version=2 | transform | 0, 0, 0 | n: uint64 values      |
         | head[0] .. head[nb-1]: uint8 = flags | width, nb = ceil(n/128) | zero pad to 4 bytes |
         | base[0] .. base[nb-1]: uint32 (delta transform only)                               |
         | block 0: 4*width[0] words | block 1: 4*width[1] words | ... | last block            |
         | info[0] .. info[f-1]: uint8, one per flagged block, f = number of flagged blocks   |
         | list 0 | ... | list f-1 | zero pad to 4 bytes                                     |
    info = (c - 1) | (s - 1) << 6: c exceptions (1..64), s bytes (1..4) of high bits each
    list = | pos[0] .. pos[c-1]: uint8 | high[0] .. high[c-1]: s bytes each |
    the value (delta: zigzag delta) at position pos[j] = high[j] << w | the low w bits in its slot

Block offsets follow from the heads alone and list offsets from the info bytes alone, so ``validate`` reads
neither packed words nor lists.

Within a block value ``i`` belongs to lane ``i % 4`` as that lane's value ``k = i // 4``. Each lane is a
stream of ``w`` uint32 words holding its 32 values LSB-first (value ``k`` at bits ``k*w .. k*w+w-1``), and
the four streams are interleaved word by word::

    word:  0       1       2       3       4       5       ...  4w-1
    lane:  0       1       2       3       0       1       ...  3
    bits:  x0 x4.. x1 x5.. x2 x6.. x3 x7.. (lane words 1)  ...

so the four lanes decode in lock step, one 128-bit vector operation per 4 values, with shift amounts that
depend only on ``k`` and ``w``. The last block of ``m < 128`` values is zero-padded to 128, packed the same
way, and cut to its first ``4 * ceil(ceil(m/4) * w / 32)`` words, which hold every bit of its ``m`` values.
Decoding a block: unpack, patch exceptions, then prefix-sum (delta) or add the base (frame of reference).

``validate`` checks a buffer completely (header, section sizes, heads, exception info bytes, exact
length) and raises ``BitpackError`` (a ``ValueError``) before any kernel touches the packed words: the
numba kernels do no bounds checks (exception positions are masked into their block). Version 1 buffers
(heads are plain widths; delta blocks always delta) still decode. Only little-endian hosts are supported.
"""

import struct

import numpy as np

from kernels.bitpack_blocks import BLOCK, MODE_DELTA, MODE_EXCEPTIONS, WIDTH_MASK, walk
from kernels.bitpack_blocks import decode_chunks_kernel as _decode_chunks_kernel
from kernels.bitpack_blocks import decode_kernel as _decode_kernel
from kernels.bitpack_blocks import encode_chunks_kernel as _encode_chunks_kernel
from kernels.bitpack_blocks import encode_kernel as _encode_kernel

HEADER_BYTES = 16
MAGIC = b"LBP"
FORMAT_VERSION = 2
TRANSFORM_NONE = 0
TRANSFORM_DELTA = 1
_HEADER = struct.Struct("<3sBB3sQ")
_U8, _U32 = np.dtype(np.uint8), np.dtype(np.uint32)

__all__ = [
    "BLOCK",
    "FORMAT_VERSION",
    "MODE_DELTA",
    "MODE_EXCEPTIONS",
    "TRANSFORM_DELTA",
    "TRANSFORM_NONE",
    "WIDTH_MASK",
    "BitpackError",
    "decode",
    "decode_chunks",
    "decode_into",
    "encode",
    "encode_chunks",
    "encoded_chunks_words",
    "max_encoded_size",
    "validate",
]


class BitpackError(ValueError):
    """An encoded buffer is malformed, or an argument does not fit the format."""


def _sections(n: int, transform: int) -> tuple[int, int]:
    """Word offsets of the bases (-1 when plain) and of the packed blocks, for ``n`` values."""
    nb = -(-n // BLOCK)
    bases = HEADER_BYTES // 4 + -(-nb // 4)
    return (bases, bases + nb) if transform == TRANSFORM_DELTA else (-1, bases)


def max_encoded_size(n: int) -> int:
    """Upper bound, in bytes, of the encoded size of ``n`` values with either transform.

    The encoder never picks a block larger than the same block packed at 32 bits without exceptions.
    """
    nb = -(-n // BLOCK)
    return HEADER_BYTES + 4 * -(-nb // 4) + 4 * nb + 16 * -(-n // 4)


def encode(values: np.ndarray, transform: int = TRANSFORM_NONE) -> np.ndarray:
    """Encode ``values`` (1-D uint32, any length) with ``transform`` (``TRANSFORM_NONE`` or ``_DELTA``).

    Returns
    -------
    np.ndarray
        The encoded buffer, uint8, at most ``max_encoded_size(values.size)`` bytes.

    Raises
    ------
    BitpackError
        If ``values`` is not a 1-D uint32 array or ``transform`` is unknown.
    """
    if not isinstance(values, np.ndarray) or values.dtype != np.uint32 or values.ndim != 1:
        raise BitpackError(f"expected a 1-D uint32 array, got {getattr(values, 'dtype', type(values))}")
    if transform not in (TRANSFORM_NONE, TRANSFORM_DELTA):
        raise BitpackError(f"unknown transform {transform!r}")
    n = values.size
    words = np.empty(max_encoded_size(n) // 4, np.uint32)  # the kernel writes every byte it returns
    raw = words.view(np.uint8)
    _HEADER.pack_into(raw, 0, MAGIC, FORMAT_VERSION, transform, b"\0\0\0", n)
    bases, packed = _sections(n, transform)
    used = _encode_kernel(np.ascontiguousarray(values), words, bases, packed)
    return raw[: 4 * used]


def encoded_chunks_words(n_chunks: int, chunk: int, trailer: int = 0) -> int:
    """Words (uint32) :func:`encode_chunks` may write for ``n_chunks`` chunks of ``chunk`` values, each
    followed by ``trailer`` bytes: the size of an ``out`` buffer it accepts."""
    return n_chunks * (max_encoded_size(chunk) + trailer) // 4


def encode_chunks(
    values: np.ndarray,
    chunk: int,
    transform: int = TRANSFORM_NONE,
    trailer: int = 0,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``values`` chunk by chunk, in one call: each chunk of ``chunk`` values exactly as
    :func:`encode` would, followed by ``trailer`` bytes for the caller (a checksum), back to back.

    Parameters
    ----------
    values
        1-D uint32 array holding a whole number of chunks.
    chunk
        Values per chunk (at least 1).
    transform
        ``TRANSFORM_NONE`` or ``TRANSFORM_DELTA``, for every chunk.
    trailer
        Bytes left after each encoded chunk (uninitialized), a multiple of 4 (every chunk stays 4-byte
        aligned).
    out
        A 1-D uint32 buffer of at least :func:`encoded_chunks_words` words to encode into (reused across
        calls, it spares a fresh allocation and its page faults); a new one if None. Words past the
        returned bytes are left as they were.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(buffer, ends)``: uint8 bytes (a view of ``out`` when given), and the int64 offset where each
        chunk's trailer ends (chunk ``i`` is ``buffer[ends[i - 1] : ends[i] - trailer]``, with
        ``ends[-1] == 0``).

    Raises
    ------
    BitpackError
        If ``values`` is not a 1-D uint32 array of whole chunks, ``transform`` is unknown, ``trailer`` is
        not a multiple of 4 or ``out`` is not a large enough 1-D uint32 array.
    """
    if not isinstance(values, np.ndarray) or values.dtype != np.uint32 or values.ndim != 1:
        raise BitpackError(f"expected a 1-D uint32 array, got {getattr(values, 'dtype', type(values))}")
    if chunk < 1 or values.size % chunk:
        raise BitpackError(f"{values.size} values are not a whole number of {chunk}-value chunks")
    if transform not in (TRANSFORM_NONE, TRANSFORM_DELTA):
        raise BitpackError(f"unknown transform {transform!r}")
    if trailer < 0 or trailer % 4:
        raise BitpackError(f"trailer of {trailer} bytes: expected a multiple of 4")
    n_chunks = values.size // chunk
    words = encoded_chunks_words(n_chunks, chunk, trailer)
    if out is None:
        out = np.empty(words, np.uint32)
    elif (
        not isinstance(out, np.ndarray)
        or out.dtype != np.uint32
        or out.ndim != 1
        or out.size < words
        or not out.flags.c_contiguous
    ):
        raise BitpackError(f"out must be a contiguous 1-D uint32 array of at least {words} words")
    header = np.frombuffer(_HEADER.pack(MAGIC, FORMAT_VERSION, transform, b"\0\0\0", chunk), np.uint8)
    bases, packed = _sections(chunk, transform)
    ends = np.empty(n_chunks, np.int64)
    _encode_chunks_kernel(np.ascontiguousarray(values), header, bases, packed, trailer, out, ends)
    raw = out.view(np.uint8)
    return raw[: ends[-1] if n_chunks else 0], ends


_WALK_ERRORS = {
    1: "block {b} has bit width {w} > 32",
    2: "block {b} has head {h}: mode flags this buffer cannot use",
}


def validate(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Check an encoded buffer (1-D uint8) completely, without reading its packed values.

    Returns
    -------
    tuple
        ``(words, heads, n, bases, packed)``: the buffer as aligned uint32 words, the block heads (uint8),
        the number of values, and the word offsets of the block bases (-1 when plain) and packed blocks.

    Raises
    ------
    BitpackError
        If the buffer is truncated or too long (for the sizes its heads and exception info bytes give), or
        has a bad magic, version, transform or block head.
    """
    if type(buf) is not np.ndarray or buf.ndim != 1 or (buf.dtype is not _U8 and buf.dtype != _U8):
        raise BitpackError(f"expected a 1-D uint8 array, got {getattr(buf, 'dtype', type(buf))}")
    size = buf.size
    if size < HEADER_BYTES:
        raise BitpackError(f"truncated buffer: {size} bytes, the header alone takes {HEADER_BYTES}")
    buf = np.ascontiguousarray(buf)
    magic, version, transform, reserved, n = _HEADER.unpack_from(buf)
    if magic != MAGIC or version not in (1, FORMAT_VERSION):
        raise BitpackError(f"not a BP-128 buffer (magic {magic!r}, version {version})")
    if transform not in (TRANSFORM_NONE, TRANSFORM_DELTA) or reserved != b"\0\0\0":
        raise BitpackError(f"bad header: transform {transform}, reserved bytes {reserved!r}")
    bases, packed = _sections(n, transform)
    if size < 4 * packed:
        raise BitpackError(f"truncated buffer: {size} bytes, the header of {n} values takes {4 * packed}")
    # Version 1 heads are bare widths, and every block of a delta-transform buffer is a delta block.
    flags = MODE_EXCEPTIONS | (MODE_DELTA if transform == TRANSFORM_DELTA else 0) if version > 1 else 0
    used, code, b = walk(buf, n, packed, flags)
    heads = buf[HEADER_BYTES : HEADER_BYTES + -(-n // BLOCK)]
    if code:
        h = int(heads[b])
        raise BitpackError(_WALK_ERRORS[code].format(b=b, h=h, w=h & WIDTH_MASK, size=size))
    if size != 4 * (packed + used):
        kind = "truncated" if size < 4 * (packed + used) else "trailing bytes in"
        raise BitpackError(
            f"{kind} buffer: {size} bytes, {n} values of these blocks take {4 * (packed + used)}"
        )
    words = buf.view(np.uint32)
    if not words.flags.aligned:
        words = buf.copy().view(np.uint32)
    if version == 1 and transform == TRANSFORM_DELTA:
        heads = heads | np.uint8(MODE_DELTA)
    return words, heads, n, bases, packed


def decode_into(buf: np.ndarray, out: np.ndarray) -> None:
    """Decode ``buf`` into ``out``, a writeable 1-D contiguous uint32 array of exactly the encoded length.

    Raises
    ------
    BitpackError
        If ``buf`` is malformed (see ``validate``) or ``out`` does not fit.
    """
    words, heads, n, bases, packed = validate(buf)
    if type(out) is not np.ndarray or out.shape != (n,) or (out.dtype is not _U32 and out.dtype != _U32):
        raise BitpackError(f"out must be a 1-D uint32 array of {n} values")
    flags = out.flags
    if not (flags.c_contiguous and flags.writeable):
        raise BitpackError("out must be writeable and contiguous")
    _decode_kernel(words, heads, bases, packed, out)


def decode(buf: np.ndarray) -> np.ndarray:
    """Decode an encoded buffer into a new 1-D uint32 array.

    Raises
    ------
    BitpackError
        If ``buf`` is malformed (see ``validate``).
    """
    words, heads, n, bases, packed = validate(buf)
    out = np.empty(n, np.uint32)
    _decode_kernel(words, heads, bases, packed, out)
    return out


_CHUNK_ERRORS = {1: "bad header", 2: "bad block head", 3: "wrong size"}


def decode_chunks(buf: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray) -> None:
    """Decode the encoded buffers ``buf[offsets[i] : offsets[i] + sizes[i]]``, each of ``out.size //
    offsets.size`` values, into consecutive slices of ``out``, in one call; each is checked as ``validate``
    checks a buffer before it is decoded.

    Raises
    ------
    BitpackError
        If ``buf`` is not 1-D uint8, ``out`` not a writeable contiguous 1-D uint32 array of whole chunks,
        an offset or size runs out of ``buf``, or a buffer is malformed (the first one is named).
    """
    offsets = np.asarray(offsets, np.int64)
    sizes = np.asarray(sizes, np.int64)
    if type(buf) is not np.ndarray or buf.ndim != 1 or buf.dtype != _U8:
        raise BitpackError(f"expected a 1-D uint8 array, got {getattr(buf, 'dtype', type(buf))}")
    if type(out) is not np.ndarray or out.ndim != 1 or out.dtype != _U32 or not out.flags.c_contiguous:
        raise BitpackError("out must be a contiguous 1-D uint32 array")
    if not out.flags.writeable or offsets.shape != sizes.shape or out.size % max(offsets.size, 1):
        raise BitpackError(f"out must be writeable and hold {offsets.size} chunks of equal length")
    if offsets.size and (offsets.min() < 0 or sizes.min() < 0 or (offsets + sizes).max() > buf.size):
        raise BitpackError(f"chunk bytes beyond the {buf.size}-byte buffer")
    if offsets.size == 0:
        return
    header = np.frombuffer(MAGIC + bytes([FORMAT_VERSION]), np.uint8)
    code, chunk = _decode_chunks_kernel(np.ascontiguousarray(buf), offsets, sizes, header, out)
    if code:
        raise BitpackError(f"chunk {chunk} is malformed ({_CHUNK_ERRORS[code]})")
