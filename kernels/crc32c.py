"""crc32c (Castagnoli) inside numba kernels: the SSE 4.2 ``crc32`` instruction on x86-64, a table elsewhere.

:func:`crc32c` equals ``crc32c.crc32c`` of the same bytes; a chunk whose stored bytes end in their own crc32c
(little-endian, zarr's ``crc32c`` codec) gives :data:`RESIDUE` over all its bytes.
"""

import platform

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

RESIDUE = 0x48674BC7


def _table() -> np.ndarray:
    table = np.zeros(256, np.uint32)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table[i] = crc
    return table


_TABLE = _table()


@intrinsic
def _hw_word(typingctx, crc, buf, p):
    """One SSE 4.2 ``crc32`` step over the 8 bytes ``buf[p : p + 8]`` (an unaligned load)."""
    sig = types.uint64(types.uint64, buf, types.intp)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        data = context.make_array(signature.args[1])(context, builder, args[1]).data
        word = builder.load(builder.bitcast(builder.gep(data, [args[2]]), i64.as_pointer()), align=1)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64, i64]), "llvm.x86.sse42.crc32.64.64"
        )
        return builder.call(fn, [args[0], word])

    return sig, codegen


@intrinsic
def _hw_byte(typingctx, crc, byte):
    """One SSE 4.2 ``crc32`` step over 1 byte."""
    sig = types.uint32(types.uint32, types.uint8)

    def codegen(context, builder, signature, args):
        i32, i8 = ir.IntType(32), ir.IntType(8)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i32, [i32, i8]), "llvm.x86.sse42.crc32.32.8"
        )
        return builder.call(fn, args)

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def _crc32c_hw(buf: np.ndarray, start: int, stop: int) -> np.uint32:
    wide = np.uint64(0xFFFFFFFF)
    p = start
    while p + 8 <= stop:
        wide = _hw_word(wide, buf, p)
        p += 8
    crc = np.uint32(wide)
    while p < stop:
        crc = _hw_byte(crc, buf[p])
        p += 1
    return crc ^ np.uint32(0xFFFFFFFF)


@numba.njit(cache=True, nogil=True)
def _crc32c_table(buf: np.ndarray, start: int, stop: int) -> np.uint32:
    crc = np.uint32(0xFFFFFFFF)
    for p in range(start, stop):
        crc = _TABLE[(crc ^ buf[p]) & np.uint32(255)] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


_HARDWARE = (
    platform.machine().lower() in ("x86_64", "amd64") and "+sse4.2" in llvm.get_host_cpu_features().flatten()
)
crc32c = _crc32c_hw if _HARDWARE else _crc32c_table
"""``crc32c(buf, start, stop)``: the crc32c of ``buf[start:stop]`` (1-D uint8), as a uint32."""


@numba.njit(cache=True, nogil=True)
def chunk_trailers(buf: np.ndarray, ends: np.ndarray) -> None:
    """Write each chunk's crc32c (little-endian) into its last 4 bytes: chunk ``i`` is
    ``buf[ends[i - 1] : ends[i]]`` (from 0 for the first), its bytes all but those 4 (zarr's ``crc32c``
    codec over a shard's chunks in one call)."""
    start = 0
    for i in range(ends.size):
        end = ends[i]
        crc = crc32c(buf, start, end - 4)
        for b in range(4):
            buf[end - 4 + b] = np.uint8((crc >> np.uint32(8 * b)) & np.uint32(255))
        start = end
