"""Batched reads of sharded zarr v3 arrays straight from an obstore store (docs/architecture.md, "Reading").

Many ``[start, end)`` element ranges of one array are cut at inner-chunk boundaries (:mod:`kernels.gather`);
each touched shard's index is read once and cached; all needed chunks of a shard come back from **one**
``obstore.get_ranges`` call (``pread`` on local disk, :mod:`lancell.storage.byte_ranges`); shards are fetched
concurrently on a thread pool, and each task decodes its shard's chunks through the one decode path
(:mod:`lancell.storage.shard_decode`: zstd and BP-128 release the GIL, a chunk's crc32c takes well under a
microsecond) and scatters them into one flat output in request order right after decoding. Whole-shard reads
(:meth:`ShardedArrayReader.read_shard`, the CSC builder's) decode through the same path.
Threads with blocking calls beat obstore's asyncio calls here: each awaited call costs event-loop wake-ups,
about twice the time of a local ``get_ranges`` itself. On local disk, where a read takes microseconds, one
task per shard costs more in thread hand-offs and GIL contention than the reads (a random training batch
took 2.5x the CPU of reading it in one thread), so local reads run in at most one task per core, and in the
calling thread when small.

Format facts (zarr v3 ``sharding_indexed``): a shard object holds its chunks' encoded bytes and an index
(:mod:`lancell.storage.shard_index`, checked completely before any chunk is fetched). A missing shard object
means every chunk of it is missing and reads as the fill value, unless the reader is told the array was
written ``complete`` (:func:`lancell.storage.reader.written_whole`): then it is an error. Edge chunks are
stored at full chunk size.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import obstore
from obstore.store import ObjectStore

from kernels import gather
from lancell.cores import USABLE_CORES
from lancell.errors import GroupNotFoundError, OutOfBoundsError, ShardFormatError
from lancell.storage.byte_ranges import local_path, pread_edge, pread_ranges
from lancell.storage.shard_decode import decode_chunks, decode_shard, join_buffers, read_index, shard_elements
from lancell.storage.shard_index import MISSING
from lancell.storage.shard_layout import parse_layout

__all__ = ["MISSING", "ShardedArrayReader"]

# A decode task takes at least this many chunks of one shard, so that small tasks do not drown in overhead.
_MIN_CHUNKS_PER_TASK = 4
# On local disk a task fetches and decodes at least this many chunks (~7 µs each); smaller reads run inline.
_LOCAL_CHUNKS_PER_TASK = 64
# A local read decodes at most this many chunks at a time per task (16 MB of 4,096 4-byte values).
_DECODED_CHUNKS = 1_024
# Requests in flight per process (local disk on 2 cores: 8-16 is best; remote stores hide latency with them).
READ_THREADS = 16


def _at_most(requests: list[tuple], limit: int) -> Iterator[list[tuple]]:
    """``requests`` (``(shard, slots, entries)``, in order) in batches of at most ``limit`` chunks (a shard's
    chunks split across batches where needed)."""
    batch: list[tuple] = []
    size = 0
    for shard, slots, entries in requests:
        for lo in range(0, slots.size, limit):
            part = (shard, slots[lo : lo + limit], entries[lo : lo + limit])
            if batch and size + part[1].size > limit:
                yield batch
                batch, size = [], 0
            batch.append(part)
            size += part[1].size
    if batch:
        yield batch


def _pool() -> ThreadPoolExecutor:
    """The process-wide pool that fetches and decodes shards (``READ_THREADS`` threads)."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(READ_THREADS, thread_name_prefix="lancell-read"))
        return _POOL[0]


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()
# A forked child inherits the pool object but not its threads.
os.register_at_fork(after_in_child=_POOL.clear)


def _as_int64(values: Any, name: str, path: str) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise OutOfBoundsError(f"{path}: {name} must be a 1-D integer array, got {array.dtype} {array.shape}")
    if array.dtype == np.uint64 and int(array.max()) > np.iinfo(np.int64).max:
        raise OutOfBoundsError(f"{path}: {name} holds {int(array.max())}, beyond any array")
    return np.ascontiguousarray(array, dtype=np.int64)


class ShardedArrayReader:
    """Batched reader of one sharded zarr v3 array in an obstore store.

    Parameters
    ----------
    store
        The obstore store holding the zarr hierarchy (the ``store.store`` of a ``zarr.storage.ObjectStore``).
    path
        The array's path inside the store (``zarr.Array.path``); ``<path>/zarr.json`` is read once.
    complete
        Whether every shard of the array was written (lancell's dataset arrays): a missing shard object is
        then an error rather than fill values.

    Attributes
    ----------
    complete : bool
        As the parameter; :func:`lancell.storage.reader.array_reader` sets it by
        :func:`lancell.storage.reader.written_whole`.
    get_ranges_calls, index_reads, shards_touched, chunks_decoded, bytes_fetched : int
        Cumulative request accounting (exact when calls do not overlap): one ``get_ranges`` per touched
        shard that holds a needed chunk, one index read per shard over the reader's life.

    Raises
    ------
    ShardFormatError
        If ``zarr.json`` is missing or describes a layout this reader does not handle (see
        :func:`lancell.storage.shard_layout.parse_layout`); when reading, if a shard index is malformed or a
        shard of a ``complete`` array is missing.

    Notes
    -----
    Parsed shard indices are cached for the reader's life: lancell writes each array once.
    """

    def __init__(self, store: ObjectStore, path: str, *, complete: bool = False) -> None:
        self.store = store
        self.path = path.strip("/")
        self.complete = complete
        try:
            meta = json.loads(bytes(obstore.get(store, f"{self.path}/zarr.json").bytes()))
        except FileNotFoundError as e:
            raise ShardFormatError(f"{self.path}: no zarr.json in the store") from e
        self.layout = parse_layout(meta, self.path)
        # The array's directory when its shards are local files read with pread, else None.
        self._files = local_path(store, self.path)
        self._indices: dict[int, np.ndarray | None] = {}
        self.get_ranges_calls = self.index_reads = self.shards_touched = 0
        self.chunks_decoded = self.bytes_fetched = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return self.layout.shape

    @property
    def dtype(self) -> np.dtype:
        return self.layout.dtype

    def read_ranges(self, starts: Any, ends: Any) -> tuple[np.ndarray, np.ndarray]:
        """Read element ranges ``[starts[i], ends[i])`` (of the C-order flattened array when 2-D).

        Parameters
        ----------
        starts, ends
            1-D integer arrays of equal length, ``0 <= start <= end <= size``, in any order; duplicates
            and empty ranges are fine.

        Returns
        -------
        tuple of np.ndarray
            ``(flat, lengths)``: the ranges' elements concatenated in request order (the array's dtype)
            and ``ends - starts`` (int64).

        Raises
        ------
        OutOfBoundsError
            If a range lies outside the array or ``starts``/``ends`` are not integer arrays of one length.
        ChecksumError
            If a shard index (or a chunk with a crc32c codec) does not match its checksum.
        CodecError
            If a chunk cannot be decoded.
        """
        layout = self.layout
        starts = _as_int64(starts, "starts", self.path)
        ends = _as_int64(ends, "ends", self.path)
        size = int(np.prod(layout.shape))
        if starts.shape != ends.shape:
            raise OutOfBoundsError(f"{self.path}: {starts.size} starts but {ends.size} ends")
        bad = np.flatnonzero((starts < 0) | (ends < starts) | (ends > size))
        if bad.size:
            i = int(bad[0])
            raise OutOfBoundsError(
                f"{self.path}: range {i} [{starts[i]}, {ends[i]}) is not within [0, {size}) "
                f"({bad.size} such ranges)"
            )
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, layout.dtype), lengths
        pieces = gather.sort_pieces(*gather.plan_pieces(starts, ends, layout.chunk_len))
        return self._read(pieces, total), lengths

    def read_rows(self, rows: Any) -> np.ndarray:
        """Rows of a 2-D array in request order (duplicates allowed): shape ``(len(rows), n_columns)``.

        Raises
        ------
        OutOfBoundsError
            If a row is negative or beyond the array, or the array is not 2-D.
        """
        if len(self.layout.shape) != 2:
            raise OutOfBoundsError(f"{self.path}: read_rows needs a 2-D array, this one is {self.shape}")
        rows = _as_int64(rows, "rows", self.path)
        n_rows, n_columns = self.layout.shape
        bad = np.flatnonzero((rows < 0) | (rows >= n_rows))
        if bad.size:
            raise OutOfBoundsError(f"{self.path}: row {rows[bad[0]]} is not within [0, {n_rows})")
        flat, _ = self.read_ranges(rows * n_columns, (rows + 1) * n_columns)
        return flat.reshape(rows.size, n_columns)

    def _read(self, pieces: tuple[np.ndarray, ...], total: int) -> np.ndarray:
        """Read the pieces of :func:`kernels.gather.sort_pieces` into a new output of ``total`` elements."""
        layout = self.layout
        chunks = pieces[0]
        pool = _pool()
        shard_of = chunks // layout.chunks_per_shard
        cuts = np.flatnonzero(np.diff(shard_of)) + 1
        firsts = np.concatenate(([0], cuts)).tolist()
        lasts = np.concatenate((cuts, [chunks.size])).tolist()
        shards = shard_of[firsts].tolist()
        self.shards_touched += len(shards)
        unknown = [s for s in shards if s not in self._indices]
        loaded = map(self._load_index, unknown) if self._files else pool.map(self._load_index, unknown)
        for shard, index in zip(unknown, loaded, strict=True):
            self._indices[shard] = index
            self.index_reads += index is not None
        requests = []
        complete = True
        for shard, first, last in zip(shards, firsts, lasts, strict=True):
            index = self._indices[shard]
            if index is None:
                complete = False
                continue
            slots = np.arange(first, last)
            entries = index[chunks[first:last] - shard * layout.chunks_per_shard]
            present = entries[:, 0] != MISSING
            complete &= bool(present.all())
            if present.any():
                requests.append((shard, slots[present], entries[present]))
        out = np.empty(total, layout.dtype) if complete else np.full(total, layout.fill_value, layout.dtype)
        plan = (*pieces, out)
        if self._files:
            self._read_local(requests, plan)
        else:
            self._read_remote(requests, plan)
        self.get_ranges_calls += len(requests)
        self.chunks_decoded += sum(slots.size for _, slots, _ in requests)
        self.bytes_fetched += sum(int(entries[:, 1].sum()) for _, _, entries in requests)
        return out

    def _read_remote(self, requests: list[tuple], plan: tuple) -> None:
        """One pool task per shard (latency hiding); a large shard's decoding is split further."""
        pool = _pool()
        fetches = [
            pool.submit(self._fetch, shard, slots, entries, plan) for shard, slots, entries in requests
        ]
        # A fetch hands the decoding of a large shard's other chunk groups to the pool without waiting for
        # them (a pool task that waited on the pool could deadlock it); collect those last.
        decodes = [decode for fetch in fetches for decode in fetch.result()]
        for decode in decodes:
            decode.result()

    def _read_local(self, requests: list[tuple], plan: tuple) -> None:
        """Split the shards into at most one run per core, of ``_LOCAL_CHUNKS_PER_TASK`` chunks or more.

        The calling thread reads the first run itself, so a small read never touches the pool.
        """
        sizes = np.cumsum([slots.size for _, slots, _ in requests])
        if sizes.size == 0:
            return
        n_runs = int(min(USABLE_CORES, max(1, sizes[-1] // _LOCAL_CHUNKS_PER_TASK), len(requests)))
        cuts = np.searchsorted(sizes, sizes[-1] * np.arange(1, n_runs) / n_runs, side="left") + 1
        bounds = np.unique(np.concatenate(([0], cuts, [len(requests)]))).tolist()
        runs = [requests[a:b] for a, b in itertools.pairwise(bounds)]
        others = [_pool().submit(self._read_run, run, plan) for run in runs[1:]]
        self._read_run(runs[0], plan)
        for other in others:
            other.result()

    def _read_run(self, requests: list[tuple], plan: tuple) -> None:
        """Fetch the needed chunks of some local shards, one shard after another, and decode them, at most
        ``_DECODED_CHUNKS`` at a time (decoded chunks are held until their pieces are copied out: 100,000
        cells spread over 1M touched every chunk of the dataset, ~400 MB an array, for a 114 MB matrix)."""
        for batch in _at_most(requests, _DECODED_CHUNKS):
            buffers = []
            for shard, _, entries in batch:
                key = self.layout.shard_key(self.path, shard)
                starts = entries[:, 0].astype(np.int64)
                try:
                    buffers += pread_ranges(self._file(key), starts, starts + entries[:, 1].astype(np.int64))
                except FileNotFoundError:
                    self._require_array()
                    raise ShardFormatError(
                        f"array {self.path!r}, shard {key!r}: the shard object is gone"
                    ) from None
            self._decode(buffers, np.concatenate([slots for _, slots, _ in batch]), plan)

    def _file(self, key: str) -> str:
        """The local file of shard object ``key`` (only when ``self._files`` is set)."""
        return f"{self._files}{key[len(self.path) :]}"

    def _load_index(self, shard: int) -> np.ndarray | None:
        """The shard's checked index (``(chunks_per_shard, 2)`` uint64), None if the shard object is missing.

        Raises
        ------
        ShardFormatError, ChecksumError
            A missing object of a ``complete`` array; else see
            :func:`lancell.storage.shard_decode.read_index`.
        """
        layout = self.layout
        key = layout.shard_key(self.path, shard)
        nbytes = layout.index_nbytes
        try:
            if self._files:
                raw, size = pread_edge(self._file(key), nbytes, at_end=layout.index_at_end)
            else:
                edge = {"suffix": nbytes} if layout.index_at_end else (0, nbytes)
                result = obstore.get(self.store, key, options={"range": edge})
                raw, size = result.bytes(), int(result.meta["size"])
        except FileNotFoundError:
            self._missing(key)
            return None
        return read_index(layout, raw, size, f"array {self.path!r}, shard {key!r}")

    def _missing(self, key: str) -> None:
        """A shard object is missing: an error when the array is gone or every shard of it was written, else
        fill values."""
        self._require_array()
        if self.complete:
            raise ShardFormatError(
                f"array {self.path!r}, shard {key!r}: the shard object is missing, but every shard of this "
                "array was written"
            )

    def _require_array(self) -> None:
        """Raise :class:`GroupNotFoundError` when the array's ``zarr.json`` is gone: its group was removed
        after this reader opened it (a vacuum), so its shards are missing, not damaged or never written."""
        try:
            obstore.head(self.store, f"{self.path}/zarr.json")
        except FileNotFoundError:
            raise GroupNotFoundError(
                f"array {self.path!r}: its zarr group was removed from the store after it was opened "
                "(vacuum() removes the groups of deleted datasets and of deleted snapshots): open the atlas "
                "again, or check out a snapshot that still exists"
            ) from None

    @property
    def n_shards(self) -> int:
        """Shard objects along the first axis."""
        return -(-self.layout.shape[0] // self.layout.shard_shape[0])

    def local_shard(self, shard: int) -> tuple[str, np.ndarray] | None:
        """The file of shard ``shard`` and its checked index (``(chunks_per_shard, 2)`` uint64, cached).

        None when the store is not local disk or the shard object is missing from an array not written whole
        (every chunk then reads as the fill value); for memory-mapped reads of local arrays.

        Raises
        ------
        OutOfBoundsError
            If the array has no shard ``shard``.
        ShardFormatError, ChecksumError
            A missing object of a ``complete`` array, or a malformed index.
        """
        if not 0 <= shard < self.n_shards:
            raise OutOfBoundsError(f"{self.path}: shard {shard} is not within [0, {self.n_shards})")
        if not self._files:
            return None
        if shard not in self._indices:
            self._indices[shard] = self._load_index(shard)
            self.index_reads += self._indices[shard] is not None
        index = self._indices[shard]
        return None if index is None else (self._file(self.layout.shard_key(self.path, shard)), index)

    def read_shard(self, shard: int) -> np.ndarray:
        """Every element of shard ``shard`` (flattened in C order), its object fetched whole by one request.

        For whole-array passes (the CSC builder): nothing is cached, and the decode is
        :func:`lancell.storage.shard_decode.decode_shard`'s.

        Raises
        ------
        OutOfBoundsError
            If the array has no shard ``shard``.
        ShardFormatError, ChecksumError, CodecError
            A missing object of a ``complete`` array, a malformed index or a damaged chunk.
        """
        if not 0 <= shard < self.n_shards:
            raise OutOfBoundsError(f"{self.path}: shard {shard} is not within [0, {self.n_shards})")
        key = self.layout.shard_key(self.path, shard)
        try:
            raw = np.frombuffer(obstore.get(self.store, key).bytes(), np.uint8)
        except FileNotFoundError:
            self._missing(key)
            return np.full(shard_elements(self.layout, shard), self.layout.fill_value, self.layout.dtype)
        return decode_shard(self.layout, raw, shard, self.path)

    def _fetch(self, shard: int, slots: np.ndarray, entries: np.ndarray, plan: tuple) -> list[Future]:
        """Fetch a shard's needed chunks with one ``get_ranges``; decode them (runs on a pool thread)."""
        key = self.layout.shard_key(self.path, shard)
        starts = entries[:, 0].astype(np.int64)
        ends = starts + entries[:, 1].astype(np.int64)
        try:
            buffers = obstore.get_ranges(self.store, key, starts=starts.tolist(), ends=ends.tolist())
        except FileNotFoundError:
            self._require_array()
            raise ShardFormatError(f"array {self.path!r}, shard {key!r}: the shard object is gone") from None
        step = max(_MIN_CHUNKS_PER_TASK, -(-slots.size // USABLE_CORES))
        pool = _pool()
        others = [
            pool.submit(self._decode, buffers[i : i + step], slots[i : i + step], plan)
            for i in range(step, slots.size, step)
        ]
        self._decode(buffers[:step], slots[:step], plan)
        return others

    def _decode(self, buffers: list, slots: np.ndarray, plan: tuple) -> None:
        """Decode chunks (``buffers[k]``: the chunk of ``slots[k]``) and scatter their pieces into the output.

        The chunks are decoded back to back into one buffer
        (:func:`lancell.storage.shard_decode.decode_chunks`) and scattered by one kernel call.
        """
        layout = self.layout
        chunks, bounds, src, dst, length, out = plan

        def where(k: int) -> str:
            shard, chunk = divmod(int(chunks[slots[k]]), layout.chunks_per_shard)
            return f"array {self.path!r}, shard {layout.shard_key(self.path, shard)!r}, chunk {chunk}"

        decoded = decode_chunks(layout, *join_buffers(buffers), where)
        gather.copy_chunk_pieces(decoded, layout.chunk_len, slots, bounds, src, dst, length, out)
