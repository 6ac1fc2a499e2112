"""LZF decompression (liblzf's format, which h5py's ``compression="lzf"`` filter writes), without the GIL.

A stream is a sequence of items, each led by a control byte ``c``: below 32, ``c + 1`` literal bytes follow;
otherwise a back-reference of ``(c >> 5) + 2`` bytes (an extra length byte when ``c >> 5`` is 7) copied from
``((c & 31) << 8) + next byte + 1`` bytes back in the output, byte by byte (it may overlap what it writes).
Every read and write is bounds-checked: a damaged stream is an error code, never a write outside ``out``.
"""

import numba
import numpy as np

# lzf_decompress's results other than a size
TRUNCATED = -1  # the stream ends inside an item
TOO_LONG = -2  # the output does not fit in ``out``
BAD_REFERENCE = -3  # a back-reference before the start of the output


@numba.njit(cache=True, nogil=True)
def lzf_decompress(stream: np.ndarray, out: np.ndarray) -> int:
    """Decompress the LZF ``stream`` (uint8) into ``out`` (uint8); return the bytes written, or
    :data:`TRUNCATED`, :data:`TOO_LONG` or :data:`BAD_REFERENCE`."""
    n_in, n_out = stream.size, out.size
    i = 0
    o = 0
    while i < n_in:
        ctrl = np.int64(stream[i])
        i += 1
        if ctrl < 32:  # a literal run
            length = ctrl + 1
            if i + length > n_in:
                return TRUNCATED
            if o + length > n_out:
                return TOO_LONG
            for k in range(length):
                out[o + k] = stream[i + k]
            i += length
            o += length
            continue
        length = ctrl >> 5
        if i >= n_in:
            return TRUNCATED
        if length == 7:
            length += np.int64(stream[i])
            i += 1
            if i >= n_in:
                return TRUNCATED
        ref = o - ((ctrl & 31) << 8) - 1 - np.int64(stream[i])
        i += 1
        length += 2
        if o + length > n_out:
            return TOO_LONG
        if ref < 0:
            return BAD_REFERENCE
        for k in range(length):  # byte by byte: the source may overlap the bytes being written
            out[o + k] = out[ref + k]
        o += length
    return o
