"""Read many element ranges of a 1-D zarr array (or many rows of a 2-D one) in one pass.

Arrays in an obstore-backed store (``zarr.storage.ObjectStore``) are read by the batched
:class:`lancell.shard_reader.ShardedArrayReader`; one reader per (store, array path) is kept in a small LRU so
that repeated queries reuse its metadata and shard indices. Other stores, and layouts that reader does not
handle, take the zarr-python path: ranges are sorted, coalesced into runs (ranges closer than ``max_gap``
elements share one read), each run is read once, and the requested slices are gathered back in request order.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict

import numpy as np
import obstore
import zarr
import zarr.storage
from obstore.store import ObjectStore

from lancell.errors import ShardFormatError
from lancell.shard_reader import ShardedArrayReader

__all__ = ["array_reader", "gather_ranges", "read_element_ranges", "read_rows"]

log = logging.getLogger(__name__)

# Enough for every array of a few hundred dataset groups; a reader holds its shard indices (16 B per chunk).
_MAX_READERS = 512
# (id(obstore store), array path) -> (the store, its reader or None when the layout is not supported). The
# entry holds the store itself, so its id cannot be reused by another store while the entry lives.
_READERS: OrderedDict[tuple[int, str], tuple[object, ShardedArrayReader | None]] = OrderedDict()
_READERS_LOCK = threading.Lock()


# The sharded arrays of a dataset group (lancell.groups, lancell.csc): <group>/csr|csc/indices,
# <group>/csr|csc/layers/<layer> and the dense <group>/layers/<layer>.
_DATASET_ARRAY = re.compile(r"(?P<group>.+?)/(?:(?:csr|csc)/(?:indices|layers/[^/]+)|layers/[^/]+)")


def _written_whole(store: ObjectStore, reader: ShardedArrayReader) -> bool:
    """Whether every shard of the reader's array was written, so that a missing one is damage, not fill.

    True for the arrays of a lancell dataset group whose attributes say it holds values (``nnz > 0``) when
    they are 1-D (CSR / CSC: stored values and their indices, never a whole shard equal to the fill value)
    or their chunks carry a crc32c (written with every chunk, see :func:`lancell.groups.value_codecs`);
    the dense layers of older atlases may have left an all-zero shard unwritten.
    """
    match = _DATASET_ARRAY.fullmatch(reader.path)
    if match is None or not (len(reader.shape) == 1 or reader.layout.chunk_crc):
        return False
    try:
        group = json.loads(bytes(obstore.get(store, f"{match['group']}/zarr.json").bytes()))
        attrs = group.get("attributes", {})
        return "lancell_format" in attrs and int(attrs.get("nnz", 0)) > 0
    except (FileNotFoundError, ValueError, TypeError, AttributeError):
        return False


def _matches(reader: ShardedArrayReader, array: zarr.Array) -> bool:
    """Whether ``reader`` still describes ``array`` (an array re-created at the same path does not)."""
    layout = reader.layout
    return (
        layout.shape == tuple(array.shape)
        and layout.dtype == array.dtype
        and layout.chunk_shape == tuple(array.chunks)
        and layout.shard_shape == tuple(array.shards or ())
    )


def array_reader(array: zarr.Array) -> ShardedArrayReader | None:
    """The cached batched reader of ``array``, or None when it must be read through zarr-python.

    None for arrays outside a ``zarr.storage.ObjectStore`` and for layouts the batched reader does not handle
    (unsharded arrays, unsupported codecs). The reader of a dataset array every shard of which was written
    is ``complete``: it raises ``ShardFormatError`` on a missing shard object instead of returning zeros.
    """
    store = array.store
    if not isinstance(store, zarr.storage.ObjectStore):
        return None
    inner = store.store
    key = (id(inner), array.path)
    with _READERS_LOCK:
        entry = _READERS.get(key)
        if entry is not None and entry[0] is inner and (entry[1] is None or _matches(entry[1], array)):
            _READERS.move_to_end(key)
            return entry[1]
    try:
        reader: ShardedArrayReader | None = ShardedArrayReader(inner, array.path)
        reader.complete = _written_whole(inner, reader)
    except ShardFormatError as e:
        log.debug("reading %s through zarr-python: %s", array.path, e)
        reader = None
    with _READERS_LOCK:
        _READERS[key] = (inner, reader)
        _READERS.move_to_end(key)
        while len(_READERS) > _MAX_READERS:
            _READERS.popitem(last=False)
    return reader


def coalesce(starts: np.ndarray, ends: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted-by-start ranges into runs ``[run_start, run_end)`` with gaps below ``max_gap``."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    breaks = np.flatnonzero(s[1:] > reach[:-1] + max_gap) + 1
    run_starts = s[np.concatenate(([0], breaks))]
    run_ends = reach[np.concatenate((breaks - 1, [len(s) - 1]))]
    return run_starts, run_ends


def gather_ranges(buffer: np.ndarray, buffer_offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``buffer[o:o+n]`` for each ``(o, n)`` in order, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return buffer[:0].copy()
    out_offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    index = np.arange(total, dtype=np.int64) + np.repeat(buffer_offsets - out_offsets, lengths)
    return buffer[index]


def read_element_ranges(
    array: zarr.Array, starts: np.ndarray, ends: np.ndarray, *, max_gap: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(flat, lengths)``: ``flat`` is ``array[s:e]`` for every range concatenated in request order.

    Parameters
    ----------
    array
        A 1-D zarr array.
    starts, ends
        int64 arrays of equal length, ``0 <= start <= end <= array.shape[0]``.
    max_gap
        Ranges whose gap is smaller are read together (default: one inner chunk); only used by the
        zarr-python path, the batched reader reads each needed chunk once whatever the gaps.

    Raises
    ------
    lancell.errors.OutOfBoundsError
        If a range lies outside the array (batched path).
    """
    reader = array_reader(array)
    if reader is not None:
        return reader.read_ranges(starts, ends)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    lengths = ends - starts
    if starts.size == 0 or int(lengths.sum()) == 0:
        return np.zeros(0, dtype=array.dtype), lengths
    nonempty = lengths > 0
    gap = int(array.chunks[0]) if max_gap is None else max_gap
    run_starts, run_ends = coalesce(starts[nonempty], ends[nonempty], gap)
    parts = [np.asarray(array[int(a) : int(b)]) for a, b in zip(run_starts, run_ends, strict=True)]
    buffer = np.concatenate(parts) if len(parts) > 1 else parts[0]
    run_base = np.concatenate(([0], np.cumsum(run_ends - run_starts)[:-1]))
    run_of = np.searchsorted(run_starts, starts, side="right") - 1
    offsets = np.where(
        nonempty, run_base[np.maximum(run_of, 0)] + starts - run_starts[np.maximum(run_of, 0)], 0
    )
    return gather_ranges(buffer, offsets, lengths), lengths


def read_rows(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows of a 2-D zarr array in request order (each distinct row's chunk decoded once)."""
    reader = array_reader(array)
    if reader is not None:
        return reader.read_rows(rows)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0, array.shape[1]), dtype=array.dtype)
    unique, inverse = np.unique(rows, return_inverse=True)
    block = array.get_orthogonal_selection((unique, slice(None)))
    return np.asarray(block)[inverse]
