"""Reads of an unfiltered 1-D HDF5 dataset straight from its file, without the GIL.

h5py reads a chunked dataset chunk by chunk while holding the GIL: for the 100M-value ``X`` of the ingest
benchmark (two int32 arrays in 39 KB chunks) it spends ~0.37 s of CPU, and no other Python thread runs
meanwhile. When a dataset's bytes are stored as they are (no filter: no compression, shuffle or checksum)
its values can be read with ``os.preadv`` from the file HDF5 itself has open: the chunks' file addresses
are asked once (:meth:`DirectRead.of`), chunks stored one after the other are merged into runs, and a
range of values becomes one ``preadv`` per run it touches (~0.10 s for the same bytes, GIL released).

Only what is certainly plain bytes qualifies; anything else is read by h5py (:meth:`DirectRead.of` returns
None): a filter, an external or virtual layout, a chunk not allocated (it reads as the fill value), a file
driver other than ``sec2`` or a user block, a non-native byte order, a dataset that is not 1-D. The first
and the last chunk are then read both ways and must agree, or h5py is used. A read that ends early (a
truncated file) raises :class:`OSError`, as h5py's would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

__all__ = ["DirectRead"]


@dataclass(frozen=True)
class DirectRead:
    """Where the values of a 1-D dataset lie in its file: run ``j`` holds values ``starts[j]`` to
    ``starts[j + 1]`` (or ``size``) at consecutive bytes from file offset ``offsets[j]``.

    ``fd`` is HDF5's own descriptor of the file (valid while the file is open; ``pread`` does not move it).
    """

    fd: int
    size: int
    dtype: np.dtype
    starts: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, dataset: h5py.Dataset) -> DirectRead | None:
        """The direct read of ``dataset``, or None where h5py must read it (see the module docstring)."""
        if dataset.ndim != 1 or not dataset.dtype.isnative or dataset.dtype.kind not in "iuf":
            return None
        file = dataset.file
        if file.driver != "sec2" or file.userblock_size != 0:
            return None
        plist = dataset.id.get_create_plist()
        if plist.get_nfilters() != 0 or plist.get_external_count() != 0:
            return None
        size, itemsize = int(dataset.shape[0]), dataset.dtype.itemsize
        layout = plist.get_layout()
        if layout == h5py.h5d.CONTIGUOUS:
            offset = dataset.id.get_offset()
            if offset is None:
                return None
            starts, offsets = np.zeros(1, np.int64), np.array([offset], np.int64)
        elif layout == h5py.h5d.CHUNKED:
            runs = _chunk_runs(dataset, size, itemsize)
            if runs is None:
                return None
            starts, offsets = runs
        else:  # compact (in the object header) or virtual
            return None
        fd = file.id.get_vfd_handle()
        if not isinstance(fd, int) or size == 0:
            return None
        direct = cls(fd, size, dataset.dtype, starts, offsets)
        return direct if direct._agrees_with(dataset) else None

    def read_into(self, out: np.ndarray, lo: int, hi: int) -> None:
        """Read values ``[lo, hi)`` into ``out`` (contiguous, ``hi - lo`` values of this dtype).

        Raises
        ------
        OSError
            The file cannot be read, or ends before those values.
        """
        if not (0 <= lo <= hi <= self.size) or out.shape != (hi - lo,) or out.dtype != self.dtype:
            raise ValueError(f"cannot read values [{lo}, {hi}) of {self.size} into {out.dtype}{out.shape}")
        itemsize = self.dtype.itemsize
        target = memoryview(out).cast("B")
        run = int(np.searchsorted(self.starts, lo, side="right")) - 1
        position = lo
        while position < hi:
            run_end = int(self.starts[run + 1]) if run + 1 < self.starts.size else self.size
            stop = min(hi, run_end)
            offset = int(self.offsets[run]) + (position - int(self.starts[run])) * itemsize
            _pread_fully(self.fd, target[(position - lo) * itemsize : (stop - lo) * itemsize], offset)
            position, run = stop, run + 1

    def _agrees_with(self, dataset: h5py.Dataset) -> bool:
        """Whether the first and the last chunk (or 64 Ki values) read the same both ways."""
        span = int(dataset.chunks[0]) if dataset.chunks else min(self.size, 65_536)
        for lo in {0, max(0, (self.size - 1) // span * span)}:
            hi = min(self.size, lo + span)
            ours, theirs = np.empty(hi - lo, self.dtype), np.empty(hi - lo, self.dtype)
            try:
                self.read_into(ours, lo, hi)
            except OSError:
                return False
            dataset.read_direct(theirs, np.s_[lo:hi])
            if ours.tobytes() != theirs.tobytes():
                return False
        return True


def _chunk_runs(dataset: h5py.Dataset, size: int, itemsize: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(starts, offsets)`` of the runs of a chunked dataset's chunks, or None if a chunk is missing or
    not stored as its plain bytes."""
    chunk = int(dataset.chunks[0])
    chunks: list[tuple[int, int, int, int]] = []
    try:
        dataset.id.chunk_iter(
            lambda info: chunks.append((info.chunk_offset[0], info.byte_offset, info.size, info.filter_mask))
        )
    except (AttributeError, RuntimeError):  # an h5py or HDF5 too old for chunk_iter
        return None
    if len(chunks) != -(-size // chunk):
        return None
    table = np.array(chunks, np.int64).reshape(-1, 4)
    table = table[np.argsort(table[:, 0])]
    expected = np.arange(table.shape[0], dtype=np.int64) * chunk
    if (
        not np.array_equal(table[:, 0], expected)
        or (table[:, 2] != chunk * itemsize).any()
        or table[:, 3].any()
    ):
        return None
    # a run starts where a chunk does not follow the previous one in the file
    follows = table[1:, 1] == table[:-1, 1] + chunk * itemsize
    first = np.concatenate(([True], ~follows))
    return table[first, 0], table[first, 1]


def _pread_fully(fd: int, target: memoryview, offset: int) -> None:
    """``preadv`` until ``target`` is full; OSError if the file ends first."""
    done = 0
    while done < len(target):
        got = os.preadv(fd, [target[done:]], offset + done)
        if got == 0:
            raise OSError(f"the file ends before byte {offset + len(target)} (read {offset + done})")
        done += got
