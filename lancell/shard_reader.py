"""Batched reads of sharded zarr v3 arrays straight from an obstore store (DESIGN §2, "Reading").

Many ``[start, end)`` element ranges of one array are cut at inner-chunk boundaries (:mod:`kernels.gather`);
each touched shard's index is read once and cached; all needed chunks of a shard come back from **one**
``obstore.get_ranges`` call; shards are fetched concurrently on a thread pool, and each task decodes its
shard's chunks (:data:`lancell.codecs.BYTES_DECODERS`: zstd and BP-128 release the GIL, a chunk's crc32c takes
well under a microsecond) and scatters them into one flat output in request order right after decoding.
Threads with blocking calls beat obstore's asyncio calls here: each awaited call costs event-loop wake-ups,
about twice the time of a local ``get_ranges`` itself.

Format facts (zarr v3 ``sharding_indexed``): a shard object holds its chunks' encoded bytes and an index
(:mod:`lancell.shard_index`, checked completely before any chunk is fetched). A missing shard object means
every chunk of it is missing and reads as the fill value, unless the reader is told the array was written
``complete``: then it is an error. Edge chunks are stored at full chunk size.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import obstore
from obstore.store import ObjectStore

from kernels import gather
from lancell.codecs import BYTES_DECODERS
from lancell.errors import CodecError, OutOfBoundsError, ShardFormatError
from lancell.shard_index import MISSING, index_nbytes, parse_index

__all__ = ["MISSING", "ShardedArrayReader"]

# A decode task takes at least this many chunks of one shard, so that small tasks do not drown in overhead.
_MIN_CHUNKS_PER_TASK = 4
# Requests in flight per process (local disk on 2 cores: 8-16 is best; remote stores hide latency with them).
READ_THREADS = 16
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_FLOAT_WORDS = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}


@dataclass(frozen=True)
class _Layout:
    """What the reader needs from ``zarr.json``; 2-D arrays are read as their flattened C-order elements."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    chunk_shape: tuple[int, ...]
    shard_shape: tuple[int, ...]
    chunk_len: int
    chunks_per_shard: int
    stages: tuple[Callable[[np.ndarray], np.ndarray], ...]
    index_crc: bool
    index_at_end: bool
    key_prefix: str
    key_separator: str

    @property
    def index_nbytes(self) -> int:
        return index_nbytes(self.chunks_per_shard, self.index_crc)

    @property
    def chunk_crc(self) -> bool:
        """Whether every chunk's stored bytes end in a crc32c (checked before anything decodes them)."""
        return self.stages[:1] == (BYTES_DECODERS["crc32c"],)

    def shard_key(self, path: str, shard: int) -> str:
        """The object key of shard ``shard`` (along the first axis) of the array at ``path``."""
        coords = [str(shard)] + ["0"] * (len(self.shape) - 1)
        return f"{path}/{self.key_prefix}{self.key_separator.join(coords)}"


def _named(codec: Any, path: str) -> tuple[str, dict[str, Any]]:
    if isinstance(codec, str):
        return codec, {}
    if not isinstance(codec, dict) or not isinstance(codec.get("name"), str):
        raise ShardFormatError(f"{path}: malformed codec entry {codec!r}")
    return codec["name"], dict(codec.get("configuration") or {})


def _parse_fill(value: Any, dtype: np.dtype, path: str) -> Any:
    try:
        if isinstance(value, str) and dtype.kind == "f" and value in _FLOAT_WORDS:
            return dtype.type(_FLOAT_WORDS[value])
        if isinstance(value, str) and dtype.kind == "f" and value.startswith("0x"):
            raw = int(value, 16).to_bytes(dtype.itemsize, "big")
            return np.frombuffer(raw, dtype.newbyteorder(">"))[0].astype(dtype)
        if isinstance(value, bool | int | float):
            return dtype.type(value)
    except (OverflowError, ValueError) as e:
        raise ShardFormatError(f"{path}: fill value {value!r} does not fit {dtype}") from e
    raise ShardFormatError(f"{path}: unsupported fill value {value!r} for {dtype}")


def parse_layout(meta: dict[str, Any], path: str) -> _Layout:
    """Check that ``meta`` (an array's ``zarr.json``) describes a layout the reader handles, and digest it.

    Raises
    ------
    ShardFormatError
        Unless the array is a zarr v3 1-D array, or 2-D array with whole-row chunks, of a plain numeric type,
        sharded with ``sharding_indexed`` over the little-endian ``bytes`` serializer followed by any of
        zstd / lancell.bitpacking / crc32c, with a ``bytes`` (+ crc32c) index.
    """
    data_type, shape = meta.get("data_type"), tuple(int(n) for n in meta.get("shape", ()))
    dtype = np.dtype(data_type) if isinstance(data_type, str) and data_type.isidentifier() else None
    if meta.get("zarr_format") != 3 or dtype is None or dtype.kind not in "biuf" or len(shape) not in (1, 2):
        raise ShardFormatError(f"{path}: not a 1-D or 2-D zarr v3 array of numbers ({data_type!r}, {shape})")
    codecs = meta.get("codecs", [])
    if (
        len(codecs) != 1
        or _named(codecs[0], path)[0] != "sharding_indexed"
        or meta.get("storage_transformers")
    ):
        raise ShardFormatError(f"{path}: the array is not simply sharded (codecs {codecs!r})")
    grid_name, grid = _named(meta.get("chunk_grid"), path)
    sharding = _named(codecs[0], path)[1]
    shard_shape = tuple(int(n) for n in grid.get("chunk_shape", ()))
    chunk_shape = tuple(int(n) for n in sharding.get("chunk_shape", ()))
    if (
        grid_name != "regular"
        or not len(shard_shape) == len(chunk_shape) == len(shape)
        or min(chunk_shape) < 1
        or shard_shape[0] % chunk_shape[0]
        or (len(shape) == 2 and not chunk_shape[1] == shard_shape[1] == shape[1])
    ):
        raise ShardFormatError(f"{path}: shards {shard_shape} of chunks {chunk_shape} cannot be read by rows")
    inner = [_named(c, path) for c in sharding.get("codecs", [])]
    index = [_named(c, path) for c in sharding.get("index_codecs", ["bytes", "crc32c"])]
    for chain in (inner, index):
        if not chain or chain[0][0] != "bytes" or chain[0][1].get("endian", "little") != "little":
            raise ShardFormatError(f"{path}: codecs {chain} do not start with a little-endian 'bytes'")
    unknown = [name for name, _ in inner[1:] if name not in BYTES_DECODERS]
    index_rest = [name for name, _ in index[1:]]
    if unknown or index_rest not in ([], ["crc32c"]):
        raise ShardFormatError(
            f"{path}: codecs {unknown or index_rest} are not supported by the batched reader"
        )
    location = sharding.get("index_location", "end")
    key_name, key_config = _named(meta.get("chunk_key_encoding", {"name": "default"}), path)
    if location not in ("start", "end") or key_name not in ("default", "v2"):
        raise ShardFormatError(f"{path}: index location {location!r} / chunk keys {key_name!r} unsupported")
    separator = key_config.get("separator", "/" if key_name == "default" else ".")
    return _Layout(
        shape=shape,
        dtype=dtype,
        fill_value=_parse_fill(meta.get("fill_value", 0), dtype, path),
        chunk_shape=chunk_shape,
        shard_shape=shard_shape,
        chunk_len=int(np.prod(chunk_shape)),
        chunks_per_shard=shard_shape[0] // chunk_shape[0],
        stages=tuple(BYTES_DECODERS[name] for name, _ in reversed(inner[1:])),
        index_crc=bool(index_rest),
        index_at_end=location == "end",
        key_prefix=f"c{separator}" if key_name == "default" else "",
        key_separator=separator,
    )


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
        As the parameter; :func:`lancell.reader.array_reader` sets it for dataset arrays.
    get_ranges_calls, index_reads, shards_touched, chunks_decoded, bytes_fetched : int
        Cumulative request accounting (exact when calls do not overlap): one ``get_ranges`` per touched
        shard that holds a needed chunk, one index read per shard over the reader's life.

    Raises
    ------
    ShardFormatError
        If ``zarr.json`` is missing or describes a layout this reader does not handle (see
        :func:`parse_layout`); when reading, if a shard index is malformed or a shard of a ``complete`` array
        is missing.

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
        for shard, index in zip(unknown, pool.map(self._load_index, unknown), strict=True):
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
        fetches = [
            pool.submit(self._fetch, shard, slots, entries, plan) for shard, slots, entries in requests
        ]
        # A fetch hands the decoding of a large shard's other chunk groups to the pool without waiting for
        # them (a pool task that waited on the pool could deadlock it); collect those last.
        decodes = [decode for fetch in fetches for decode in fetch.result()]
        for decode in decodes:
            decode.result()
        self.get_ranges_calls += len(requests)
        self.chunks_decoded += sum(slots.size for _, slots, _ in requests)
        self.bytes_fetched += sum(int(entries[:, 1].sum()) for _, _, entries in requests)
        return out

    def _load_index(self, shard: int) -> np.ndarray | None:
        """The shard's checked index (``(chunks_per_shard, 2)`` uint64), None if the shard object is missing.

        Raises
        ------
        ShardFormatError, ChecksumError
            A missing object of a ``complete`` array; else see :func:`lancell.shard_index.parse_index`.
        """
        layout = self.layout
        key = layout.shard_key(self.path, shard)
        nbytes = layout.index_nbytes
        where = f"array {self.path!r}, shard {key!r}"
        try:
            result = obstore.get(
                self.store, key, options={"range": {"suffix": nbytes} if layout.index_at_end else (0, nbytes)}
            )
            raw, size = np.frombuffer(result.bytes(), np.uint8), int(result.meta["size"])
        except FileNotFoundError:
            if self.complete:
                raise ShardFormatError(
                    f"{where}: the shard object is missing, but every shard of this array was written"
                ) from None
            return None
        data = (0, size - nbytes) if layout.index_at_end else (nbytes, size)
        return parse_index(raw, layout.chunks_per_shard, crc=layout.index_crc, data=data, where=where)

    def _fetch(self, shard: int, slots: np.ndarray, entries: np.ndarray, plan: tuple) -> list[Future]:
        """Fetch a shard's needed chunks with one ``get_ranges``; decode them (runs on a pool thread)."""
        key = self.layout.shard_key(self.path, shard)
        starts = entries[:, 0].astype(np.int64)
        ends = starts + entries[:, 1].astype(np.int64)
        try:
            buffers = obstore.get_ranges(self.store, key, starts=starts.tolist(), ends=ends.tolist())
        except FileNotFoundError:
            raise ShardFormatError(f"array {self.path!r}, shard {key!r}: the shard object is gone") from None
        step = max(_MIN_CHUNKS_PER_TASK, -(-slots.size // _CORES))
        pool = _pool()
        others = [
            pool.submit(self._decode, buffers[i : i + step], slots[i : i + step], key, plan)
            for i in range(step, slots.size, step)
        ]
        self._decode(buffers[:step], slots[:step], key, plan)
        return others

    def _decode(self, buffers: list, slots: np.ndarray, key: str, plan: tuple) -> None:
        """Decode chunks of one shard and scatter their pieces into the output (runs on a pool thread)."""
        layout = self.layout
        chunks, bounds, src, dst, length, out = plan
        nbytes = layout.chunk_len * layout.dtype.itemsize
        for buffer, slot in zip(buffers, slots.tolist(), strict=True):
            data = np.frombuffer(buffer, np.uint8)
            try:
                for stage in layout.stages:
                    data = stage(data)
                if data.size != nbytes:
                    raise CodecError(f"the chunk decodes to {data.size} bytes, expected {nbytes}")
            except CodecError as e:
                chunk = chunks[slot] % layout.chunks_per_shard
                raise type(e)(f"array {self.path!r}, shard {key!r}, chunk {chunk}: {e}") from e
            gather.copy_pieces(data.view(layout.dtype), out, src, dst, length, bounds[slot], bounds[slot + 1])
