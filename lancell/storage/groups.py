"""Dataset zarr groups: creation, shard-aligned streaming writes (through
:mod:`lancell.storage.shard_buffer`), and the attributes that describe them.

Layout of one group (docs/architecture.md, "A dataset's zarr group")::

    <group>/csr/indices          uint32 local feature index, 1-D, sharded
    <group>/csr/indptr           int64 (n_cells + 1)
    <group>/csr/layers/<layer>   uint32 counts or float32 values, 1-D, sharded
    <group>/layers/<layer>       dense (n_cells, n_features), chunks of whole rows

Writes are buffered to whole shards so that zarr never reads-modifies-writes a shard.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr
import zarr.codecs

from lancell.storage.codecs import BitpackingCodec
from lancell.storage.offsets import write_offsets
from lancell.storage.shard_buffer import ShardBuffer, exit_all

__all__ = [
    "ATLAS_ID_ATTR",
    "DenseGroupWriter",
    "GroupGeometry",
    "PointerKind",
    "SparseGroupWriter",
    "create_value_array",
    "current_geometry",
    "new_group_name",
    "other_atlas",
    "value_codecs",
]

PointerKind = Literal["sparse", "dense"]  # how a cell pointer column stores its feature space
FORMAT_VERSION = 1


ENCODING_VERSION = "1"
# The group attribute naming the atlas that wrote the group; written with the group's first object, so that
# a group of this atlas is never without it (lancell.tables.group_claims deletes only groups that carry it).
ATLAS_ID_ATTR = "lancell_atlas_id"


def other_atlas(attrs: Mapping[str, Any], atlas_id: str | None) -> str | None:
    """The other atlas a group's ``attrs`` name as its writer, or None: the group is ``atlas_id``'s, or it
    cannot be told (no writer recorded, or a handle of an atlas from before atlas ids)."""
    owner = attrs.get(ATLAS_ID_ATTR)
    return owner if owner is not None and atlas_id is not None and owner != atlas_id else None


@dataclass(frozen=True)
class GroupGeometry:
    """Chunk and shard sizes of a group's arrays, in elements (sparse) or rows (dense)."""

    # chosen by benchmarks/reader.py (RESULTS.md "Batched reader"): a ~2,000-value cell decodes 3x what it
    # needs at 4,096 (9x at 16,384), 2.9x fewer bytes fetched; 4 Mi-element shards: 960 objects per 1M cells
    sparse_chunk: int = 4_096
    sparse_shard: int = 4_096 * 1_024
    dense_chunk_elements: int = 65_536
    dense_chunks_per_shard: int = 16

    def sparse_shape(self, nnz: int) -> tuple[int, int]:
        """``(chunk, shard)`` of a 1-D array of ``nnz`` elements (no larger than it; a whole number of
        chunks per shard)."""
        chunk = min(self.sparse_chunk, max(nnz, 1))
        return chunk, min(self.sparse_shard, -(-max(nnz, 1) // chunk) * chunk)

    def dense_shape(self, n_features: int) -> tuple[int, int]:
        """``(chunk_rows, shard_rows)``; the shard is a whole number of chunks (zarr requires it)."""
        chunk_rows = max(1, self.dense_chunk_elements // max(n_features, 1))
        return chunk_rows, chunk_rows * self.dense_chunks_per_shard

    def as_attrs(self) -> dict[str, int]:
        return {
            "sparse_chunk": self.sparse_chunk,
            "sparse_shard": self.sparse_shard,
            "dense_chunk_elements": self.dense_chunk_elements,
            "dense_chunks_per_shard": self.dense_chunks_per_shard,
        }


DEFAULT_GEOMETRY = GroupGeometry()


def current_geometry() -> GroupGeometry:
    """:data:`DEFAULT_GEOMETRY`, looked up at each call (it can be configured, and tests shrink it)."""
    return DEFAULT_GEOMETRY


def value_codecs(dtype: np.dtype, role: str) -> dict[str, Any]:
    """zarr ``create_array`` codec arguments for an array of ``dtype`` playing ``role`` (indices/values).

    Integer counts: BP-128 plain; sorted CSR indices: BP-128 delta (resets at cell boundaries cost one
    32-bit block); floats: zstd (never cast to integers). Every chunk ends in a crc32c of its encoded bytes,
    checked before anything decodes them (docs/integrity.md: a flipped bit in a BP-128 or zstd chunk
    otherwise decodes to wrong but valid-looking numbers), and every chunk is written, even one equal to the
    fill value, so that the reader can take a missing shard object for damage, not zeros.
    """
    compressor = (
        BitpackingCodec(transform="delta" if role == "indices" else "none")
        if np.dtype(dtype) == np.uint32
        else zarr.codecs.ZstdCodec(level=3)
    )
    return {
        "compressors": [compressor, zarr.codecs.Crc32cCodec()],
        "config": {"write_empty_chunks": True},
    }


def new_group_name(dataset_uid: str) -> str:
    """A fresh, unique, top-level zarr group name for a dataset (a ``/`` in the uid must not nest it)."""
    return f"{dataset_uid.replace('/', '_')}-{uuid.uuid4().hex[:8]}"


def _base_attrs(kind: PointerKind, layers: Mapping[str, np.dtype], geometry: GroupGeometry) -> dict[str, Any]:
    return {
        "lancell_format": FORMAT_VERSION,
        "lancell-encoding": "csr_matrix" if kind == "sparse" else "dense_matrix",
        "lancell-encoding-version": ENCODING_VERSION,
        "layers": {name: np.dtype(dtype).name for name, dtype in layers.items()},
        "geometry": geometry.as_attrs(),
    }


def create_value_array(
    parent: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    shards: tuple[int, ...],
) -> zarr.Array:
    """The values array of one layer under ``parent`` (a ``layers`` group), overwriting debris of an
    interrupted :func:`lancell.ingest.add_layer.add_layer` (no record names a layer before its commit)."""
    return parent.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        overwrite=True,
        **value_codecs(np.dtype(dtype), "values"),
    )


class SparseGroupWriter:
    """Stream CSR row blocks of one dataset into ``<group>/csr/...``: one ``indices`` and ``indptr`` shared
    by every layer in ``layers`` (stored name -> dtype), one values array per layer. Use it as a context
    manager: its writer threads are stopped on exit.

    ``atlas_id`` (the writing atlas's id) is the group's first attribute, stored with its first object.
    ``guard`` is called before each shard is stored (a lease's check: a writer that lost it stops).
    """

    def __init__(
        self,
        root: zarr.Group,
        path: str,
        *,
        n_cells: int,
        n_features: int,
        nnz: int,
        layers: Mapping[str, np.dtype],
        atlas_id: str,
        geometry: GroupGeometry | None = None,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.group = root.create_group(path, attributes={ATLAS_ID_ATTR: atlas_id})
        self.nnz = nnz
        self.n_cells = n_cells
        geometry = geometry or current_geometry()
        chunk, shard = geometry.sparse_shape(nnz)
        csr = self.group.create_group("csr")
        indices = csr.create_array(
            "indices",
            shape=(nnz,),
            dtype="uint32",
            chunks=(chunk,),
            shards=(shard,),
            **value_codecs(np.dtype("uint32"), "indices"),
        )
        values_group = csr.create_group("layers")
        values = {
            name: create_value_array(values_group, name, (nnz,), dtype, (chunk,), (shard,))
            for name, dtype in layers.items()
        }
        self._csr = csr
        self._indices = ShardBuffer(indices, shard, guard)
        self._values = {name: ShardBuffer(array, shard, guard) for name, array in values.items()}
        self._indptr_parts: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self._offset = 0
        self._pool = ThreadPoolExecutor(1 + len(values), thread_name_prefix="lancell-shard-write")
        self._in_flight: list[Future[None]] = []
        self.group.update_attributes(
            {**_base_attrs("sparse", layers, geometry), "chunk": chunk, "shard": shard}
        )

    def append(self, indptr: np.ndarray, indices: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        """Append a block of rows given as local CSR (``indptr[0] == 0``): the shared ``indices`` and each
        layer's ``values`` on them.

        Each array is appended by its own writer thread (:class:`ShardBuffer`: encoded as it arrives, each
        full shard stored while the next is encoded; the kernels and stores release the GIL). This returns
        once the previous block is written, with this one in flight: ``indices`` and ``values`` must stay
        unchanged until the next :meth:`append`, :meth:`close` or :meth:`__exit__` returns. An error of a
        writer is raised by the next of those calls.
        """
        self._wait()
        self._in_flight = [self._pool.submit(self._indices.append, indices)] + [
            self._pool.submit(buffer.append, values[name]) for name, buffer in self._values.items()
        ]
        self._indptr_parts.append(indptr[1:].astype(np.int64) + self._offset)
        self._offset += int(indptr[-1])

    def _wait(self) -> None:
        """Wait for every write in flight; raise the first error among them."""
        futures, self._in_flight = self._in_flight, []
        errors = [future.exception() for future in futures]
        failed = next((error for error in errors if error is not None), None)
        if failed is not None:
            raise failed

    def close(self, extra_attrs: dict[str, Any]) -> np.ndarray:
        """Finish the writes, flush every array's last shard, write indptr and attributes; return the full
        indptr."""
        self._wait()
        self._in_flight = [
            self._pool.submit(buffer.close) for buffer in (self._indices, *self._values.values())
        ]
        self._wait()
        indptr = np.concatenate(self._indptr_parts)
        write_offsets(self._csr, indptr)
        self.group.update_attributes({"n_cells": self.n_cells, "nnz": self.nnz, **extra_attrs})
        return indptr

    def __enter__(self) -> SparseGroupWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        """Wait for the writes in flight and stop the writer threads: nothing is left running for a
        roll-back to race with. A writer's error is raised unless another is already propagating."""
        try:
            if exc[0] is None:
                self._wait()
            else:
                for future in self._in_flight:
                    future.exception()
                self._in_flight = []
        finally:
            self._pool.shutdown(wait=True)
            exit_all((self._indices, *self._values.values()), exc)


class DenseGroupWriter:
    """Stream dense row blocks of one dataset into ``<group>/layers/<layer>``, one array per layer of
    ``layers`` (stored name -> dtype). Use it as a context manager: stores in flight are waited for on exit.

    ``atlas_id`` (the writing atlas's id) is the group's first attribute, stored with its first object.
    ``guard`` is called before each shard is stored (a lease's check: a writer that lost it stops).
    """

    def __init__(
        self,
        root: zarr.Group,
        path: str,
        *,
        n_cells: int,
        n_features: int,
        layers: Mapping[str, np.dtype],
        atlas_id: str,
        geometry: GroupGeometry | None = None,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.group = root.create_group(path, attributes={ATLAS_ID_ATTR: atlas_id})
        self.n_cells = n_cells
        geometry = geometry or current_geometry()
        chunk_rows, shard_rows = geometry.dense_shape(n_features)
        chunk_rows = min(chunk_rows, max(n_cells, 1))
        shard_rows = chunk_rows * max(1, min(geometry.dense_chunks_per_shard, -(-n_cells // chunk_rows)))
        parent = self.group.create_group("layers")
        self.shape = (n_cells, n_features)
        self.rows = {
            name: ShardBuffer(
                create_value_array(
                    parent, name, self.shape, dtype, (chunk_rows, n_features), (shard_rows, n_features)
                ),
                shard_rows,
                guard,
            )
            for name, dtype in layers.items()
        }
        self.group.update_attributes(
            {
                **_base_attrs("dense", layers, geometry),
                "chunk_rows": chunk_rows,
                "shard_rows": shard_rows,
            }
        )

    def append(self, rows: Mapping[str, np.ndarray]) -> None:
        """Append a block of dense rows of every layer."""
        for name, buffer in self.rows.items():
            buffer.append(rows[name])

    def close(self, extra_attrs: dict[str, Any]) -> None:
        """Flush the tail and write the attributes."""
        for buffer in self.rows.values():
            buffer.close()
        self.group.update_attributes(
            {"n_cells": self.n_cells, "nnz": int(np.prod(self.shape)), **extra_attrs}
        )

    def __enter__(self) -> DenseGroupWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        """Wait for every store in flight (see :meth:`ShardBuffer.__exit__`)."""
        exit_all(self.rows.values(), exc)
