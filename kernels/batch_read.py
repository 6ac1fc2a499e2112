"""One training batch of sparse rows, from memory-mapped shard files to an output CSR, in one call.

A dataset's cells are element ranges ``[start, start + nnz)`` of two 1-D BP-128 arrays of its zarr group
(``csr/indices`` and a values layer), chunked alike (``chunk_len[group]`` elements). Every chunk of every
array the batch may touch is one entry of a flat *chunk table*: the file it lives in (an index into
``file_address`` and ``file_size``: where the memory-mapped shard objects start, and their lengths in bytes),
its byte offset and its size (crc32c trailer included). Group ``g``'s chunk ``c`` of array ``a`` (0: indices,
1: values) is entry ``base[g, a] + c``. (Addresses, not a numba typed list of arrays: a typed list's own
methods are compiled anew in every process, 1-3 s before a first batch; these kernels load from numba's
cache.)

:func:`read_rows` checks the crc32c of each needed chunk and decodes it once (cells are walked in storage
order, so neighbours share a decoded chunk), maps local feature indices to output columns through the group's
lookup table, drops unselected features (and zeros that pad a shared pattern), sorts rows whose group maps to
decreasing columns, and writes every row at its place in request order.

No I/O and no bounds checks on the tables: the caller builds them from checked shard indices.
"""

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

from kernels.bitpack_blocks import decode_chunks_kernel
from kernels.crc32c import RESIDUE, crc32c

CRC_MISMATCH = 4
PAST_PANEL = 5  # a stored local feature index past the group's lookup table (another array's shard)


@intrinsic
def _bytes_at(typingctx, address):
    """A uint8 pointer to the int64 ``address`` (for :func:`numba.carray`)."""
    pointer = types.CPointer(types.uint8)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(types.int64), codegen


@numba.njit(cache=True, nogil=True)
def _decode(
    file_address, file_size, table_file, table_off, table_size, entry, header, one_off, one_size, out
) -> int:
    """Check chunk table entry ``entry``'s crc32c and decode it into ``out``: 0, a BP-128 code (1-3), or
    :data:`CRC_MISMATCH`."""
    f = table_file[entry]
    buf = numba.carray(_bytes_at(file_address[f]), file_size[f])
    off = table_off[entry]
    size = table_size[entry]
    if size < 4 or crc32c(buf, off, off + size) != RESIDUE:
        return CRC_MISMATCH
    one_off[0] = off
    one_size[0] = size - 4
    code, _ = decode_chunks_kernel(buf, one_off, one_size, header, out)
    return code


@numba.njit(cache=True, nogil=True)
def read_rows(
    file_address: np.ndarray,
    file_size: np.ndarray,
    table_file: np.ndarray,
    table_off: np.ndarray,
    table_size: np.ndarray,
    base: np.ndarray,
    chunk_len: np.ndarray,
    header: np.ndarray,
    lut: np.ndarray,
    lut_start: np.ndarray,
    monotonic: np.ndarray,
    zero_fill: np.ndarray,
    group: np.ndarray,
    start: np.ndarray,
    nnz: np.ndarray,
    offsets: np.ndarray,
    out_columns: np.ndarray,
    out_values: np.ndarray,
) -> tuple:
    """Read the rows of the cells ``(group, start, nnz)`` into a CSR in request order.

    Parameters
    ----------
    file_address, file_size
        int64: where each memory-mapped shard object starts, and its length in bytes (the caller keeps
        the mappings open while the kernel runs).
    table_file, table_off, table_size, base
        The chunk table (see the module docstring).
    chunk_len
        int64 per group: the chunk length of its two arrays (a dataset smaller than a chunk has its own).
    header
        The BP-128 magic bytes and newest format version (as :func:`kernels.bitpack.decode_chunks` passes).
    lut, lut_start, monotonic
        Group ``g``'s lookup table is ``lut[lut_start[g] : lut_start[g + 1]]`` (local feature -> output
        column, -1: dropped); ``monotonic[g]``: kept features map to increasing columns.
    zero_fill
        bool per group: its stored zeros are padding of a shared pattern and are left out.
    group, start, nnz
        Per cell (request order); a cell with ``nnz == 0`` gives an empty row.
    offsets
        int64 (n + 1,), filled with the output row offsets.
    out_columns, out_values
        int32 / uint32 of at least ``nnz.sum()`` values; the first ``offsets[-1]`` are the CSR.

    Returns
    -------
    tuple
        ``(0, 0)``, or ``(code, entry)`` for the first chunk table entry that does not match its crc32c
        (:data:`CRC_MISMATCH`), that BP-128 refused to decode (its code, 1-3), or that holds a local feature
        index past its group's lookup table (:data:`PAST_PANEL`).
    """
    n = group.size
    room = np.empty(n + 1, np.int64)  # each row written at its upper-bound place first
    room[0] = 0
    for i in range(n):
        room[i + 1] = room[i] + nnz[i]
    kept = np.zeros(n, np.int64)
    order = np.argsort(group.astype(np.int64) * (np.int64(1) << 40) + start)
    longest = 0
    for i in range(n):
        if nnz[i] > 0:
            longest = max(longest, chunk_len[group[i]])
    scratch = np.empty((2, longest), np.uint32)
    cached = np.full(2, -1, np.int64)
    one_off = np.empty(1, np.int64)
    one_size = np.empty(1, np.int64)
    any_dropped = False
    for k in range(n):
        i = order[k]
        if nnz[i] == 0:
            continue
        g = group[i]
        length = chunk_len[g]
        drop_zeros = zero_fill[g]
        lo = lut_start[g]
        width = lut_start[g + 1] - lo
        pos = start[i]
        end = start[i] + nnz[i]
        d = room[i]
        while pos < end:
            c = pos // length
            for a in range(2):
                entry = base[g, a] + c
                if cached[a] != entry:
                    code = _decode(
                        file_address,
                        file_size,
                        table_file,
                        table_off,
                        table_size,
                        entry,
                        header,
                        one_off,
                        one_size,
                        scratch[a, :length],
                    )
                    if code:
                        return code, entry
                    cached[a] = entry
            stop = min(end, (c + 1) * length)
            for p in range(pos - c * length, stop - c * length):
                local = scratch[0, p]
                if local >= width:
                    return PAST_PANEL, base[g, 0] + c
                column = lut[lo + local]
                if column >= 0 and not (drop_zeros and scratch[1, p] == 0):
                    out_columns[d] = column
                    out_values[d] = scratch[1, p]
                    d += 1
            pos = stop
        kept[i] = d - room[i]
        any_dropped |= kept[i] != nnz[i]
        if not monotonic[g] and kept[i] > 1:
            a0, a1 = room[i], d
            sort = np.argsort(out_columns[a0:a1], kind="mergesort")
            columns = out_columns[a0:a1][sort]
            values = out_values[a0:a1][sort]
            out_columns[a0:a1] = columns
            out_values[a0:a1] = values
    offsets[0] = 0
    for i in range(n):
        offsets[i + 1] = offsets[i] + kept[i]
    if any_dropped:  # close the gaps left by dropped features; rows only move left
        for i in range(n):
            src = room[i]
            dst = offsets[i]
            if src != dst:
                for j in range(kept[i]):
                    out_columns[dst + j] = out_columns[src + j]
                    out_values[dst + j] = out_values[src + j]
    return 0, 0
