"""Sparse batches read from memory-mapped local shard files by one kernel call (docs/architecture.md,
"Training data loading").

For a dataset whose groups store their CSR indices and values as checksummed BP-128 arrays on local disk (the
layout lancell writes for integer counts), every shard object a batch touches is mapped once per process and
:func:`kernels.batch_read.read_rows` goes from the batch's cell pointers to the output CSR without a system
call, a Python loop or a thread hand-off per chunk. Groups are added to the chunk table the first time a batch
touches them, so a worker opens only the groups it reads.

Checks are those of the batched reader (docs/integrity.md, "What is checked"): shard indices are parsed by
:meth:`lancell.storage.shard_reader.ShardedArrayReader.local_shard`, a missing shard object of a dataset array
is an error, every chunk's crc32c is checked each time before it is decoded (:mod:`kernels.crc32c`, the SSE
4.2 instruction: ~7 GB/s), and BP-128 checks each chunk's header and block heads before decoding it. Other
layouts (float values, remote stores, chunks an index marks unwritten) are read by
:func:`lancell.dataloader.batch.read_sparse`.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from kernels import bitpack
from kernels.batch_read import PAST_PANEL, read_rows
from lancell.dataloader.features import GroupTable
from lancell.errors import CodecError, OutOfBoundsError
from lancell.storage.codecs import CRC_BP128
from lancell.storage.reader import array_reader
from lancell.storage.shard_decode import decode_chunks
from lancell.storage.shard_index import MISSING
from lancell.storage.shard_reader import ShardedArrayReader

__all__ = ["MappedGroups", "mapped_files", "mapped_files_budget", "warm_kernel"]

_HEADER = np.frombuffer(bitpack.MAGIC + bytes([bitpack.FORMAT_VERSION]), np.uint8)


# libc's mmap: Python's mmap.mmap keeps a duplicate of its file's descriptor for the map's life, one per
# shard file mapped (at ~500 datasets past the usual limit of 1,024: "Too many open files" mid-epoch)
_MAP_FAILED = ctypes.c_void_p(-1).value


@functools.cache
def mapped_files_budget() -> int:
    """Shard files one process maps at most: half the kernel's limit on a process's mappings
    (``vm.max_map_count``, 65,530 by default; the rest is left to the allocator and libraries). An epoch
    over a census-sized atlas touches more shard files than that: past the budget, groups are read by the
    batched reader instead (mapping more failed with ENOMEM)."""
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read()) // 2
    except (OSError, ValueError):
        return 32_765


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, with ``mmap`` and ``munmap`` declared; None where there is none to load (Windows)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, *[ctypes.c_int] * 3, ctypes.c_long)
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def _map(path: str) -> np.ndarray:
    """The file at ``path`` mapped read-only as a 1-D uint8 array (mapped as long as an array views it; no
    descriptor kept open where the C library can map it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = _libc()
        if libc is None:  # (Python's mmap, which keeps a duplicate of the descriptor)
            return np.frombuffer(mmap.mmap(fd, 0, access=mmap.ACCESS_READ), np.uint8)
        size = os.fstat(fd).st_size
        ctypes.set_errno(0)
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0) if size else _MAP_FAILED
    finally:
        os.close(fd)
    if address in (None, _MAP_FAILED):
        errno = ctypes.get_errno()
        raise OSError(errno, f"cannot map {path}: {os.strerror(errno) if errno else 'an empty file'}")
    buffer = (ctypes.c_uint8 * size).from_address(address)
    _MAPPED.add(1)
    # unmapped with the last array viewing it, never at exit: a thread may still be reading (a segfault)
    weakref.finalize(buffer, _unmap, libc, address, size).atexit = False
    return np.frombuffer(memoryview(buffer).toreadonly(), np.uint8)  # (PROT_READ: a write would crash)


def _unmap(libc: ctypes.CDLL, address: int, size: int) -> None:
    libc.munmap(address, size)
    _MAPPED.add(-1)


class _Count:
    """A count shared by threads."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, step: int) -> None:
        with self._lock:
            self.value += step


# shard files this process has mapped (every dataset's, every loader's): mapped_files_budget() bounds it
_MAPPED = _Count()


def mapped_files() -> int:
    """Shard files this process has mapped now (every dataset's; each unmapped with the last array viewing
    it)."""
    return _MAPPED.value


def warm_kernel() -> None:
    """Load the batch kernel's machine code for the argument types :meth:`MappedGroups.read` passes (from
    numba's cache, else compiled): the DataLoader's forkserver calls it once, so that no worker pays for it
    at its first batch."""
    i64 = np.zeros(1, np.int64)
    read_rows(
        i64,
        i64,
        np.zeros(1, np.int32),
        i64,
        i64,
        np.zeros((1, 2), np.int64),
        i64,
        _HEADER,
        np.zeros(0, np.int32),
        i64,
        np.zeros(1, bool),
        np.zeros(1, bool),
        np.zeros(0, np.int32),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        i64.copy(),
        np.zeros(0, np.int32),
        np.zeros(0, np.uint32),
    )


class _Grown:
    """A 1-D array that grows by doubling (the chunk table's columns)."""

    def __init__(self, dtype: type) -> None:
        self.data = np.zeros(1024, dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + values.size
        if need > self.data.size:
            grown = np.zeros(max(need, 2 * self.data.size), self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = values
        self.size = need


class MappedGroups:
    """The chunk table and mapped shard files of one process's reads of a dataset (see the module docstring).

    Parameters
    ----------
    table
        The dataset's :class:`~lancell.dataloader.features.GroupTable`, of one requested layer.
    open_arrays
        ``open_arrays(codes)`` returns ``{code: (csr/indices, values layer)}`` zarr arrays of those measured
        groups (raising ``GroupNotFoundError`` for a removed group).
    """

    def __init__(self, table: GroupTable, open_arrays: Callable[[np.ndarray], dict[int, Any]]) -> None:
        self._table = table
        self._open_arrays = open_arrays
        n_groups = len(table.names)
        self._base = np.zeros((n_groups, 2), np.int64)
        self._added = np.zeros(n_groups, bool)
        self._refused = np.zeros(n_groups, bool)
        # (first table entry, reader) of each array in the table, in entry order
        self._readers: list[tuple[int, ShardedArrayReader]] = []
        self._files: list[np.ndarray] = []  # the mapped shard objects, mapped while this object lives
        self._file_address = _Grown(np.int64)
        self._file_size = _Grown(np.int64)
        self._lock = threading.Lock()  # held while groups are added, not while batches are decoded
        self._file = _Grown(np.int32)
        self._offset = _Grown(np.int64)
        self._size = _Grown(np.int64)
        self._chunk_len = np.zeros(n_groups, np.int64)  # each group's (its two arrays chunked alike)
        luts = [np.asarray(lut, np.int32) for lut in table.luts]
        self._lut = np.concatenate(luts) if luts else np.zeros(0, np.int32)
        self._lut_start = np.concatenate(([0], np.cumsum([lut.size for lut in luts]))).astype(np.int64)
        self._monotonic = np.asarray(table.monotonic, bool)
        self._zero_fill = np.ascontiguousarray(table.zero_fill[0], bool)  # the one layer read

    @staticmethod
    def _readable(reader: ShardedArrayReader | None) -> bool:
        """Whether ``reader``'s array can join the table: complete, 1-D, checksummed BP-128, local."""
        if reader is None or reader.layout.stages != CRC_BP128 or len(reader.shape) != 1:
            return False
        return reader.complete and reader.local_shard(0) is not None

    def _add_array(self, reader: ShardedArrayReader) -> int | None:
        """Append every chunk of ``reader``'s array to the table; its first entry, or None when a chunk is
        unwritten (the array is then read by the batched reader)."""
        layout = reader.layout
        n_chunks = -(-layout.shape[0] // layout.chunk_len)
        first = self._file.size
        file_ids, offsets, sizes = [], [], []
        for shard in range(reader.n_shards):
            local = reader.local_shard(shard)
            count = min(layout.chunks_per_shard, n_chunks - shard * layout.chunks_per_shard)
            if local is None:
                return None
            index = local[1]
            entries = index[:count]
            if bool((entries[:, 0] == MISSING).any()):
                return None
            file_ids.append(np.full(count, len(self._files) + shard, np.int32))
            offsets.append(entries[:, 0].astype(np.int64))
            sizes.append(entries[:, 1].astype(np.int64))
        mapped = [_map(reader.local_shard(shard)[0]) for shard in range(reader.n_shards)]
        self._files.extend(mapped)  # (never unmapped: a kernel on another thread may be reading them)
        self._file_address.extend(np.array([m.ctypes.data for m in mapped], np.int64))
        self._file_size.extend(np.array([m.size for m in mapped], np.int64))
        for column, values in ((self._file, file_ids), (self._offset, offsets), (self._size, sizes)):
            column.extend(np.concatenate(values) if values else np.zeros(0, column.data.dtype))
        self._readers.append((first, reader))
        return first

    def _add_groups(self, codes: np.ndarray) -> bool:
        """Add the groups ``codes`` not yet in the table; False when one of them cannot be read this way."""
        codes = codes[codes >= 0]
        if self._refused[codes].any():
            return False
        new = [int(c) for c in codes if self._table.measured[c] and not self._added[c]]
        if not new:
            return True
        arrays = self._open_arrays(np.asarray(new))
        for code in new:
            readers = [array_reader(array) for array in arrays[code]]
            readable = all(self._readable(reader) for reader in readers)
            files = sum(reader.n_shards for reader in readers if reader is not None)
            if mapped_files() + files > mapped_files_budget():  # (every dataset's of the process)
                readable = False
            if not readable or len({reader.layout.chunk_len for reader in readers}) != 1:
                self._refused[code] = True
                return False
            self._chunk_len[code] = readers[0].layout.chunk_len
            firsts = [self._add_array(reader) for reader in readers]
            if None in firsts:
                self._refused[code] = True
                return False
            self._base[code] = firsts
            self._added[code] = True
        return True

    def _where(self, entry: int) -> tuple[ShardedArrayReader, int, str]:
        """The reader of table entry ``entry``, the entry's chunk number in its array, and a name for it."""
        firsts = [first for first, _ in self._readers]
        first, reader = self._readers[int(np.searchsorted(firsts, entry, side="right")) - 1]
        chunk = entry - first
        shard, inner = divmod(chunk, reader.layout.chunks_per_shard)
        key = reader.layout.shard_key(reader.path, shard)
        return reader, chunk, f"array {reader.path!r}, shard {key!r}, chunk {inner}"

    def _chunk(self, entry: int) -> np.ndarray:
        f, off, size = self._file.data[entry], self._offset.data[entry], self._size.data[entry]
        return self._files[f][off : off + size]

    def read(
        self, group: np.ndarray, start: np.ndarray, nnz: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(offsets, columns, values)`` of the cells (request order), or None when a group they touch
        cannot be read this way (see the module docstring).

        Raises
        ------
        GroupNotFoundError
            A group removed from the store after the dataset was built.
        ShardFormatError, ChecksumError, CodecError
            A missing shard object, a malformed index, a chunk that does not match its crc32c or cannot be
            decoded; messages name the array, shard object and chunk.
        """
        with self._lock:
            if not self._add_groups(np.unique(group)):
                return None
            files = (self._file_address.data, self._file_size.data)
            table = (self._file.data, self._offset.data, self._size.data)
        nnz = np.asarray(nnz, np.int64)
        base = self._base
        n = group.size
        offsets = np.empty(n + 1, np.int64)
        total = int(nnz.sum())
        columns = np.empty(total, np.int32)
        values = np.empty(total, np.uint32)
        code, entry = read_rows(
            *files,
            *table,
            base,
            self._chunk_len,
            _HEADER,
            self._lut,
            self._lut_start,
            self._monotonic,
            self._zero_fill,
            group,
            start,
            nnz,
            offsets,
            columns,
            values,
        )
        if code == PAST_PANEL:
            raise OutOfBoundsError(
                f"{self._where(int(entry))[2]}: a stored feature index is past its dataset's features: the "
                "shard is not this dataset's (another array's copied over it)"
            )
        if code:  # a bad crc32c or BP-128 chunk: the stage-by-stage decode raises the error that names it
            reader, _, name = self._where(int(entry))
            raw = self._chunk(int(entry))
            decode_chunks(reader.layout, raw, np.zeros(1, np.int64), np.full(1, raw.size), lambda k: name)
            raise CodecError(f"{name}: the chunk was refused by the batch kernel (code {code})")
        kept = int(offsets[-1])
        return offsets, columns[:kept], values[:kept]
