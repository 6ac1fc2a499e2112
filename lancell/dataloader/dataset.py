"""``CellDataset``: a map-style PyTorch dataset over the cells of an atlas query, one batched read per batch.

Per cell it holds only a pointer: group code (int32) + element start (int64) + nnz (int32) = 16 bytes for a
sparse feature space, group code (int32) + row position (int64) = 12 bytes for a dense one. Metadata columns
are kept as compact codes (see :mod:`lancell.dataloader.metadata`; reported separately by :meth:`nbytes`).
Everything per group (zarr path, layer dtypes, feature lookup table, presence row) is a few small arrays.
Several layers are read on the same cells (one pointer per cell: the layers share the stored indices).

No database or store handle is pickled: the dataset records the database URI, the snapshot version (if the
atlas was checked out), the cell table's Lance version and the store's URL and client settings, and opens the
obstore store and the zarr arrays lazily in whichever process reads (each DataLoader worker opens its own).
Workers never touch LanceDB (unpickling does not even import it): the pointers were read once, in the
process that built the dataset.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import obstore.store as obs_store
import zarr
import zarr.storage

from lancell.dataloader.batch import RESERVED_KEYS, CellBatch, read_dense, read_sparse
from lancell.dataloader.cell_stream import stream_cells
from lancell.dataloader.checks import positions
from lancell.dataloader.features import GroupTable, group_table, output_dtype
from lancell.dataloader.mapped import MappedGroups
from lancell.dataloader.metadata import EncodedMetadata, MetadataEncoder
from lancell.dataloader.source import DatasetSource, worker_store_kwargs
from lancell.errors import (
    ForkedProcessError,
    GroupNotFoundError,
    LancellWarning,
    QueryError,
    caller_outside_lancell,
)
from lancell.query.name_lists import name_list
from lancell.storage.fork_safety import forked_after_store_use, mark_stores_used
from lancell.storage.nodes import open_node
from lancell.storage.store_failures import store_boundary
from lancell.storage.stores import describe_store

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.query.atlas_query import AtlasQuery

__all__ = ["CellDataset"]

log = logging.getLogger(__name__)
_MAPPED_LOCK = threading.Lock()  # threads of one process share one MappedGroups


class CellDataset:
    """Map-style dataset of the cells of a query, for one feature space and one or several layers.

    Build it with :meth:`lancell.query.atlas_query.AtlasQuery.to_cell_dataset` (or :meth:`from_query`,
    :meth:`from_atlas`). Positions ``0 .. len - 1`` follow the query's row order (the rows of
    ``to_anndata()``). Use
    :meth:`__getitems__` (what PyTorch's fetcher calls with a batch sampler) to read a whole batch at once.

    Attributes
    ----------
    kind
        ``"sparse"`` or ``"dense"``, the kind of the feature space.
    feature_space, layers, layer
        What is read: the requested layers in order (the first, :attr:`layer`, fills a batch's ``values`` or
        ``dense``, as ``to_anndata()``'s ``X``; each other is in ``CellBatch.layers``).
    feature_uids
        object (n_features,): registry uid of each output column.
    feature_index
        int64 (n_features,): registry global index of each output column.
    categories
        ``column -> labels`` of each categorical metadata column (batches carry codes).
    groups
        The :class:`GroupTable` (group code -> zarr group, dataset uid, lookup table, presence row).
    source
        The :class:`DatasetSource` (database URI, snapshot version, cell table version, store URL).
    on_unmeasured, unmeasured
        The query's unmeasured-cell policy and ``dataset uid -> cells`` it dropped or kept as empty rows.
    dtypes, dtype
        ``layer -> dtype`` of its values in batches: the stored dtype when all datasets storing it share it
        (uint32 counts, float32 values), else the dtype holding all of them exactly (float64 for counts
        and floats);
        :attr:`dtype` is the first layer's.
    mapped_batches
        Sparse batches this process read from memory-mapped shard files by one kernel call
        (:mod:`lancell.dataloader.mapped`: one layer of uint32 counts on local disk); the others go through
        the batched reader, which reads each group's indices once for all layers.
    """

    def __init__(
        self,
        *,
        kind: Literal["sparse", "dense"],
        feature_space: str,
        layers: Sequence[str],
        group: np.ndarray,
        position: np.ndarray,
        nnz: np.ndarray | None,
        groups: GroupTable,
        feature_index: np.ndarray,
        feature_uids: np.ndarray,
        metadata: EncodedMetadata,
        source: DatasetSource,
        on_unmeasured: str = "error",
        unmeasured: dict[str, int] | None = None,
        store: obs_store.ObjectStore | None = None,
    ) -> None:
        self.kind = kind
        self.feature_space = feature_space
        self.layers = list(layers)
        self.layer = self.layers[0]
        self._group = group
        self._position = position
        self._nnz = nnz
        self.groups = groups
        self.feature_index = feature_index
        self.feature_uids = feature_uids
        self.metadata = metadata
        self.source = source
        self.on_unmeasured = on_unmeasured
        self.unmeasured = dict(unmeasured or {})
        self.dtypes = {name: output_dtype(groups, k) for k, name in enumerate(self.layers)}
        self.dtype = self.dtypes[self.layer]
        self._store = store
        self._root: zarr.Group | None = None
        self._arrays: dict[int, Any] = {}
        self._mapped: MappedGroups | None = None
        self.mapped_batches = 0

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def from_atlas(
        cls,
        atlas: RaggedAtlas,
        feature_space: str,
        layer: str | Sequence[str],
        *,
        where: str | None = None,
        limit: int | None = None,
        metadata_columns: str | Sequence[str] = (),
        features: Sequence[str] | str | None = None,
        store_kwargs: dict[str, Any] | None = None,
        categories: Mapping[str, Sequence[str]] | None = None,
    ) -> CellDataset:
        """The cells of ``atlas`` matching ``where`` (at most ``limit``); see :meth:`from_query`."""
        query = atlas.query()
        if where is not None:
            query = query.where(where)
        if limit is not None:
            query = query.limit(limit)
        return cls.from_query(
            query,
            feature_space,
            layer,
            metadata_columns=metadata_columns,
            features=features,
            store_kwargs=store_kwargs,
            categories=categories,
        )

    @classmethod
    def from_query(
        cls,
        query: AtlasQuery,
        feature_space: str,
        layer: str | Sequence[str],
        *,
        metadata_columns: str | Sequence[str] = (),
        features: Sequence[str] | str | None = None,
        store_kwargs: dict[str, Any] | None = None,
        categories: Mapping[str, Sequence[str]] | None = None,
    ) -> CellDataset:
        """Read the pointers (and metadata columns) of the query's cells once and build the dataset.

        The rows are read in record batches, each reduced to the per-cell arrays at once
        (:mod:`lancell.dataloader.cell_stream`): the peak is one batch plus the arrays kept.

        Parameters
        ----------
        query
            An :class:`~lancell.query.atlas_query.AtlasQuery` on a live or checked-out atlas (a checkout's
            snapshot version is recorded in :attr:`source`); its filter, limit and search (rank order) apply.
        feature_space, layer
            The feature space (pointer field) and the layer to read, or several (``["counts",
            "log_normalized"]``: the first is a batch's ``values``, the others ``CellBatch.layers``); datasets
            lacking a requested layer follow the query's ``on_unmeasured()``, per layer, as in
            ``to_anndata()``.
        metadata_columns
            Cell columns to carry in every batch (strings become categorical codes), or one column's name;
            not one of the names the collates use (``X``, ``layers``, ``index``, ``group``, ``presence``).
        features
            Added to the query's own feature selection (see
            :meth:`lancell.query.atlas_query.AtlasQuery.reading`): None (the query's ``features()`` and
            ``feature_join()``, the columns of its ``to_anndata()``), ``"union"`` / ``"intersection"``,
            ``"registry"`` (column ``j`` is global index ``j``), or registry uids / symbols.
        store_kwargs
            Client settings (e.g. credentials) workers use to reopen the store; default: the atlas store's
            non-secret settings and retry settings, with credentials taken from the environment.
        categories
            Fixed codes of string metadata columns, ``{column: labels}`` (code ``i`` is ``labels[i]``): pass
            the training set's :attr:`categories` to its validation and test sets, so that a code means one
            label in all of them (by default a column's codes are its labels in these cells, sorted: a set
            without one label numbers the others differently). A label not given is a ``QueryError``.

        Raises
        ------
        QueryError
            Bad filter, unknown or reserved metadata column or feature, or a ``features`` or layers that
            contradict the query's.
            ``UnmeasuredDataError`` for unmeasured cells under the query's default policy,
            ``GroupNotFoundError`` for a dataset whose zarr group is missing, ``FeatureSpaceError`` for an
            unknown feature space or a layer it does not allow.
        """
        query = query.pinned()  # the rows and the records they are planned with: one state of the atlas
        atlas = query.atlas
        columns = tuple(name_list("metadata_columns", metadata_columns, one=True))
        reserved = sorted(set(columns) & set(RESERVED_KEYS))
        if reserved:
            raise QueryError(f"metadata columns {reserved} would collide with the batch keys {RESERVED_KEYS}")
        reading = query.reading(feature_space, layer, features)
        metadata = MetadataEncoder(atlas.core.cell_arrow, columns, categories)
        kind = atlas.feature_spaces[feature_space].kind
        cells = stream_cells(reading.selection, reading.plan_for, feature_space, kind, metadata)
        plan = cells.plan
        groups = group_table(plan, cells.group_names)
        if not cells.group.size:  # a filter with a typo, say: any sampler's epochs would have no batch
            warnings.warn(
                "the query selects no cell: the dataset is empty",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )
        if cells.nnz is not None:  # unmeasured cells read as empty rows
            cells.nnz[(cells.group < 0) | ~np.append(groups.measured, False)[cells.group]] = 0
        source = DatasetSource(
            db_uri=atlas.db_uri,
            snapshot_version=atlas.snapshot_version,
            cell_table_version=int(atlas.core.tables.cells.version),
            store_url=describe_store(atlas.store),
            store_kwargs=worker_store_kwargs(atlas.store, store_kwargs),
        )
        return cls(
            kind=plan.kind,
            feature_space=feature_space,
            layers=plan.layers,
            group=cells.group,
            position=cells.position,
            nnz=cells.nnz,
            groups=groups,
            feature_index=plan.columns,
            feature_uids=plan.var.index.to_numpy(dtype=object),
            on_unmeasured=plan.on_unmeasured,
            unmeasured=plan.unmeasured,
            metadata=cells.metadata,
            source=source,
            store=atlas.store,
        )

    # ------------------------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_store=None, _root=None, _arrays={}, _mapped=None, mapped_batches=0)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------------------------ size
    def __len__(self) -> int:
        return int(self._group.size)

    @property
    def n_features(self) -> int:
        """Number of output columns."""
        return int(self.feature_index.size)

    @property
    def categories(self) -> dict[str, list[str]]:
        """Labels of each categorical metadata column."""
        return self.metadata.categories

    @property
    def cell_groups(self) -> np.ndarray:
        """int32 (n_cells,): group code of every cell (``-1``: no data); one code per dataset."""
        return self._group

    @property
    def cell_positions(self) -> np.ndarray:
        """int64 (n_cells,): element start (sparse) or row (dense) of every cell inside its group."""
        return self._position

    @property
    def cell_nnz(self) -> np.ndarray:
        """int32 (n_cells,): stored values per cell (sparse; 0 for unmeasured cells).

        Raises
        ------
        TypeError
            For a dense feature space.
        """
        if self._nnz is None:
            raise TypeError("cell_nnz is defined for sparse feature spaces only")
        return self._nnz

    def nbytes(self) -> dict[str, int]:
        """Bytes held: ``pointers`` (per cell, all cells), ``metadata`` (per cell, all cells, and the string
        columns' labels, as Python strings), ``groups`` (per group tables)."""
        pointers = self._group.nbytes + self._position.nbytes + (0 if self._nnz is None else self._nnz.nbytes)
        categories = self.metadata.categories.values()
        labels = sum(sys.getsizeof(names) + sum(map(sys.getsizeof, names)) for names in categories)
        return {
            "pointers": int(pointers),
            "metadata": int(sum(v.nbytes for v in self.metadata.values.values()) + labels),
            "groups": int(self.groups.nbytes + self.feature_index.nbytes),
        }

    def locality_order(self) -> np.ndarray:
        """int64 positions sorted by (group, position in group): cells stored together become adjacent."""
        return np.lexsort((self._position, self._group)).astype(np.int64, copy=False)

    # ------------------------------------------------------------------------------------ reading
    def _root_group(self) -> zarr.Group:
        if forked_after_store_use():
            raise ForkedProcessError(
                f"{self!r} is read in process {os.getpid()}, forked from a process that had used the atlas's "
                "stores: their I/O threads (obstore's, LanceDB's) do not survive a fork and the read would "
                "hang. Use lancell.dataloader.make_loader, or give the DataLoader "
                "multiprocessing_context='forkserver' (or 'spawn')"
            )
        if self._root is None:
            mark_stores_used()
            if self._store is None:
                self._store = self.source.open_store()
            self._root = zarr.open_group(
                zarr.storage.ObjectStore(self._store, read_only=True), mode="r", zarr_format=3
            )
        return self._root

    def _group_arrays(self, codes: np.ndarray) -> dict[int, Any]:
        root = self._root_group()
        for code in codes:
            code = int(code)
            if code < 0 or not self.groups.measured[code] or code in self._arrays:
                continue
            name = self.groups.names[code]
            try:
                group = open_node(root, name)
            except GroupNotFoundError as exc:  # removed from the store after the dataset was built
                raise GroupNotFoundError(
                    f"dataset {self.groups.dataset_uids[code]!r}: zarr group {name!r} is missing from the "
                    f"store {self.source.store_url}"
                ) from exc
            prefix = "csr/layers" if self.kind == "sparse" else "layers"
            values = tuple(
                open_node(group, f"{prefix}/{layer}") if self.groups.stores[k, code] else None
                for k, layer in enumerate(self.layers)
            )
            sparse = self.kind == "sparse"
            self._arrays[code] = (open_node(group, "csr/indices"), values) if sparse else values
        return self._arrays

    def first_layer_arrays(self, codes: np.ndarray) -> dict[int, tuple[Any, Any]]:
        """``code -> (csr/indices, csr/layers/<first layer>)``, the zarr arrays of the measured sparse groups
        ``codes`` opened in this process (what :class:`MappedGroups` reads; benchmarks decode them alone).
        Raises ``GroupNotFoundError`` for a group removed from the store after the dataset was built."""
        arrays = self._group_arrays(codes)
        return {int(c): (arrays[int(c)][0], arrays[int(c)][1][0]) for c in codes}

    @store_boundary(lambda dataset: f"the zarr store {dataset.source.store_url}")
    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> CellBatch:
        """Read the cells at ``indices`` (dataset positions) as one :class:`CellBatch`, in that order.

        Raises
        ------
        QueryError
            ``indices`` holds non-integers (floats, or booleans: pass a mask as ``np.flatnonzero(mask)``).
        OutOfBoundsError
            A position outside ``[-len, len)``.
        GroupNotFoundError
            A dataset's zarr group was removed from the store after this dataset was built.
        StoreError
            The store failed (unreachable, refusing).
        """
        index = positions(indices, len(self))
        group = self._group[index]
        position = self._position[index]
        batch = CellBatch(
            kind=self.kind,
            index=index,
            group=group,
            n_features=self.n_features,
            presence_table=self.groups.presence,
            metadata=self.metadata.take(index),
        )
        dtypes = list(self.dtypes.values())
        if self.kind == "dense":
            arrays = self._group_arrays(np.unique(group))
            batch.dense, *others = read_dense(arrays, self.groups, group, position, self.n_features, dtypes)
            batch.layers = dict(zip(self.layers[1:], others, strict=True))
            return batch
        mapped = self._mapped_groups()
        sparse = None if mapped is None else mapped.read(group, position, self._nnz[index])
        if sparse is None:
            arrays = self._group_arrays(np.unique(group))
            sparse, *others = read_sparse(arrays, self.groups, group, position, self._nnz[index], dtypes)
            batch.layers = dict(zip(self.layers[1:], others, strict=True))
        else:
            with _MAPPED_LOCK:  # threads of a ThreadedLoader count too
                self.mapped_batches += 1
        batch.offsets, batch.indices, batch.values = sparse
        return batch

    def _mapped_groups(self) -> MappedGroups | None:
        """This process's :class:`MappedGroups` when batches may be read from memory-mapped shard files (one
        layer of uint32 values in a local store), else None."""
        self._root_group()  # (refuses a process forked after the stores were used)
        with _MAPPED_LOCK:
            local = isinstance(self._store, obs_store.LocalStore)
            if self._mapped is None and len(self.layers) == 1 and self.dtype == np.uint32 and local:
                self._mapped = MappedGroups(self.groups, self.first_layer_arrays)
            return self._mapped

    def __getitem__(self, index: int) -> CellBatch:
        """One cell as a batch of one."""
        return self.__getitems__([index])

    def __repr__(self) -> str:
        where = (
            f"snapshot {self.source.snapshot_version}" if self.source.snapshot_version is not None else "live"
        )
        return (
            f"CellDataset({len(self)} cells x {self.n_features} features, {self.kind} "
            f"{self.feature_space}/{'+'.join(self.layers)}, {len(self.groups.names)} groups, {where})"
        )
