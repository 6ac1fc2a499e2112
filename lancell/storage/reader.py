"""Read many element ranges of a 1-D zarr array (or many rows of a 2-D one) in one pass.

Arrays in an obstore-backed store (``zarr.storage.ObjectStore``) are read by the batched
:class:`lancell.storage.shard_reader.ShardedArrayReader`; one reader per (zarr store, array path) is kept in
a small LRU while that store lives, so that repeated queries reuse its metadata and shard indices, and told
once, by :func:`written_whole`, whether a missing shard object of its array is damage. Other stores, and
layouts that reader does not handle, take the zarr-python path: ranges are sorted, coalesced into runs
(ranges closer than ``max_gap`` elements share one read), each run is read once, and the requested slices
are gathered back in request order.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from typing import TYPE_CHECKING

import numpy as np
import obstore
import zarr
import zarr.storage
from obstore.store import ObjectStore

from lancell.errors import ShardFormatError
from lancell.storage.bounded_cache import BoundedCache
from lancell.storage.groups import FORMAT_VERSION
from lancell.storage.nodes import written_dtype
from lancell.storage.shard_reader import ShardedArrayReader

if TYPE_CHECKING:
    from lancell.storage.shard_layout import ShardLayout

__all__ = [
    "array_reader",
    "gather_ranges",
    "read_element_ranges",
    "read_rows",
    "written_whole",
]

log = logging.getLogger(__name__)

# Every array of an atlas of a few thousand datasets (CELLxGENE holds ~1,500; each has 2-4 arrays): a query or
# an epoch cycling through more readers than this evicts each before its next use (at 512, past 256 datasets
# every reader was built again, ~5 store requests each). A reader holds the shard indices it read, 16 B per
# chunk of 4,096 values: ~40 MiB per 10^10 values read, however many datasets hold them.
_MAX_READERS = 16_384
# (id(zarr store), array path) -> (a weak reference to that zarr store, its reader or None when the layout is
# not supported). The zarr store is a handle's own (an atlas handle's root, a CellDataset's in each process):
# its entries go soon after it does (_watch), so no reader keeps a closed handle's obstore store and its
# connections (a service that opened the atlas for each request kept every one: ~4 sockets a request on S3,
# out of file descriptors after ~250 requests).
_READERS: BoundedCache[tuple[int, str], tuple[weakref.ref, ShardedArrayReader | None]] = BoundedCache(
    _MAX_READERS
)
_WATCHED: dict[int, weakref.ref] = {}  # id -> the zarr store a finalizer watches (one finalizer per store)
_WATCHED_LOCK = threading.Lock()
# ids of collected zarr stores whose entries are yet to be forgotten: a finalizer runs wherever the collector
# does, inside any lock (the cache's own among them), so it only appends here, and lookups forget
_COLLECTED: list[int] = []


def _watch(store: zarr.storage.ObjectStore) -> None:
    """Have ``store``'s readers forgotten once it is collected."""
    with _WATCHED_LOCK:
        watched = _WATCHED.get(id(store))
        if watched is not None and watched() is store:
            return
        _WATCHED[id(store)] = weakref.ref(store)
    weakref.finalize(store, _COLLECTED.append, id(store))


def _forget_collected() -> None:
    """Forget the entries of the zarr stores collected since the last call."""
    if not _COLLECTED:
        return
    gone = set()
    while True:  # (pop alone: another thread may empty the list between a test and a pop)
        try:
            gone.add(_COLLECTED.pop())
        except IndexError:
            break
    _READERS.forget_where(lambda key: key[0] in gone)  # (a new store under a reused id reads its own again)
    with _WATCHED_LOCK:
        for store_id in gone:
            if (watched := _WATCHED.get(store_id)) is not None and watched() is None:
                del _WATCHED[store_id]


def _dataset_group(store: ObjectStore, path: str) -> tuple[str, dict] | None:
    """``(the array's path in its dataset group, the group's attributes)``, for the lancell dataset group that
    holds the array at ``path`` (the nearest enclosing group whose attributes carry ``lancell_format``:
    lancell.storage.groups writes it on every dataset group; the atlas root carries it too, but no ``nnz``),
    or None.

    Raises
    ------
    ShardFormatError
        If an enclosing group's ``zarr.json`` is not a JSON object.
    """
    parts = path.strip("/").split("/")
    for depth in range(len(parts) - 1, -1, -1):
        key = "/".join([*parts[:depth], "zarr.json"])
        try:
            meta = json.loads(bytes(obstore.get(store, key).bytes()))
        except FileNotFoundError:
            continue
        except ValueError as e:
            raise ShardFormatError(f"{key}: not a zarr.json ({e})") from e
        attrs = meta.get("attributes") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or not isinstance(attrs, dict | None):
            raise ShardFormatError(f"{key}: not a zarr.json object with attributes")
        if attrs and "lancell_format" in attrs:
            return "/".join(parts[depth:]), attrs
    return None


def written_whole(group_attrs: dict | None, layout: ShardLayout) -> bool:
    """Whether every shard of a dataset array was written, so that a missing shard object is damage, not fill.

    The one rule (docs/integrity.md, "Missing shards"), from what the writer recorded: an array of a lancell
    dataset group (``group_attrs``, see :func:`_dataset_group`) that holds values (``nnz > 0``) whose
    chunks carry a crc32c (written with every chunk, see :func:`lancell.storage.groups.value_codecs`) or that
    is 1-D (CSR / CSC: stored values and their indices never fill a whole shard with the fill value); the
    dense layers of older atlases may have left an all-zero shard unwritten.
    """
    if not group_attrs or "lancell_format" not in group_attrs:
        return False
    try:
        nnz = int(group_attrs.get("nnz", 0))
    except (TypeError, ValueError):
        raise ShardFormatError(f"dataset group attribute nnz is {group_attrs['nnz']!r}") from None
    return nnz > 0 and (len(layout.shape) == 1 or layout.chunk_crc)


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
    _forget_collected()
    key = (id(store), array.path)
    entry = _READERS.get(key)
    if entry is not None and entry[0]() is store and (entry[1] is None or _matches(entry[1], array)):
        return entry[1]
    relative, attrs = _dataset_group(inner, array.path) or ("", None)
    try:
        reader: ShardedArrayReader | None = ShardedArrayReader(inner, array.path)
    except ShardFormatError as e:
        if (
            attrs is not None
            and attrs.get("lancell_format") == FORMAT_VERSION
            and written_dtype(attrs, relative) is not None
        ):
            # lancell writes every such array in a layout the reader handles: zarr-python would read an
            # edited one (another byte order, say) as other numbers
            raise ShardFormatError(f"array {array.path!r} is not stored as lancell writes it: {e}") from e
        log.debug("reading %s through zarr-python: %s", array.path, e)
        reader = None
    else:
        expected = None if attrs is None else written_dtype(attrs, relative)
        if expected is not None and reader.layout.dtype != expected:  # decoding would misread every value
            raise ShardFormatError(
                f"array {array.path!r} stores {reader.layout.dtype}; "
                + (
                    "lancell writes uint32"
                    if relative.endswith("indices")
                    else f"the dataset's group says {expected}"
                )
            )
        reader.complete = written_whole(attrs, reader.layout)
    _watch(store)
    _READERS.put(key, (weakref.ref(store), reader))
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
