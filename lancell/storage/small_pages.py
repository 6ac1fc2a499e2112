"""Buffers and file writes that keep to small pages, so that memory new to the process is cheap to touch.

On Linux a numpy array of 4 MiB or more asks for transparent huge pages, and one buffered ``write`` of 2 MiB
or more fills the page cache with 2 MiB folios: both take whole 2 MiB blocks of the kernel's free memory.
In a virtual machine whose balloon reports free memory to the host (virtio-balloon free page reporting, as
Firecracker and cloud sandboxes run), those whole free blocks are the ones handed back, so the first touch
of every page in them waits for the host: measured on this project's 2-core machine, writing 128 MiB in
2 MiB calls took 0.95 s and in 1 MiB calls 0.03 s; first touching 200 MiB of a numpy array 1.1-1.6 s on huge
pages, 0.10 s on small ones. A fresh ingestion spent a third of its CPU time there (``benchmarks/RESULTS.md``,
"Ingest").

The buffers ingestion reuses block after block gain nothing from huge pages (they are streamed through
once per block), so :func:`small_page_empty` maps them with small pages, and object writes to a local disk
go in pieces of :data:`WRITE_PIECE` bytes (:func:`write_pieces` for obstore, :func:`pwrite_all` for a
file descriptor). Elsewhere (macOS, no ``MADV_NOHUGEPAGE``) the buffers are ordinary anonymous maps.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

__all__ = ["WRITE_PIECE", "pwrite_all", "small_page_empty", "write_pieces"]

# The most bytes one write call hands the page cache: below the 2 MiB of a huge page (see the docstring).
WRITE_PIECE = 1 << 20


def small_page_empty(size: int, dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised writable 1-D array of ``size`` elements on an anonymous map of small pages.

    The memory is returned to the system when the array (and every view of it) is gone.
    """
    dtype = np.dtype(dtype)
    region = mmap.mmap(-1, max(size * dtype.itemsize, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype, count=size)


def write_pieces(data: memoryview | bytes | np.ndarray) -> list[memoryview]:
    """``data``'s bytes as views of at most :data:`WRITE_PIECE` bytes each (one view when empty)."""
    view = memoryview(data).cast("B")
    return [view[lo : lo + WRITE_PIECE] for lo in range(0, len(view), WRITE_PIECE)] or [view]


def pwrite_all(fd: int, data: memoryview | bytes | np.ndarray, position: int) -> int:
    """Write all of ``data`` at ``position`` of the file ``fd`` in pieces of at most :data:`WRITE_PIECE`
    bytes; return the position after it."""
    for piece in write_pieces(data):
        while piece:
            written = os.pwrite(fd, piece, position)
            piece, position = piece[written:], position + written
    return position
