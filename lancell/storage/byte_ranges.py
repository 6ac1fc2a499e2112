"""Positional reads of byte ranges from the files of a local store.

On local disk an ``obstore.get_ranges`` call costs 70-120 µs however small the ranges (it goes through
obstore's runtime, opens and stats the file), while ``open`` + ``os.pread`` + ``close`` of the same four
chunks takes about 7 µs and releases the GIL in the system calls. The batched reader
(:mod:`lancell.storage.shard_reader`) makes one such call per touched shard, so for a random training batch
(hundreds of shards) this is most of the read time. Ranges that touch or nearly touch are read with one
``pread`` and handed out as views.

Keys are mapped to files only when they are plain (letters, digits, ``._-`` and ``/``, no ``.``/``..``
parts), where obstore's mapping is the identity; any other key, and every non-local store, goes through
obstore.
"""

from __future__ import annotations

import os
import re

import numpy as np
from obstore.store import LocalStore, ObjectStore

from lancell.errors import ShardFormatError

__all__ = ["local_path", "pread_edge", "pread_ranges"]

# Ranges closer than this many bytes are read by one pread (reading a few KiB more from the page cache is
# cheaper than another system call).
_MERGE_GAP = 16 * 1024
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")


def local_path(store: ObjectStore, key: str) -> str | None:
    """The file (or directory) behind ``key`` in a local store with a root; None when obstore must be used.

    A directory's plain child keys map to ``f"{local_path(store, key)}/{child}"``.
    """
    key = key.strip("/")
    if not isinstance(store, LocalStore) or store.prefix is None or not _PLAIN_KEY.fullmatch(key):
        return None
    if any(part in (".", "..") for part in key.split("/")):
        return None
    return os.path.join(os.fspath(store.prefix), key)


def _pread_exact(fd: int, nbytes: int, offset: int, path: str) -> bytes:
    data = os.pread(fd, nbytes, offset)
    if len(data) != nbytes:
        raise ShardFormatError(
            f"{path}: wanted {nbytes} bytes at offset {offset}, the file ends {len(data)} bytes after it"
        )
    return data


def pread_ranges(path: str, starts: np.ndarray, ends: np.ndarray) -> list[memoryview]:
    """The bytes ``[starts[i], ends[i])`` of file ``path`` (int64 arrays), as buffers in request order.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ShardFormatError
        If a range reaches past the end of the file.
    """
    order = np.argsort(starts, kind="stable")
    s, e = starts[order].tolist(), ends[order].tolist()
    out: list = [None] * len(s)
    fd = os.open(path, os.O_RDONLY)
    try:
        first = 0
        while first < len(s):
            base, reach, last = s[first], e[first], first + 1
            while last < len(s) and s[last] <= reach + _MERGE_GAP:
                reach = max(reach, e[last])
                last += 1
            run = memoryview(_pread_exact(fd, reach - base, base, path))
            for i in range(first, last):
                out[int(order[i])] = run[s[i] - base : e[i] - base]
            first = last
    finally:
        os.close(fd)
    return out


def pread_edge(path: str, nbytes: int, *, at_end: bool) -> tuple[bytes, int]:
    """The last (``at_end``) or first ``nbytes`` bytes of file ``path`` (fewer if shorter), and its size.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - nbytes) if at_end else 0
        return os.pread(fd, min(nbytes, size - start), start), size
    finally:
        os.close(fd)
