"""The numba kernels of the BP-128 format; :mod:`kernels.bitpack` has the byte layout and the checked API.

Pack / unpack of one 128-value block in 4 lanes (one straight-line LLVM case per width), the per-block
transforms (prefix sum, frame of reference), exception patching, the encoder's choice of mode and width, and
the whole-buffer encode / decode / walk loops. The encoder works on whole blocks as single LLVM vectors
(sums, counts and bit masks of 128 values; a short last block is padded first): one pass per block gives
its OR, its payloads' maximum and a copy capped at 255 as bytes, on which each candidate width of 8 bits or
less is counted (and the exceptions found) in one short pass; it writes every byte of its output (no
zeroed buffer needed) and keeps its scratch across the chunks of one call; its block loop is inlined into
each kernel, uses views without reference counts and prefetches its input a few blocks ahead. None of it
checks bounds: callers pass validated buffers.
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
# The encoder asks for its input this many values ahead, every cache line of it: this machine's hardware
# prefetch did not keep up with a block's work, and a streamed input ran at 0.6 G ints/s where one in cache
# ran at 1.6 (4 KB ahead: 1.5; 2 and 8 KB measured the same).
PREFETCH_VALUES = 1_024
CACHE_LINE = 64
# Kernels index with uint64 offsets and constants: numba gives signed indices a negative-index wraparound.
U0, U1, U2, U4, U8, U31, U32 = (np.uint64(i) for i in (0, 1, 2, 4, 8, 31, 32))
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
def unmanaged(typingctx, array):
    """``array`` as a view that numba does not reference-count (its meminfo and parent are null), valid
    while ``array`` is: in the encoder's block loop every slice and inlined argument of a managed array
    costs an atomic increment and decrement, which these views fold away."""

    def codegen(context, builder, sig, args):
        view, model = args[0], context.data_model_manager[sig.args[0]]
        for field in ("meminfo", "parent"):
            i = model.get_field_position(field)
            view = builder.insert_value(view, ir.Constant(view.type.elements[i], None), i)
        return view

    return array(array), codegen


@intrinsic
def keep_alive(typingctx, owner):
    """Nothing but a use of ``owner``: numba keeps a variable (so the arrays it references) alive up to its
    last use, and :func:`unmanaged` views of those arrays need them until then."""

    def codegen(context, builder, sig, args):
        return context.get_dummy_value()

    return types.void(owner), codegen


_I64, _I128 = ir.IntType(64), ir.IntType(128)
_B32 = ir.VectorType(_I32, BLOCK)  # a whole block of uint32 values


def _block_ptr(context, builder: ir.IRBuilder, array_type, array) -> ir.Value:
    """``array[:128]`` as a pointer to one vector (the array's first element starts the block)."""
    data = context.make_array(array_type)(context, builder, array).data
    vector = ir.VectorType(context.get_data_type(array_type.dtype), BLOCK)
    return builder.bitcast(data, vector.as_pointer())


def _load_block(context, builder: ir.IRBuilder, array_type, array) -> ir.Value:
    return builder.load(_block_ptr(context, builder, array_type, array), align=1)


def _splat(builder: ir.IRBuilder, value: ir.Value, vector: ir.VectorType = _B32) -> ir.Value:
    """A vector of the integer scalar ``value``, truncated to the vector's element type."""
    value = builder.trunc(value, vector.element) if value.type.width > vector.element.width else value
    one = builder.insert_element(ir.Constant(vector, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vector, None), ir.Constant(_B32, [0] * BLOCK))


def _call(builder: ir.IRBuilder, name: str, ret: ir.Type, *args: ir.Value) -> ir.Value:
    """Call the LLVM intrinsic ``name`` (declared on first use)."""
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name=name)
    return builder.call(fn, args)


def _reduce(builder: ir.IRBuilder, op: str, vector: ir.Value) -> ir.Value:
    """``llvm.vector.reduce.<op>`` of a block vector, zero-extended to i64."""
    element = vector.type.element
    value = _call(builder, f"llvm.vector.reduce.{op}.v{BLOCK}i{element.width}", element, vector)
    return builder.zext(value, _I64) if element.width < 64 else value


@intrinsic
def count_from(typingctx, slots, limit):
    """``c | wide << 8`` as uint64: ``c`` values of ``slots[:128]`` (any unsigned type) are at least
    ``limit``, and ``wide`` is the OR of the others."""

    def codegen(context, builder, sig, args):
        x = _load_block(context, builder, sig.args[0], args[0])
        at_least = builder.icmp_unsigned(">=", x, _splat(builder, args[1], x.type))
        wide = _reduce(builder, "or", builder.select(at_least, ir.Constant(x.type, [0] * BLOCK), x))
        count = builder.trunc(
            _call(builder, "llvm.ctpop.i128", _I128, builder.bitcast(at_least, _I128)), _I64
        )
        return builder.or_(count, builder.shl(wide, ir.Constant(_I64, 8)))

    return types.uint64(slots, limit), codegen


_B8 = ir.VectorType(ir.IntType(8), BLOCK)


@intrinsic
def small_above(typingctx, small, limit, bits):
    """``bits[0]``, ``bits[1]`` (uint64): bit ``i`` of ``bits[h]`` is set where ``small[64h + i]`` (uint8) is
    at least ``limit`` (a power of two)."""

    def codegen(context, builder, sig, args):
        x = _load_block(context, builder, sig.args[0], args[0])
        high = builder.sub(ir.Constant(ir.IntType(8), 0), args[1])  # the bits at and above the limit
        at_least = builder.icmp_unsigned(
            "!=", builder.and_(x, _splat(builder, high, _B8)), ir.Constant(_B8, [0] * BLOCK)
        )
        _store_bits(context, builder, at_least, sig.args[2], args[2])
        return context.get_dummy_value()

    return types.void(small, limit, bits), codegen


@intrinsic
def count_small(typingctx, small, limit):
    """Values of ``small[:128]`` (uint8) that are at least ``limit`` (a power of two), as uint64."""

    def codegen(context, builder, sig, args):
        x = _load_block(context, builder, sig.args[0], args[0])
        high = builder.sub(ir.Constant(ir.IntType(8), 0), args[1])  # the bits at and above the limit
        at_least = builder.icmp_unsigned(
            "!=", builder.and_(x, _splat(builder, high, _B8)), ir.Constant(_B8, [0] * BLOCK)
        )
        return builder.trunc(_call(builder, "llvm.ctpop.i128", _I128, builder.bitcast(at_least, _I128)), _I64)

    return types.uint64(small, limit), codegen


def _capped_bytes(context, builder: ir.IRBuilder, x: ir.Value, array_type, small) -> None:
    """Store the block ``x`` capped at 255 as ``small[:128]`` (uint8)."""
    capped = _call(builder, f"llvm.umin.v{BLOCK}i32", _B32, x, _vec_block(255))
    builder.store(builder.trunc(capped, _B8), _block_ptr(context, builder, array_type, small), align=1)


@intrinsic
def narrow_or_max(typingctx, slots, pay, small):
    """``OR(slots[:128]) | max(pay[:128]) << 32`` as uint64 (blocks of uint32), and ``small[:128]`` (uint8)
    = ``slots`` capped at 255."""

    def codegen(context, builder, sig, args):
        x = _load_block(context, builder, sig.args[0], args[0])
        wide = _reduce(builder, "or", x)
        top = _reduce(builder, "umax", _load_block(context, builder, sig.args[1], args[1]))
        _capped_bytes(context, builder, x, sig.args[2], args[2])
        return builder.or_(wide, builder.shl(top, ir.Constant(_I64, 32)))

    return types.uint64(slots, pay, small), codegen


@intrinsic
def block_deltas(typingctx, x, prev, dl, dz, small):
    """``dl[:128]`` = ``x[i] - prev[i]`` modulo 2**32 (``prev``: the values one position earlier), except
    ``dl[0]`` = 0 (a delta block's first slot holds 0: its value is the base), ``dz`` = their zigzag codes
    and ``small`` (uint8) = ``dl`` capped at 255; returns ``OR(dl) | max(dz) << 32`` as uint64."""

    def codegen(context, builder, sig, args):
        v = _load_block(context, builder, sig.args[0], args[0])
        d = builder.sub(v, _load_block(context, builder, sig.args[1], args[1]))
        d = builder.insert_element(d, ir.Constant(_I32, 0), ir.Constant(_I32, 0))
        builder.store(d, _block_ptr(context, builder, sig.args[2], args[2]), align=4)
        z = builder.xor(builder.shl(d, _vec_block(1)), builder.ashr(d, _vec_block(31)))
        builder.store(z, _block_ptr(context, builder, sig.args[3], args[3]), align=4)
        _capped_bytes(context, builder, d, sig.args[4], args[4])
        top = _reduce(builder, "umax", z)
        return builder.or_(_reduce(builder, "or", d), builder.shl(top, ir.Constant(_I64, 32)))

    return types.uint64(x, prev, dl, dz, small), codegen


@intrinsic
def pack_block(typingctx, src, w, dst, d):
    """``dst[d : d + 4w]`` = ``src[:128]`` AND ``2**w - 1`` (uint32, 0 <= w <= 32) packed at width ``w``.

    One straight-line case per width on the block in registers: each group of four values takes one or two
    shifts and ORs into the words of its lanes, which are stored once.
    """

    def codegen(context, builder, sig, args):
        src, w, dst, d = args
        one = ir.Constant(_I64, 1)
        mask = _splat(builder, builder.sub(builder.shl(one, w), one))
        x = builder.and_(_load_block(context, builder, sig.args[0], src), mask)
        for width in _cases(builder, w, range(1, 33)):
            words = [None] * width
            for k in range(BLOCK // 4):
                v = builder.shuffle_vector(x, x, ir.Constant(_V4, list(range(4 * k, 4 * k + 4))))
                i, sh = divmod(k * width, 32)
                part = builder.shl(v, _vec(sh)) if sh else v
                words[i] = part if words[i] is None else builder.or_(words[i], part)
                if sh + width > 32:
                    words[i + 1] = builder.lshr(v, _vec(32 - sh))
            for i, v in enumerate(words):
                builder.store(v, _ptr(context, builder, sig.args[2], dst, d, i), align=4)
        return context.get_dummy_value()

    return types.void(src, w, dst, d), codegen


def _store_bits(context, builder: ir.IRBuilder, flags: ir.Value, array_type, bits) -> None:
    """Store 128 flags as ``bits[0]``, ``bits[1]`` (uint64): bit ``i`` of ``bits[h]`` is flag ``64h + i``."""
    data = context.make_array(array_type)(context, builder, bits).data
    builder.store(builder.bitcast(flags, _I128), builder.bitcast(data, _I128.as_pointer()), align=8)


@intrinsic
def above_bits(typingctx, slots, mask, bits):
    """``bits[0]``, ``bits[1]`` (uint64): bit ``i`` of ``bits[h]`` is set where ``slots[64h + i] > mask``."""

    def codegen(context, builder, sig, args):
        x = _load_block(context, builder, sig.args[0], args[0])
        _store_bits(
            context,
            builder,
            builder.icmp_unsigned(">", x, _splat(builder, args[1], x.type)),
            sig.args[2],
            args[2],
        )
        return context.get_dummy_value()

    return types.void(slots, mask, bits), codegen


def _vec_block(value: int) -> ir.Constant:
    return ir.Constant(_B32, [value] * BLOCK)


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


@intrinsic
def prefetch(typingctx, array, index):
    """Ask for the cache line of ``array[index]`` to be loaded for reading (a hint: it never faults, so
    ``index`` may lie past the array's end)."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        address = builder.gep(data, [args[1]])
        # read, keep in every cache level, data
        hints = [ir.Constant(_I32, i) for i in (0, 3, 1)]
        _call(builder, "llvm.prefetch.p0", ir.VoidType(), address, *hints)
        return context.get_dummy_value()

    return types.void(array, index), codegen


@intrinsic
def lowest_bit(typingctx, x):
    """Index of the lowest set bit of the uint64 ``x`` (64 for 0), as uint64."""

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.uint64(types.uint64), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def choose_width(slots: np.ndarray, m: int, small: np.ndarray, summary: np.uint64) -> tuple:
    """Cheapest ``(cost, width, exceptions, high bytes)`` for the block ``slots[:128]`` of ``m`` values (zero
    after them), from its ``summary`` (``OR(slots) | max(pay) << 32``) and ``small`` (the slots capped at
    255, as bytes): values wider than the width become exceptions whose payloads ``pay`` keep their bits
    above the width in ``high bytes`` each. The cost is in bytes; ties keep the wider block (fewer
    exceptions).

    Only widths that some value needs exactly are candidates (below such a width the exceptions are the
    same and the block is narrower), visited from the widest down. Above 8 bits each candidate takes one
    vector pass over the block; at 8 bits and below one short pass over the bytes per width.
    """
    w, top = bit_length(np.uint32(summary & _FULL)), summary >> U32
    best, best_w, best_c, best_size = U4 * block_words(m, w), w, U0, U1
    ahead = U0  # values of at least w bits, once counted on the bytes (0: not yet)
    while w:
        if w > U8:
            counted = count_from(slots, np.uint32(U1 << (w - U1)))  # values of w bits or more
            c = counted & np.uint64(255)
            if c > MAX_EXCEPTIONS or U1 + U2 * c >= best:  # so at any narrower width too
                break
            w = bit_length(np.uint32(counted >> U8))
        else:
            c = ahead if ahead else count_small(small, np.uint8(U1 << (w - U1)))
            if c > MAX_EXCEPTIONS or U1 + U2 * c >= best:
                break
            w -= U1  # down to the widest width some value needs: where the count grows
            ahead = U0
            while w:
                ahead = count_small(small, np.uint8(U1 << (w - U1)))
                if ahead != c:
                    break
                w -= U1
        size = max((bit_length(top >> w) + np.uint64(7)) // U8, U1)  # the high parts' bytes
        cost = U4 * block_words(m, w) + U1 + c * (U1 + size)
        if cost < best:
            best, best_w, best_c, best_size = cost, w, c, size
    return best, best_w, best_c, best_size


@numba.njit(cache=True, nogil=True, inline="always")
def emit_block(
    slots,
    pay,
    m: int,
    w: np.uint64,
    c: np.uint64,
    size: np.uint64,
    small,
    above,
    block,
    words,
    s: np.uint64,
    exc,
    e,
    delta: bool,
) -> tuple:
    """Pack the block ``slots[:128]`` (zero after its ``m`` values; ``small``: capped at 255 as bytes) at
    width ``w`` at word ``s`` of ``words``, and its ``c`` exceptions (slots wider than ``w``; ``pay``: their
    payloads, whose bits above ``w`` take ``size`` bytes) at byte ``e`` of ``exc`` (scratch: ``above``, two
    uint64 for the exceptions' bit mask; ``block``, 256 words). An exception's slot takes its payload, of
    which the packed block keeps the low bits. Returns ``(words written, bytes written, info byte)``.

    ``size`` is exact: a plain or frame-of-reference block's widest value is an exception, and a delta
    block's slots within the width are non-negative deltas, whose zigzag codes keep at most one bit above
    it."""
    nw = block_words(m, w)
    ne, info = U0, U0
    if c:
        if w < U8:
            small_above(small, np.uint8(U1 << w), above)
        else:
            above_bits(slots, np.uint32((U1 << w) - U1), above)
        lo, hi = above[0], above[1]
        q = e + c  # the positions (from the bit mask of the exceptions), then the high parts
        for j in range(U0, c):
            upper = lo == U0
            i = lowest_bit(hi if upper else lo) + (np.uint64(64) if upper else U0)
            hi = hi & (hi - U1) if upper else hi
            lo &= lo - U1
            exc[e + j] = i
            payload = pay[i]
            if delta:  # (else the payload is the slot)
                slots[i] = payload
            high = np.uint64(payload) >> w
            if size == U1:
                exc[q + j] = high
            else:
                for k in range(U0, size):
                    exc[q + size * j + k] = (high >> (U8 * k)) & np.uint64(255)
        ne, info = c * (U1 + size), (c - U1) | (size - U1) << np.uint64(6)
    if m == BLOCK:
        pack_block(slots, w, words, s)
    else:  # a short last block keeps only its first words
        pack_block(slots, w, block, U0)
        words[s : s + nw] = block[:nw]
    return nw, ne, info


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


@numba.njit(cache=True, nogil=True, inline="always")
def encode_body(values: np.ndarray, words: np.ndarray, w0: int, bases: int, packed: int, scratch) -> int:
    """Pack ``values`` into the buffer that starts at word ``w0`` of ``words`` (its 16 header bytes are the
    caller's; ``bases`` and ``packed``: word offsets within the buffer, ``bases`` < 0 when plain); every
    byte after the header is written, pads included. ``scratch``: :func:`encode_scratch` of at least
    ``values.size`` values. Returns the number of words the buffer takes.

    The loop works on :func:`unmanaged` views of the arrays (no atomic reference counts per block; ``values``
    and ``words`` are the caller's arguments or views of them, which outlive the call), and the function is
    inlined into its callers: a separately compiled copy, linked into a caller's module, is optimized a
    second time there and runs about 1.5 times slower."""
    block, dl, dz, fr, pad, exc, infos, small, above = scratch
    block, dl, dz, fr, pad = unmanaged(block), unmanaged(dl), unmanaged(dz), unmanaged(fr), unmanaged(pad)
    exc, infos, small, above = unmanaged(exc), unmanaged(infos), unmanaged(small), unmanaged(above)
    values, words = unmanaged(values), unmanaged(words)
    n = values.size
    nb = (n + BLOCK - 1) // BLOCK
    raw = words.view(np.uint8)
    start = np.uint64(w0)
    h0 = U4 * start + np.uint64(16)  # the heads
    raw[h0 + np.uint64(nb) : U4 * (start + np.uint64(packed if bases < 0 else bases))] = 0
    s, e, f = start + np.uint64(packed), U0, 0
    for b in range(nb):
        i0 = np.uint64(b * BLOCK)
        for line in range(BLOCK * 4 // CACHE_LINE):
            prefetch(values, i0 + np.uint64(PREFETCH_VALUES + line * CACHE_LINE // 4))
        m = min(BLOCK, n - b * BLOCK)
        x, prev = values[i0:], values[i0 - U1 :] if b else pad
        if m < BLOCK or b == 0:  # a padded copy: the first block's previous values, the short last block
            pad[0] = values[i0 - U1] if b else values[0]  # (plain: zeros after it; delta: its last value)
            pad[1 : m + 1] = values[i0 : i0 + np.uint64(m)]
            pad[m + 1 : BLOCK + 1] = 0 if bases < 0 else values[i0 + np.uint64(m - 1)]
            x, prev = pad[1:], pad
        if bases < 0:
            cost, w, c, size = choose_width(x, m, small, narrow_or_max(x, x, small))
            nw, ne, infos[f] = emit_block(x, x, m, w, c, size, small, above, block, words, s, exc, e, False)
            s, e, f = s + nw, e + ne, f + (c > 0)
            raw[h0 + np.uint64(b)] = w | (MODE_EXCEPTIONS if c else 0)
            continue
        cost, w, c, size = choose_width(dl, m, small, block_deltas(x, prev, dl, dz, small))
        mode, slots, pay, base = MODE_DELTA, dl, dz, x[0]
        if 16 * c > np.uint64(m):  # more than 8 exceptions per 128 (short runs): try offsets from the minimum
            lo = x[0]  # a loop: ndarray.min would load numba's arraymath, see transpose._largest
            for i in range(1, BLOCK):
                lo = min(lo, x[i])
            for i in range(BLOCK):
                fr[i] = x[i] - lo if i < m else 0
            cost_f, w_f, c_f, size_f = choose_width(fr, m, small, narrow_or_max(fr, fr, small))
            if cost_f < cost:
                mode, slots, pay, base, w, c, size = 0, fr, fr, lo, w_f, c_f, size_f
            else:  # the bytes of the deltas again
                narrow_or_max(dl, dz, small)
        words[start + np.uint64(bases + b)] = base
        nw, ne, infos[f] = emit_block(
            slots, pay, m, w, c, size, small, above, block, words, s, exc, e, mode != 0
        )
        s, e, f = s + nw, e + ne, f + (c > 0)
        raw[h0 + np.uint64(b)] = w | mode | (MODE_EXCEPTIONS if c else 0)
    p = U4 * s  # after the packed blocks: info bytes, lists, zero padding
    raw[p : p + f] = infos[:f]
    raw[p + f : p + f + e] = exc[:e]
    end = (s + (np.uint64(f) + e + np.uint64(3)) // U4) * U4
    raw[p + f + e : end] = 0
    keep_alive(scratch)  # a caller may pass a temporary: its arrays back the views
    return np.int64(end // U4 - start)


@numba.njit(cache=True, nogil=True)
def encode_scratch(n: int) -> tuple:
    """Work arrays for :func:`encode_body` on up to ``n`` values."""
    nb = (n + BLOCK - 1) // BLOCK
    u32 = np.zeros((5, 2 * BLOCK), np.uint32)
    return (
        u32[0],
        u32[1],
        u32[2],
        u32[3],
        u32[4],
        np.empty(nb * MAX_EXCEPTIONS * 5, np.uint8),  # exception lists: at most 64 of 5 bytes per block
        np.empty(nb, np.uint8),
        np.empty(BLOCK, np.uint8),
        np.empty(2, np.uint64),
    )


@numba.njit(cache=True, nogil=True)
def encode_kernel(values: np.ndarray, words: np.ndarray, bases: int, packed: int) -> int:
    """Pack ``values`` into ``words`` after its 16 header bytes; return the number of words used."""
    return encode_body(values, words, 0, bases, packed, encode_scratch(values.size))


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
    values: np.ndarray, header: np.ndarray, bases: int, packed: int, trailer: int, out, ends
):
    """Encode ``values`` as ``ends.size`` chunks of equal length, each a whole buffer (``header``: its
    16 bytes) followed by ``trailer`` untouched bytes (a multiple of 4), back to back in the words ``out``;
    ``ends[i]`` is the byte where chunk ``i``'s trailer ends."""
    chunk = values.size // ends.size
    scratch = encode_scratch(chunk)
    raw = out.view(np.uint8)
    pos = 0  # in words
    for i in range(ends.size):
        raw[4 * pos : 4 * pos + 16] = header
        pos += (
            encode_body(values[i * chunk : (i + 1) * chunk], out, pos, bases, packed, scratch) + trailer // 4
        )
        ends[i] = 4 * pos


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
