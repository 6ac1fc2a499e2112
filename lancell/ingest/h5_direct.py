"""Reads of a 1-D HDF5 dataset straight from its file, without the GIL.

h5py reads a chunked dataset chunk by chunk while holding the GIL: for the 100M-value ``X`` of the ingest
benchmark (two int32 arrays in 39 KB chunks) it spends ~0.37 s of CPU, and no other Python thread runs
meanwhile. When a dataset's bytes are stored as they are (no filter: no compression, shuffle or checksum)
its values can be read with ``os.preadv`` from the file HDF5 itself has open: the chunks' file addresses
are asked once (:meth:`DirectRead.of`), chunks stored one after the other are merged into runs, and a
range of values becomes one ``preadv`` per run it touches (~0.10 s for the same bytes, GIL released).

Chunks compressed with deflate (``compression="gzip"``, how anndata compresses) or LZF
(``compression="lzf"``, h5py's own filter), with or without the shuffle filter before it, are read the same
way and decompressed on a pool of threads (:class:`CompressedRead`): deflate by libdeflate, LZF by
:func:`kernels.lzf.lzf_decompress`, both without the GIL. h5py decompresses them one at a time holding the
GIL (3.4 s of zlib for that ``X`` written at level 4, where libdeflate takes ~1.2 s of CPU for the same
chunks, spread over the cores; LZF 0.30 GB/s through h5py, 0.69 GB/s per thread here). Every chunk is checked
on the way: its exact decompressed size, and for deflate its zlib checksum (an LZF stream has none: a
damaged one is caught only where it breaks the format or the size).

Only what is certainly one of these layouts qualifies; anything else is read by h5py (``of`` returns None):
another filter (a checksum, scale-offset, blosc), an external or virtual layout, a chunk not allocated (it
reads as the fill value) or stored with a filter skipped other than the compressor (which may leave a chunk
it cannot shrink as it is), a file driver other than ``sec2`` or a user block, a non-native byte order, a
dataset that is not 1-D. The first and the last chunk are then read both ways and must agree, or h5py is
used. A read that ends early (a truncated file) or a chunk that does not decompress raises
:class:`OSError`, as h5py's would.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from dataclasses import dataclass

import deflate
import h5py
import numpy as np

from kernels.lzf import lzf_decompress
from lancell.cores import USABLE_CORES

__all__ = ["DECOMPRESS_THREADS", "CompressedRead", "DirectRead", "decompressor_pool", "range_reader"]

# threads decompressing one file's chunks (CompressedRead.read_into's pool)
DECOMPRESS_THREADS = min(8, USABLE_CORES)

# filter pipelines read by CompressedRead: (codec, shuffled)
_COMPRESSED = {
    (h5py.h5z.FILTER_DEFLATE,): ("deflate", False),
    (h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE): ("deflate", True),
    (h5py.h5z.FILTER_LZF,): ("lzf", False),
    (h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_LZF): ("lzf", True),
}
_DECOMPRESS_TASKS = 8  # a read's chunks go to the pool in at most this many tasks


def decompressor_pool() -> ThreadPoolExecutor:
    """The pool that decompresses one file's chunks (:data:`DECOMPRESS_THREADS` threads)."""
    return ThreadPoolExecutor(DECOMPRESS_THREADS, thread_name_prefix="lancell-decompress")


def range_reader(dataset: h5py.Dataset, decompressors: Executor) -> Callable[[np.ndarray, int, int], None]:
    """``read(out, lo, hi)``: values ``[lo, hi)`` of ``dataset`` into ``out``, read straight from the file
    where the dataset's bytes are stored unfiltered (:class:`DirectRead`) or compressed
    (:class:`CompressedRead`, decompressed on ``decompressors``), else by h5py."""
    direct = DirectRead.of(dataset)
    if direct is not None:
        return direct.read_into
    compressed = CompressedRead.of(dataset)
    if compressed is not None:
        return functools.partial(compressed.read_into, pool=decompressors)
    return lambda out, lo, hi: dataset.read_direct(out, np.s_[lo:hi])


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
        plist = _plain_file_layout(dataset)
        if plist is None or plist.get_nfilters() != 0:
            return None
        size, itemsize = int(dataset.shape[0]), dataset.dtype.itemsize
        layout = plist.get_layout()
        if layout == h5py.h5d.CONTIGUOUS:
            offset = dataset.id.get_offset()
            if offset is None:
                return None
            starts, offsets = np.zeros(1, np.int64), np.array([offset], np.int64)
        elif layout == h5py.h5d.CHUNKED:
            runs = _chunk_runs(dataset, itemsize)
            if runs is None:
                return None
            starts, offsets = runs
        else:  # compact (in the object header) or virtual
            return None
        fd = dataset.file.id.get_vfd_handle()
        if not isinstance(fd, int) or size == 0:
            return None
        direct = cls(fd, size, dataset.dtype, starts, offsets)
        return direct if _agrees(direct.read_into, dataset) else None

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


@dataclass(frozen=True)
class CompressedRead:
    """Where the compressed chunks of a 1-D dataset lie in its file: chunk ``j`` (values from ``j * chunk``)
    is ``sizes[j]`` bytes at file offset ``offsets[j]``, compressed with ``codec`` (``"deflate"`` or
    ``"lzf"``) unless ``stored_plain[j]`` (the compressor could not shrink it); ``shuffle``: its bytes were
    shuffled (the HDF5 shuffle filter) before compression.

    ``fd`` is HDF5's own descriptor of the file (valid while the file is open; ``pread`` does not move it).
    """

    fd: int
    size: int
    dtype: np.dtype
    chunk: int
    offsets: np.ndarray
    sizes: np.ndarray
    stored_plain: np.ndarray
    codec: str
    shuffle: bool

    @classmethod
    def of(cls, dataset: h5py.Dataset) -> CompressedRead | None:
        """The decompressing read of ``dataset``, or None where h5py must read it (see the module
        docstring)."""
        plist = _plain_file_layout(dataset)
        if plist is None or plist.get_layout() != h5py.h5d.CHUNKED:
            return None
        filters = tuple(plist.get_filter(i)[0] for i in range(plist.get_nfilters()))
        if filters not in _COMPRESSED:
            return None
        table = _chunk_table(dataset)
        fd = dataset.file.id.get_vfd_handle()
        if table is None or not isinstance(fd, int) or dataset.shape[0] == 0:
            return None
        # a chunk the compressor could not shrink is stored as it is (the filter is optional), its bit set
        skipped = 1 << (len(filters) - 1)
        if not np.isin(table[:, 3], (0, skipped)).all():
            return None
        codec, shuffle = _COMPRESSED[filters]
        size, chunk = int(dataset.shape[0]), int(dataset.chunks[0])
        read = cls(fd, size, dataset.dtype, chunk, table[:, 1], table[:, 2], table[:, 3] != 0, codec, shuffle)
        return read if _agrees(read.read_into, dataset) else None

    def read_into(self, out: np.ndarray, lo: int, hi: int, pool: Executor | None = None) -> None:
        """Read values ``[lo, hi)`` into ``out`` (contiguous, ``hi - lo`` values of this dtype),
        decompressing the chunks on ``pool``'s threads (both codecs release the GIL) or, without one, on
        this thread.

        Raises
        ------
        OSError
            The file cannot be read, ends before those values, or holds a chunk that does not decompress
            (a damaged stream, a bad checksum or size).
        """
        if not (0 <= lo <= hi <= self.size) or out.shape != (hi - lo,) or out.dtype != self.dtype:
            raise ValueError(f"cannot read values [{lo}, {hi}) of {self.size} into {out.dtype}{out.shape}")
        if hi == lo:
            return
        target = memoryview(out).cast("B")
        chunks = np.arange(lo // self.chunk, (hi - 1) // self.chunk + 1)
        if pool is None:
            self._decompress_into(target, lo, hi, chunks)
            return
        tasks = [pool.submit(self._decompress_into, target, lo, hi, part) for part in _split(chunks)]
        wait(tasks)  # every task has stopped writing into out before an error is raised
        for task in tasks:
            task.result()

    def _decompress_into(self, target: memoryview, lo: int, hi: int, chunks: Sequence[int]) -> None:
        itemsize, length = self.dtype.itemsize, self.chunk * self.dtype.itemsize
        decompress = _inflate if self.codec == "deflate" else _unlzf
        for j in chunks:
            first, offset = int(j) * self.chunk, int(self.offsets[j])
            packed = bytearray(int(self.sizes[j]))
            _pread_fully(self.fd, memoryview(packed), offset)
            plain = packed if self.stored_plain[j] else decompress(packed, length)
            if len(plain) != length:
                raise OSError(
                    f"the chunk of values from {first} at byte {offset} of the file does not decompress "
                    f"({self.codec}) to {length} bytes"
                )
            if self.shuffle:  # byte k of every value was stored in the k-th plane
                plain = np.frombuffer(plain, np.uint8).reshape(itemsize, self.chunk).T.tobytes()
            a, b = max(lo, first), min(hi, first + self.chunk)
            target[(a - lo) * itemsize : (b - lo) * itemsize] = memoryview(plain)[
                (a - first) * itemsize : (b - first) * itemsize
            ]


def _inflate(packed: bytearray, length: int) -> bytes:
    """A zlib stream's bytes, or ``b""`` for a bad stream or checksum, or more than ``length`` bytes."""
    try:
        return deflate.zlib_decompress(packed, length)
    except deflate.DeflateError:
        return b""


def _unlzf(packed: bytearray, length: int) -> bytes | np.ndarray:
    """An LZF stream's bytes (up to ``length``), or ``b""`` for a damaged stream or more than ``length``."""
    plain = np.empty(length, np.uint8)
    size = lzf_decompress(np.frombuffer(packed, np.uint8), plain)
    return plain[:size] if size >= 0 else b""


def _split(chunks: np.ndarray) -> list[np.ndarray]:
    """``chunks`` in at most :data:`_DECOMPRESS_TASKS` consecutive parts."""
    return [part for part in np.array_split(chunks, min(chunks.size, _DECOMPRESS_TASKS)) if part.size]


def _plain_file_layout(dataset: h5py.Dataset) -> h5py.h5p.PropDCID | None:
    """The creation property list of a 1-D dataset of native numbers in a plain ``sec2`` file with no
    user block and no external storage, else None."""
    if dataset.ndim != 1 or not dataset.dtype.isnative or dataset.dtype.kind not in "iuf":
        return None
    file = dataset.file
    if file.driver != "sec2" or file.userblock_size != 0:
        return None
    plist = dataset.id.get_create_plist()
    return plist if plist.get_external_count() == 0 else None


def _agrees(read_into: Callable[[np.ndarray, int, int], None], dataset: h5py.Dataset) -> bool:
    """Whether the first and the last chunk (or 64 Ki values) read the same by ``read_into`` and h5py."""
    size = int(dataset.shape[0])
    span = int(dataset.chunks[0]) if dataset.chunks else min(size, 65_536)
    for lo in {0, max(0, (size - 1) // span * span)}:
        hi = min(size, lo + span)
        ours, theirs = np.empty(hi - lo, dataset.dtype), np.empty(hi - lo, dataset.dtype)
        try:
            read_into(ours, lo, hi)
        except OSError:
            return False
        dataset.read_direct(theirs, np.s_[lo:hi])
        if ours.tobytes() != theirs.tobytes():
            return False
    return True


def _chunk_table(dataset: h5py.Dataset) -> np.ndarray | None:
    """``(first value, byte offset, stored size, filter mask)`` of every chunk in value order, or None if a
    chunk is missing or there is none."""
    chunk, size = int(dataset.chunks[0]), int(dataset.shape[0])
    if size == 0:  # no chunk to read (a matrix without stored values): h5py's read is empty too
        return None
    chunks: list[tuple[int, int, int, int]] = []
    try:
        dataset.id.chunk_iter(
            lambda info: chunks.append((info.chunk_offset[0], info.byte_offset, info.size, info.filter_mask))
        )
    except (AttributeError, RuntimeError):  # an h5py or HDF5 too old for chunk_iter
        return None
    if len(chunks) != -(-size // chunk):
        return None
    try:
        table = np.array(chunks, np.int64).reshape(-1, 4)
    except OverflowError:  # an address no file has (a damaged chunk index): h5py's read will say so
        return None
    table = table[np.argsort(table[:, 0])]
    expected = np.arange(table.shape[0], dtype=np.int64) * chunk
    if not np.array_equal(table[:, 0], expected) or (table[:, 2] <= 0).any():
        return None
    return table


def _chunk_runs(dataset: h5py.Dataset, itemsize: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(starts, offsets)`` of the runs of a chunked dataset's chunks, or None if a chunk is missing or
    not stored as its plain bytes."""
    chunk = int(dataset.chunks[0])
    table = _chunk_table(dataset)
    if table is None or (table[:, 2] != chunk * itemsize).any() or table[:, 3].any():
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
