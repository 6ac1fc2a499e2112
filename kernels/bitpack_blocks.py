"""The numba kernels of the BP-128 format; :mod:`kernels.bitpack` has the byte layout and the checked API.

Pack / unpack of one 128-value block in 4 lanes (one straight-line LLVM case per width), the per-block
transforms (prefix sum, frame of reference), exception patching, the encoder's choice of mode and width, and
the whole-buffer encode / decode / walk loops. None of it checks bounds: callers pass validated buffers.
All of it lives in this one file because numba's on-disk cache of a function is invalidated only by
changes to the file that defines it, not by changes to the helpers it inlines from other modules.
"""

from collections.abc import Callable, Iterator

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

BLOCK = 128
MODE_EXCEPTIONS = 64  # head bit: the block has exceptions (listed after all the packed blocks)
MAX_EXCEPTIONS = 64  # per block: the count fits 6 bits of the block's exception info byte
MODE_DELTA = 128  # head bit: the block holds deltas (prefix-summed from its base), else offsets from it
WIDTH_MASK = 63
# Kernels index with uint64 offsets and constants: numba gives signed indices a negative-index wraparound.
U0, U1, U2, U4, U8, U31, U32, U128 = (np.uint64(i) for i in (0, 1, 2, 4, 8, 31, 32, 128))
_FULL = np.uint64(0xFFFFFFFF)

_I32 = ir.IntType(32)
_V4 = ir.VectorType(_I32, 4)


def _vec(value: int) -> ir.Constant:
    return ir.Constant(_V4, [value] * 4)


def _ptr(context, builder: ir.IRBuilder, array_type, array, start: ir.Value, k: int) -> ir.Value:
    """Pointer to the 4-vector ``array[start + 4k : start + 4k + 4]``."""
    data = context.make_array(array_type)(context, builder, array).data
    index = builder.add(start, ir.Constant(start.type, 4 * k))
    return builder.bitcast(builder.gep(data, [index], inbounds=True), _V4.as_pointer())


def _cases(builder: ir.IRBuilder, w: ir.Value, widths: range) -> Iterator[int]:
    """Switch on the run-time width ``w``: yield each width with the builder in that width's case."""
    end = builder.function.append_basic_block()
    switch = builder.switch(builder.trunc(w, _I32), end)
    for width in widths:
        case = builder.function.append_basic_block()
        switch.add_case(ir.Constant(_I32, width), case)
        builder.position_at_end(case)
        yield width
        builder.branch(end)
    builder.position_at_end(end)


def _block_op(prefix: bool) -> Callable:
    """Intrinsic ``op(out, d, base)`` on ``out[d : d + 128]``, modulo 2**32: ``+= base`` (frame of reference),
    or with ``prefix`` ``= base +`` inclusive prefix sums (delta)."""

    def op(typingctx, out, d, base):
        def codegen(context, builder, sig, args):
            out, d, base = args
            zero = _vec(0)
            one = builder.insert_element(zero, builder.trunc(base, _I32), ir.Constant(_I32, 0))
            carry = builder.shuffle_vector(one, zero, _vec(0))
            # Scan each 4-vector in two shift-and-add steps; the carry stays in a vector register.
            for k in range(BLOCK // 4):
                ptr = _ptr(context, builder, sig.args[0], out, d, k)
                x = builder.load(ptr, align=4)
                if prefix:
                    x = builder.add(x, builder.shuffle_vector(x, zero, ir.Constant(_V4, [4, 0, 1, 2])))
                    x = builder.add(x, builder.shuffle_vector(x, zero, ir.Constant(_V4, [4, 4, 0, 1])))
                builder.store(builder.add(x, carry), ptr, align=4)
                if prefix:  # the carry chain is one add per vector: the broadcast is off it
                    carry = builder.add(carry, builder.shuffle_vector(x, zero, _vec(3)))
            return context.get_dummy_value()

        return types.void(out, d, base), codegen

    return intrinsic(op)


prefix_block = _block_op(prefix=True)
add_block = _block_op(prefix=False)


@intrinsic
def bit_length(typingctx, x):
    """Bits needed for the uint32 ``x`` (0 for 0), as uint64."""

    def codegen(context, builder, sig, args):
        v = args[0] if args[0].type.width == 32 else builder.trunc(args[0], _I32)
        n = builder.sub(ir.Constant(_I32, 32), builder.ctlz(v, ir.Constant(ir.IntType(1), 0)))
        return builder.zext(n, ir.IntType(64))

    return types.uint64(x), codegen


@intrinsic
def unpack_block(typingctx, src, s, w, dst, d):
    """``dst[d : d + 128]`` = the 128 ``w``-bit values (0 <= w <= 32) packed at ``src[s : s + 4w]``.

    One straight-line case per width: the ``w`` source vectors are loaded first (no store to ``dst`` can
    alias them), then each group of four values takes one or two shifts, a mask and a store.
    """

    def codegen(context, builder, sig, args):
        src, s, w, dst, d = args
        for width in _cases(builder, w, range(33)):
            words = [
                builder.load(_ptr(context, builder, sig.args[0], src, s, i), align=4) for i in range(width)
            ]
            for k in range(BLOCK // 4):
                i, sh = divmod(k * width, 32)
                x = _vec(0) if width == 0 else builder.lshr(words[i], _vec(sh)) if sh else words[i]
                if sh + width > 32:  # the four values straddle two words of their lanes
                    x = builder.or_(x, builder.shl(words[i + 1], _vec(32 - sh)))
                if 0 < width and sh + width != 32:
                    x = builder.and_(x, _vec((1 << width) - 1))
                builder.store(x, _ptr(context, builder, sig.args[3], dst, d, k), align=4)
        return context.get_dummy_value()

    return types.void(src, s, w, dst, d), codegen


@intrinsic
def pack_block(typingctx, src, w, dst, d):
    """``dst[d : d + 4w]`` = ``src[:128]`` (uint32, each < 2**w, 0 <= w <= 32) packed at width ``w``."""

    def codegen(context, builder, sig, args):
        src, w, dst, d = args
        start = ir.Constant(d.type, 0)
        for width in _cases(builder, w, range(1, 33)):
            words = [None] * width
            for k in range(BLOCK // 4):
                x = builder.load(_ptr(context, builder, sig.args[0], src, start, k), align=4)
                i, sh = divmod(k * width, 32)
                part = builder.shl(x, _vec(sh)) if sh else x
                words[i] = part if words[i] is None else builder.or_(words[i], part)
                if sh + width > 32:
                    words[i + 1] = builder.lshr(x, _vec(32 - sh))
            for i, x in enumerate(words):
                builder.store(x, _ptr(context, builder, sig.args[2], dst, d, i), align=4)
        return context.get_dummy_value()

    return types.void(src, w, dst, d), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def block_words(m: int, w: np.uint64) -> np.uint64:
    """Words a block of ``m`` values (1..128) of width ``w`` takes: 4 lanes of ceil(m/4) values."""
    return U4 * ((np.uint64((m + 3) // 4) * w + U31) // U32)


@numba.njit(cache=True, nogil=True, inline="always")
def list_bytes(info: np.uint64) -> np.uint64:
    """Bytes of the exception list that info byte ``info`` describes: ``c`` positions and ``c`` high parts
    of ``s`` bytes, where ``info = (c - 1) | (s - 1) << 6``."""
    return ((info & np.uint64(63)) + U1) * ((info >> np.uint64(6)) + U2)


@numba.njit(cache=True, nogil=True, inline="always")
def patch(raw, info: np.uint64, p: np.uint64, w: np.uint64, delta: bool, dst, d: np.uint64) -> None:
    """Apply the exception list at byte ``raw[p]`` (described by ``info``) to the unpacked block
    ``dst[d : d + 128]``: entry ``j`` sets ``x = high_j << w | dst[d + pos_j]`` (the slot holds ``x``'s low
    bits); a delta block stores deltas zigzag-coded. Positions are masked to 0..127: a corrupt list cannot
    write outside its block."""
    c, size = (info & np.uint64(63)) + U1, (info >> np.uint64(6)) + U1
    q = p + c
    for j in range(U0, c):
        o = d + (np.uint64(raw[p + j]) & np.uint64(BLOCK - 1))
        if size == U1:  # the common case: one byte of high bits
            hi = np.uint64(raw[q + j])
        else:
            hi = U0
            for k in range(U0, size):
                hi |= np.uint64(raw[q + size * j + k]) << (U8 * k)
        x = ((hi << w) | np.uint64(dst[o])) & _FULL
        if delta:
            x = (x >> U1) ^ ((U0 - (x & U1)) & _FULL)
        dst[o] = x


@numba.njit(cache=True, nogil=True, inline="always")
def choose_width(slots: np.ndarray, pay: np.ndarray, m: int) -> tuple:
    """Cheapest ``(cost, width, exceptions)`` for a block: values ``slots[:m]`` wider than the width become
    exceptions with payload ``pay``. The cost is in bytes; ties keep the wider block (fewer exceptions).

    Only widths that some value needs exactly are candidates (below such a width the exceptions are the
    same and the block is narrower), visited from the widest down, one vectorizable pass each.
    """
    top, wide = U0, U0
    for i in range(m):
        wide |= np.uint64(slots[i])
        top = max(top, np.uint64(pay[i]))
    w = bit_length(wide)
    best, best_w, best_c = U4 * block_words(m, w), w, U0
    while w:
        limit = np.uint32(U1 << (w - U1))  # values of w bits or more are exceptions below width w
        c, wide = 0, np.uint32(0)
        for i in range(m):
            c += slots[i] >= limit
            wide |= slots[i] if slots[i] < limit else np.uint32(0)
        c = np.uint64(c)
        if c > MAX_EXCEPTIONS or U1 + U2 * c >= best:  # so at any narrower width too
            break
        w = bit_length(wide)
        size = max((bit_length(top >> w) + np.uint64(7)) // U8, U1)  # bounds the high parts' bytes
        cost = U4 * block_words(m, w) + U1 + c * (U1 + size)
        if cost < best:
            best, best_w, best_c = cost, w, c
    return best, best_w, best_c


@numba.njit(cache=True, nogil=True, inline="always")
def emit_block(
    slots, pay, m: int, w: np.uint64, c: np.uint64, block, words, s: np.uint64, exc, e: np.uint64
) -> tuple:
    """Pack a block of width ``w`` at word ``s`` of ``words`` and its ``c`` exceptions at byte ``e`` of
    ``exc``. Returns ``(words written, bytes written, info byte)``."""
    mask = (U1 << w) - U1
    limit = np.uint32(mask)
    for i in range(m):  # an exception's slot keeps the low bits of its payload
        block[i] = (slots[i] if slots[i] <= limit else pay[i]) & mask
    block[m:] = 0
    nw = block_words(m, w)
    if m == BLOCK:
        pack_block(block, w, words, s)
    else:  # a short last block keeps only its first words
        tmp = np.empty(BLOCK, np.uint32)
        pack_block(block, w, tmp, U0)
        words[s : s + nw] = tmp[:nw]
    if c == U0:
        return nw, U0, U0
    pos, hi_max = e, U0  # the positions, then the high parts
    for i in range(m):
        if slots[i] > limit:
            exc[pos] = i
            pos += U1
            hi_max = max(hi_max, np.uint64(pay[i]) >> w)
    size = max((bit_length(hi_max) + np.uint64(7)) // U8, U1)
    for j in range(U0, c):
        hi = np.uint64(pay[exc[e + j]]) >> w
        for k in range(U0, size):
            exc[pos + size * j + k] = (hi >> (U8 * k)) & np.uint64(255)
    return nw, c * (U1 + size), (c - U1) | (size - U1) << np.uint64(6)


@numba.njit(cache=True, nogil=True, inline="always")
def decode_block(src, s, raw, info, e, h, base, dst, d) -> None:
    """Decode the block of head ``h`` (packed at ``src[s:]``; its exception list, if any, at byte ``e`` of
    ``raw``, described by ``info``) into ``dst[d : d + 128]``; ``base`` < 0 when there are no bases."""
    w = np.uint64(h & WIDTH_MASK)
    unpack_block(src, s, w, dst, d)
    if h & MODE_EXCEPTIONS:
        patch(raw, info, e, w, (h & MODE_DELTA) != 0, dst, d)
    if base >= 0:
        if h & MODE_DELTA:
            prefix_block(dst, d, base)
        else:
            add_block(dst, d, base)


@numba.njit(cache=True, nogil=True, inline="always")
def packed_words(heads: np.ndarray, n: int) -> np.uint64:
    """Words the packed blocks of ``n`` values take (heads' widths must be at most 32)."""
    total = U0
    for b in range(n // BLOCK):
        total += U4 * np.uint64(heads[b] & WIDTH_MASK)
    if n % BLOCK:
        total += block_words(n % BLOCK, np.uint64(heads[n // BLOCK] & WIDTH_MASK))
    return total


@numba.njit(cache=True, nogil=True, inline="always")
def flagged(heads: np.ndarray) -> np.uint64:
    """Blocks with exceptions."""
    f = 0
    for b in range(heads.size):
        f += (heads[b] & MODE_EXCEPTIONS) != 0
    return np.uint64(f)


@numba.njit(cache=True, nogil=True)
def decode_kernel(words: np.ndarray, heads: np.ndarray, bases: int, packed: int, out: np.ndarray) -> None:
    """Decode validated blocks; ``bases`` is the word offset of the block bases, or < 0 for plain."""
    n = out.size
    raw = words.view(np.uint8)
    s = np.uint64(packed)
    k = U4 * (s + packed_words(heads, n))  # info bytes of the flagged blocks, then their lists
    e = k + flagged(heads)
    for b in range(n // BLOCK):
        h = heads[b]
        base = np.int64(words[np.uint64(bases + b)]) if bases >= 0 else -1
        info = np.uint64(raw[k]) if h & MODE_EXCEPTIONS else U0
        decode_block(words, s, raw, info, e, h, base, out, np.uint64(b * BLOCK))
        s += U4 * np.uint64(h & WIDTH_MASK)
        if h & MODE_EXCEPTIONS:
            k, e = k + U1, e + list_bytes(info)
    m, b = n % BLOCK, n // BLOCK
    if m:  # a short last block keeps only its first words: unpack it from a zero-padded copy
        h = heads[b]
        nw = block_words(m, np.uint64(h & WIDTH_MASK))
        src, tail = np.zeros(BLOCK, np.uint32), np.empty(BLOCK, np.uint32)
        src[:nw] = words[s : s + nw]
        base = np.int64(words[np.uint64(bases + b)]) if bases >= 0 else -1
        info = np.uint64(raw[k]) if h & MODE_EXCEPTIONS else U0
        decode_block(src, U0, raw, info, e, h, base, tail, U0)
        out[b * BLOCK :] = tail[:m]


@numba.njit(cache=True, nogil=True)
def encode_kernel(values: np.ndarray, words: np.ndarray, heads: np.ndarray, bases: int, packed: int) -> int:
    """Pack ``values`` into ``words`` (zero from ``packed`` on); return the number of words used."""
    n = values.size
    block = np.zeros(BLOCK, np.uint32)
    dl, dz, fr = np.zeros(BLOCK, np.uint32), np.zeros(BLOCK, np.uint32), np.zeros(BLOCK, np.uint32)
    exc = np.empty(U4 * np.uint64(words.size), np.uint8)  # the exception lists, appended at the end
    infos = np.empty(heads.size, np.uint8)
    s, e, f = np.uint64(packed), U0, 0
    for b in range(heads.size):
        i0 = np.uint64(b * BLOCK)
        m = min(BLOCK, n - b * BLOCK)
        x = values[i0 : i0 + np.uint64(m)]
        if bases < 0:
            w, c = choose_width(x, x, m)[1:]
            nw, ne, infos[f] = emit_block(x, x, m, w, c, block, words, s, exc, e)
            s, e, f = s + nw, e + ne, f + (c > 0)
            heads[b] = w | (MODE_EXCEPTIONS if c else 0)
            continue
        dl[0], lo = 0, x[0]
        for i in range(1, m):
            dl[i] = x[i] - x[i - 1]  # the uint32 store wraps modulo 2**32
        for i in range(m):
            d = np.uint64(dl[i])
            dz[i] = (d << U1) ^ (U0 - (d >> np.uint64(31)))  # zigzag of d as an int32 (stored mod 2**32)
            lo = min(lo, x[i])
        cost, w, c = choose_width(dl, dz, m)
        mode, slots, pay, base = MODE_DELTA, dl, dz, x[0]
        if 16 * c > np.uint64(m):  # more than 8 exceptions per 128 (short runs): try offsets from the minimum
            for i in range(m):
                fr[i] = x[i] - lo
            cost_f, w_f, c_f = choose_width(fr, fr, m)
            if cost_f < cost:
                mode, slots, pay, base, w, c = 0, fr, fr, lo, w_f, c_f
        words[np.uint64(bases + b)] = base
        nw, ne, infos[f] = emit_block(slots, pay, m, w, c, block, words, s, exc, e)
        s, e, f = s + nw, e + ne, f + (c > 0)
        heads[b] = w | mode | (MODE_EXCEPTIONS if c else 0)
    raw, p = words.view(np.uint8), U4 * s  # after the packed blocks: info bytes, lists, zero padding
    raw[p : p + f] = infos[:f]
    raw[p + f : p + f + e] = exc[:e]
    return np.int64(s + (np.uint64(f) + e + np.uint64(3)) // U4)


@numba.njit(cache=True, nogil=True)
def walk(raw: np.ndarray, n: int, packed: int, flags: int) -> tuple:
    """Words the blocks of ``n`` values take after word ``packed``, exceptions included, reading only the
    heads (from byte 16 of ``raw``) and the info bytes of the exception lists; ``flags``: the head flags
    allowed. Returns ``(words, 0, 0)``, or ``(-1, code, block)`` for the first block whose width is over 32
    (code 1) or which has a flag not allowed (code 2)."""
    nb = (n + BLOCK - 1) // BLOCK
    heads = raw[16 : 16 + nb]
    bad = np.uint64(~(flags | WIDTH_MASK) & 255)
    for b in range(nb):
        h = np.uint64(heads[b])
        if h & np.uint64(WIDTH_MASK) > U32 or h & bad:
            return -1, 1 if h & np.uint64(WIDTH_MASK) > U32 else 2, b
    k = U4 * (np.uint64(packed) + packed_words(heads, n))
    e = k + flagged(heads)
    if e <= np.uint64(raw.size):  # else the buffer is too short: the caller rejects it
        for i in range(k, e):
            e += list_bytes(np.uint64(raw[i]))
    return np.int64((e + np.uint64(3)) // U4) - packed, 0, 0


@numba.njit(cache=True, nogil=True)
def encode_chunks_kernel(
    values: np.ndarray, header: np.ndarray, bases: int, packed: int, n_words: int, trailer: int, out, ends
) -> None:
    """Encode ``values`` as ``ends.size`` chunks of equal length, each a whole buffer (``header``: its
    16 bytes; ``n_words``: its maximal size in words) followed by ``trailer`` untouched bytes, back to back
    in ``out``; ``ends[i]`` is where chunk ``i``'s trailer ends."""
    chunk = values.size // ends.size
    heads_end = 16 + (chunk + BLOCK - 1) // BLOCK
    pos = 0
    for i in range(ends.size):
        words = np.zeros(n_words, np.uint32)
        raw = words.view(np.uint8)
        raw[:16] = header
        size = 4 * encode_kernel(values[i * chunk : (i + 1) * chunk], words, raw[16:heads_end], bases, packed)
        out[pos : pos + size] = raw[:size]
        pos += size + trailer
        ends[i] = pos


@numba.njit(cache=True, nogil=True)
def decode_chunks_kernel(buf: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, header, out) -> tuple:
    """Check and decode the buffers ``buf[offsets[i] : offsets[i] + sizes[i]]`` of ``out.size //
    offsets.size`` values each into consecutive slices of ``out`` (``header``: the magic bytes and the
    newest version). Returns ``(0, 0)``, or ``(code, i)`` for the first malformed buffer ``i``: 1 a bad
    header, 2 a bad block head, 3 a wrong size; the checks are those of ``kernels.bitpack.validate``."""
    m = out.size // offsets.size
    nb = (m + BLOCK - 1) // BLOCK
    first = 4 + (nb + 3) // 4  # words before the bases (delta) or the packed blocks (plain)
    for i in range(offsets.size):
        size = sizes[i]
        if size < 16 or size % 4:
            return 3, i
        words = np.empty(size // 4, np.uint32)
        raw = words.view(np.uint8)
        raw[:] = buf[offsets[i] : offsets[i] + size]
        n = words[2] | np.uint64(words[3]) << U32
        version, delta = raw[3], raw[4] == 1
        if raw[0] != header[0] or raw[1] != header[1] or raw[2] != header[2] or not 1 <= version <= header[3]:
            return 1, i
        if raw[4] > 1 or raw[5] or raw[6] or raw[7] or n != m:
            return 1, i
        bases, packed = (first, first + nb) if delta else (-1, first)
        if size < 4 * packed:
            return 3, i
        flags = (MODE_EXCEPTIONS | (MODE_DELTA if delta else 0)) if version > 1 else 0
        used, code, _ = walk(raw, m, packed, flags)
        if code:
            return 2, i
        if size != 4 * (packed + used):
            return 3, i
        heads = raw[16 : 16 + nb]
        if version == 1 and delta:
            heads = heads | np.uint8(MODE_DELTA)
        decode_kernel(words, heads, bases, packed, out[i * m : (i + 1) * m])
    return 0, 0
