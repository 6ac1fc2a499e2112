"""BP-128 bit packing of uint32 arrays: blocks of 128 values, one bit width (0..32) per block.

Transforms: ``TRANSFORM_NONE`` packs the values; ``TRANSFORM_DELTA`` stores each block's first value as its
base and packs ``x[i] - x[i-1]`` modulo 2**32 (slot 0 of a block holds 0). A decreasing step (a delta that
wraps, e.g. at a cell boundary of CSR indices) round-trips exactly; it only makes its block 32 bits wide.

Encoded buffer (little-endian; every section is a whole number of 4-byte words)::

    byte 0        3         4          5          8                      16
         | "LBP" | version=1 | transform | 0, 0, 0 | n: uint64 values      |
         | width[0] .. width[nb-1]: uint8 in 0..32, nb = ceil(n/128) | zero pad to 4 bytes |
         | base[0] .. base[nb-1]: uint32, first value of each block (delta only)            |
         | block 0: 4*width[0] words | block 1: 4*width[1] words | ... | last block      |

Within a block value ``i`` belongs to lane ``i % 4`` as that lane's value ``k = i // 4``. Each lane is a
stream of ``w`` uint32 words holding its 32 values LSB-first (value ``k`` at bits ``k*w .. k*w+w-1``), and
the four streams are interleaved word by word::

    word:  0       1       2       3       4       5       ...  4w-1
    lane:  0       1       2       3       0       1       ...  3
    bits:  x0 x4.. x1 x5.. x2 x6.. x3 x7.. (lane words 1)  ...

so the four lanes decode in lock step, one 128-bit vector operation per 4 values, with shift amounts that
depend only on ``k`` and ``w``. The last block of ``m < 128`` values is zero-padded to 128, packed the same
way, and cut to its first ``4 * ceil(ceil(m/4) * w / 32)`` words, which hold every bit of its ``m`` values.

``validate`` checks a buffer completely (header, section sizes, widths, exact length) and raises
``BitpackError`` (a ``ValueError``) before any kernel touches the packed words: the numba kernels do no
bounds checks. Only little-endian hosts are supported.
"""

import struct
from collections.abc import Callable

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

BLOCK = 128
HEADER_BYTES = 16
MAGIC = b"LBP"
FORMAT_VERSION = 1
TRANSFORM_NONE = 0
TRANSFORM_DELTA = 1
_HEADER = struct.Struct("<3sBB3sQ")
# Kernels index with uint64 offsets and constants: numba gives signed indices a negative-index wraparound.
U0, U1, U4, U31, U32, U128 = (np.uint64(i) for i in (0, 1, 4, 31, 32, 128))
_FULL = np.uint64(0xFFFFFFFF)
_U8, _U32 = np.dtype(np.uint8), np.dtype(np.uint32)


class BitpackError(ValueError):
    """An encoded buffer is malformed, or an argument does not fit the format."""


_I32 = ir.IntType(32)
_V4 = ir.VectorType(_I32, 4)


def _splat(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    one = builder.insert_element(ir.Constant(_V4, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(_V4, ir.Undefined), ir.Constant(_V4, [0, 0, 0, 0]))


def _vec_ptr(context, builder: ir.IRBuilder, array_type, array, index: ir.Value) -> ir.Value:
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index], inbounds=True), _V4.as_pointer())


def _lane_op(left: bool, accumulate: bool) -> Callable:
    """Intrinsic ``op(src, p, sh, mask, dst, o)``: ``dst[o:o+4] (|)= (src[p:p+4] <</>> sh) & mask``.

    numba leaves LLVM's SLP vectorizer off, so the 4-lane vector operations are spelled out in LLVM IR.
    """

    def op(typingctx, src, p, sh, mask, dst, o):
        def codegen(context, builder, sig, args):
            srcv, pv, shv, maskv, dstv, ov = args
            x = builder.load(_vec_ptr(context, builder, sig.args[0], srcv, pv), align=4)
            amount = _splat(builder, builder.trunc(shv, _I32))
            x = builder.shl(x, amount) if left else builder.lshr(x, amount)
            x = builder.and_(x, _splat(builder, builder.trunc(maskv, _I32)))
            out = _vec_ptr(context, builder, sig.args[4], dstv, ov)
            builder.store(builder.or_(x, builder.load(out, align=4)) if accumulate else x, out, align=4)
            return context.get_dummy_value()

        return types.void(src, p, sh, mask, dst, o), codegen

    return intrinsic(op)


_shr_store = _lane_op(left=False, accumulate=False)
_shl_or_store = _lane_op(left=True, accumulate=True)


@intrinsic
def _prefix_block(typingctx, out, d, base):
    """``out[d : d + 128] = base + inclusive prefix sums of out[d : d + 128]``, modulo 2**32."""

    def codegen(context, builder, sig, args):
        outv, dv, basev = args
        zero = ir.Constant(_V4, [0, 0, 0, 0])
        carry = _splat(builder, builder.trunc(basev, _I32))
        # Scan each 4-vector in two shift-and-add steps; the carry stays in a vector register.
        for k in range(BLOCK // 4):
            ptr = _vec_ptr(context, builder, sig.args[0], outv, builder.add(dv, ir.Constant(dv.type, 4 * k)))
            x = builder.load(ptr, align=4)
            x = builder.add(x, builder.shuffle_vector(x, zero, ir.Constant(_V4, [4, 0, 1, 2])))
            x = builder.add(x, builder.shuffle_vector(x, zero, ir.Constant(_V4, [4, 4, 0, 1])))
            x = builder.add(x, carry)
            builder.store(x, ptr, align=4)
            carry = builder.shuffle_vector(x, zero, ir.Constant(_V4, [3, 3, 3, 3]))
        return context.get_dummy_value()

    return types.void(out, d, base), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _block_words(m: int, w: np.uint64) -> np.uint64:
    """Words a block of ``m`` values (1..128) of width ``w`` takes: 4 lanes of ceil(m/4) values."""
    return U4 * ((np.uint64((m + 3) // 4) * w + U31) // U32)


@numba.njit(cache=True, nogil=True, inline="always")
def _unpack_block(src: np.ndarray, s: np.uint64, w: np.uint64, dst: np.ndarray, d: np.uint64) -> None:
    """Unpack 128 ``w``-bit values (1 <= w <= 31) from ``src[s : s + 4w]`` into ``dst[d : d + 128]``."""
    mask = (U1 << w) - U1
    sh = U0
    # A running word position, not a function of the row: the branch on straddling values predicts well
    # and keeps every read inside the block.
    for o in range(d, d + U128, U4):
        _shr_store(src, s, sh, mask, dst, o)
        if sh + w > U32:  # these four values straddle two words of their lanes
            _shl_or_store(src, s + U4, U32 - sh, mask, dst, o)
        sh += w
        if sh >= U32:
            sh -= U32
            s += U4


@numba.njit(cache=True, nogil=True, inline="always")
def _pack_block(src: np.ndarray, w: np.uint64, dst: np.ndarray, d: np.uint64) -> None:
    """Pack ``src[:128]`` (uint32, each < 2**w, 1 <= w <= 31) into ``dst[d : d + 4w]``, which must be zero."""
    sh = U0
    for o in range(U0, U128, U4):
        _shl_or_store(src, o, sh, _FULL, dst, d)
        if sh + w > U32:
            _shr_store(src, o, U32 - sh, _FULL, dst, d + U4)
        sh += w
        if sh >= U32:
            sh -= U32
            d += U4


@numba.njit(cache=True, nogil=True, inline="always")
def _decode_block(
    src: np.ndarray, s: np.uint64, w: np.uint64, base: int, dst: np.ndarray, d: np.uint64
) -> None:
    """Decode one 128-value block of width 0..32 into ``dst[d : d + 128]``; ``base`` < 0 for plain."""
    if w == U0:
        for o in range(d, d + U128):
            dst[o] = 0
    elif w == U32:
        for i in range(U0, U128):
            dst[d + i] = src[s + i]
    else:
        _unpack_block(src, s, w, dst, d)
    if base >= 0:
        _prefix_block(dst, d, base)


@numba.njit(cache=True, nogil=True)
def _decode_kernel(words: np.ndarray, widths: np.ndarray, bases: int, packed: int, out: np.ndarray) -> None:
    """Decode validated blocks; ``bases`` is the word offset of the block bases, or < 0 for plain."""
    n = out.size
    s = np.uint64(packed)
    for b in range(n // BLOCK):
        w = np.uint64(widths[b])
        base = np.int64(words[np.uint64(bases + b)]) if bases >= 0 else -1
        _decode_block(words, s, w, base, out, np.uint64(b * BLOCK))
        s += U4 * w
    m, b = n % BLOCK, n // BLOCK
    if m:  # a short last block keeps only its first words: unpack it from a zero-padded copy
        w, nw = np.uint64(widths[b]), _block_words(m, np.uint64(widths[b]))
        src, tail = np.zeros(BLOCK, np.uint32), np.empty(BLOCK, np.uint32)
        src[:nw] = words[s : s + nw]
        _decode_block(src, U0, w, np.int64(words[np.uint64(bases + b)]) if bases >= 0 else -1, tail, U0)
        out[b * BLOCK :] = tail[:m]


@numba.njit(cache=True, nogil=True)
def _encode_kernel(values: np.ndarray, words: np.ndarray, widths: np.ndarray, bases: int, packed: int) -> int:
    """Pack ``values`` into ``words`` (zero from ``packed`` on); return the number of words used."""
    n = values.size
    block = np.zeros(BLOCK, np.uint32)
    s = np.uint64(packed)
    for b in range(widths.size):
        i0 = np.uint64(b * BLOCK)
        m = min(BLOCK, n - b * BLOCK)
        acc = U0
        prev = values[i0]
        if bases >= 0:
            words[np.uint64(bases + b)] = prev
        for i in range(U0, np.uint64(m)):
            v = values[i0 + i]
            block[i] = (v - prev) if bases >= 0 else v  # the uint32 store wraps modulo 2**32
            acc |= block[i]
            prev = v
        block[m:] = 0
        w = U0
        while acc >> w:
            w += U1
        widths[b] = w
        dst, d = (words, s) if m == BLOCK else (np.zeros(BLOCK, np.uint32), U0)
        if w == U32:
            dst[d : d + U128] = block
        elif w > U0:
            _pack_block(block, w, dst, d)
        if m < BLOCK:
            words[s : s + _block_words(m, w)] = dst[: _block_words(m, w)]
        s += _block_words(m, w)
    return np.int64(s)


@numba.njit(cache=True, nogil=True)
def _packed_words(widths: np.ndarray, n: int) -> int:
    """Words the packed blocks of ``n`` values take, or ``-1 - b`` if block ``b`` is wider than 32 bits."""
    total = U0
    for b in range(widths.size):
        if widths[b] > 32:
            return -1 - b
        total += _block_words(min(BLOCK, n - b * BLOCK), np.uint64(widths[b]))
    return np.int64(total)


def _sections(n: int, transform: int) -> tuple[int, int]:
    """Word offsets of the bases (-1 when plain) and of the packed blocks, for ``n`` values."""
    nb = -(-n // BLOCK)
    bases = HEADER_BYTES // 4 + -(-nb // 4)
    return (bases, bases + nb) if transform == TRANSFORM_DELTA else (-1, bases)


def max_encoded_size(n: int) -> int:
    """Upper bound, in bytes, of the encoded size of ``n`` values with either transform."""
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
    words = np.zeros(max_encoded_size(n) // 4, np.uint32)
    raw = words.view(np.uint8)
    _HEADER.pack_into(raw, 0, MAGIC, FORMAT_VERSION, transform, b"\0\0\0", n)
    bases, packed = _sections(n, transform)
    widths = raw[HEADER_BYTES : HEADER_BYTES + -(-n // BLOCK)]
    used = _encode_kernel(np.ascontiguousarray(values), words, widths, bases, packed)
    return raw[: 4 * used]


def validate(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Check an encoded buffer (1-D uint8) completely, without reading its packed blocks.

    Returns
    -------
    tuple
        ``(words, widths, n, bases, packed)``: the buffer as aligned uint32 words, the block widths (uint8),
        the number of values, and the word offsets of the block bases (-1 when plain) and packed blocks.

    Raises
    ------
    BitpackError
        If the buffer is truncated or too long, or has a bad magic, version, transform or block width.
    """
    if type(buf) is not np.ndarray or buf.ndim != 1 or (buf.dtype is not _U8 and buf.dtype != _U8):
        raise BitpackError(f"expected a 1-D uint8 array, got {getattr(buf, 'dtype', type(buf))}")
    size = buf.size
    if size < HEADER_BYTES:
        raise BitpackError(f"truncated buffer: {size} bytes, the header alone takes {HEADER_BYTES}")
    buf = np.ascontiguousarray(buf)
    magic, version, transform, reserved, n = _HEADER.unpack_from(buf)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise BitpackError(f"not a BP-128 buffer (magic {magic!r}, version {version})")
    if transform not in (TRANSFORM_NONE, TRANSFORM_DELTA) or reserved != b"\0\0\0":
        raise BitpackError(f"bad header: transform {transform}, reserved bytes {reserved!r}")
    bases, packed = _sections(n, transform)
    if size < 4 * packed:
        raise BitpackError(f"truncated buffer: {size} bytes, the header of {n} values takes {4 * packed}")
    widths = buf[HEADER_BYTES : HEADER_BYTES + -(-n // BLOCK)]
    used = _packed_words(widths, n)
    if used < 0:
        raise BitpackError(f"block {-1 - used} has bit width {widths[-1 - used]} > 32")
    if size != 4 * (packed + used):
        kind = "truncated" if size < 4 * (packed + used) else "trailing bytes in"
        raise BitpackError(
            f"{kind} buffer: {size} bytes, {n} values of these widths take {4 * (packed + used)}"
        )
    words = buf.view(np.uint32)
    if not words.flags.aligned:
        words = buf.copy().view(np.uint32)
    return words, widths, n, bases, packed


def decode_into(buf: np.ndarray, out: np.ndarray) -> None:
    """Decode ``buf`` into ``out``, a writeable 1-D contiguous uint32 array of exactly the encoded length.

    Raises
    ------
    BitpackError
        If ``buf`` is malformed (see ``validate``) or ``out`` does not fit.
    """
    words, widths, n, bases, packed = validate(buf)
    if type(out) is not np.ndarray or out.shape != (n,) or (out.dtype is not _U32 and out.dtype != _U32):
        raise BitpackError(f"out must be a 1-D uint32 array of {n} values")
    flags = out.flags
    if not (flags.c_contiguous and flags.writeable):
        raise BitpackError("out must be writeable and contiguous")
    _decode_kernel(words, widths, bases, packed, out)


def decode(buf: np.ndarray) -> np.ndarray:
    """Decode an encoded buffer into a new 1-D uint32 array.

    Raises
    ------
    BitpackError
        If ``buf`` is malformed (see ``validate``).
    """
    words, widths, n, bases, packed = validate(buf)
    out = np.empty(n, np.uint32)
    _decode_kernel(words, widths, bases, packed, out)
    return out
