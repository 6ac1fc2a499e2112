"""``AtlasCore``: the explicit internal handle every operation of the library takes.

One object holds what an open atlas is made of: its tables (live or pinned to a snapshot), its zarr group
store (root, an opened-node cache, attributes), its locks, its Arrow schemas and the cache of values computed
once per pinned handle. :class:`lancell.atlas.RaggedAtlas` is the public facade over it; ingestion, queries,
the loader, validation and maintenance receive the core (``atlas.core``) and read nothing private. See
``docs/architecture.md`` ("The internal handle").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import zarr

from lancell.errors import AtlasNotFoundError, CommitConflictError, ReadOnlyAtlasError
from lancell.storage.fork_safety import mark_stores_used
from lancell.storage.nodes import open_node
from lancell.storage.offsets import read_offsets
from lancell.storage.opened_nodes import OpenedNodes
from lancell.storage.store_failures import lance_removed
from lancell.storage.zarr_store import zarr_store
from lancell.tables.atlas_tables import AtlasTables
from lancell.tables.feature_spaces import FeatureSpace, feature_spaces_from_table
from lancell.tables.group_claims import GroupClaims
from lancell.tables.locks import Lease, atlas_lock
from lancell.tables.pinned_table import PinnedTable
from lancell.tables.table_schemas import FEATURE_SPACES_TABLE

if TYPE_CHECKING:
    import obstore.store as obs_store

    from lancell.tables.schema import DatasetRecord

__all__ = ["AtlasCore"]

T = TypeVar("T")

# times a read view is opened again when a cleanup removed the table versions it was about to open
_VIEW_ATTEMPTS = 5


class AtlasCore:
    """The state of one open atlas: tables, group store, locks, schemas and the pinned-read cache.

    Parameters
    ----------
    db_uri
        The LanceDB location.
    meta
        The atlas's ``atlas.json`` (cell table name, registries, atlas id, ...).
    tables
        Its tables, live or pinned to a snapshot's versions.
    store
        The obstore store of the zarr groups.
    meta_store
        The store of the database's side files (``atlas.json``, locks, group claims).
    dataset_schema
        The :class:`~lancell.tables.schema.DatasetRecord` subclass of dataset rows; None for
        ``DatasetRecord`` itself (imported on first use: its module imports lancedb).
    read_only
        Whether writing is refused (a checked-out snapshot, or a pinned view of the live atlas).
    snapshot_version
        The snapshot it is checked out at; None for the live atlas and for pinned views.
    storage_options
        The LanceDB storage options it was opened with.
    shares
        A view's parent (:meth:`read_view`): the view reads through its zarr root, its opened nodes and its
        feature spaces (none of which a table version changes).
    """

    def __init__(
        self,
        *,
        db_uri: str,
        meta: dict[str, Any],
        tables: AtlasTables,
        store: obs_store.ObjectStore,
        meta_store: obs_store.ObjectStore,
        dataset_schema: type[DatasetRecord] | None,
        read_only: bool,
        snapshot_version: int | None,
        storage_options: Mapping[str, str] | None,
        shares: AtlasCore | None = None,
    ) -> None:
        mark_stores_used()  # (the tables were read: LanceDB's and obstore's threads run)
        self.db_uri = db_uri
        self.meta = meta
        self.tables = tables
        self.store = store
        self.meta_store = meta_store
        self._dataset_schema = dataset_schema
        self.read_only = read_only
        self.snapshot_version = snapshot_version
        self.storage_options = dict(storage_options or {})
        self.cell_arrow: pa.Schema = tables.cells.schema
        self.dataset_arrow: pa.Schema = tables.datasets.schema
        self._pinned_values: dict[str, Any] = {}
        self._viewed_tables: dict[str, PinnedTable] = {}  # the newest pinned handle of each table, for views
        if shares is not None:
            self.feature_spaces, self.zarr_root, self._nodes = shares.shared_reading()
            return
        self.feature_spaces: dict[str, FeatureSpace] = feature_spaces_from_table(
            tables.handles[FEATURE_SPACES_TABLE].to_arrow()
        )
        self.zarr_root = zarr.open_group(
            zarr_store(store, read_only=read_only),
            mode="r" if read_only else "a",
            zarr_format=3,  # (else zarr probes zarr v2's three metadata objects too: requests on S3)
        )
        self._nodes = OpenedNodes()

    @property
    def dataset_schema(self) -> type[DatasetRecord]:
        """The :class:`~lancell.tables.schema.DatasetRecord` subclass of dataset rows."""
        if self._dataset_schema is None:
            from lancell.tables.schema import DatasetRecord

            self._dataset_schema = DatasetRecord
        return self._dataset_schema

    # ------------------------------------------------------------------------------------ writing
    def require_writable(self) -> None:
        """Refuse to write through a read-only handle.

        Raises
        ------
        ReadOnlyAtlasError
            The handle is checked out at a snapshot, opened ``read_only``, or is a pinned view.
        """
        if self.read_only:
            version = self.snapshot_version
            how = "read-only" if version is None else f"checked out at snapshot {version} and is read-only"
            raise ReadOnlyAtlasError(
                f"this handle of {self.db_uri!r} is {how}; use RaggedAtlas.open() (not read_only) to write"
            )

    def lock(self, name: str, about: str | None = None) -> AbstractContextManager[Lease]:
        """The atlas-wide lease lock ``name``, guarding ``about`` (for messages)
        (:func:`lancell.tables.locks.atlas_lock`)."""
        return atlas_lock(self.meta_store, name, about=about)

    @property
    def atlas_id(self) -> str | None:
        """The atlas's id, carried by every zarr group it writes (None on a read-only handle of an atlas
        created before ids were recorded)."""
        return self.meta.get("atlas_id")

    @property
    def group_claims(self) -> GroupClaims:
        """The claims of the zarr groups this atlas wrote (:mod:`lancell.tables.group_claims`); writable only.

        Raises
        ------
        ReadOnlyAtlasError
            The handle is read-only.
        """
        self.require_writable()
        return self.claims_to_read()

    def claims_to_read(self) -> GroupClaims:
        """The claims of the zarr groups this atlas wrote, to be read only (vacuum's dry run): also through a
        read-only handle of the live atlas.

        Raises
        ------
        ReadOnlyAtlasError
            The handle is checked out at a snapshot (whose datasets are not the live ones), or is read-only
            on an atlas created before ids were recorded (no claim can be judged its own).
        """
        if self.snapshot_version is not None or self.meta.get("atlas_id") is None:
            self.require_writable()
        return GroupClaims(
            atlas_id=self.meta["atlas_id"], meta_store=self.meta_store, store=self.store, db_uri=self.db_uri
        )

    def read_view(self) -> AtlasCore:
        """The core one read (a query terminal, a loader's dataset) goes through: this one when its tables are
        pinned (a snapshot, a view), else a view of the live tables pinned at their current versions.

        Every read of the call then sees one state of the atlas (:meth:`AtlasTables.consistent_versions`): a
        dataset another process commits, deletes or re-ingests meanwhile is seen whole or not at all (reading
        the cell rows, then the dataset records a moment later, paired rows with records of another state:
        zero rows, or cells called unmeasured). The view shares this handle's opened zarr nodes, and the
        tables a view opened that have not changed since.

        Raises
        ------
        CommitConflictError
            The versions read were removed before they were opened (``optimize(cleanup_older_than=...)``
            elsewhere), each of ``_VIEW_ATTEMPTS`` times.
        """
        if self.tables.pinned is not None:
            return self
        versions = self.tables.consistent_versions()
        for _ in range(_VIEW_ATTEMPTS):
            try:
                return self.pinned_view(versions, shared=True)
            except AtlasNotFoundError as exc:  # a version removed before it was opened, or a lost one
                current = self.tables.consistent_versions()
                if not lance_removed(exc) or current == versions:
                    raise  # (still the current versions: not a cleanup's doing)
                versions, removed = current, exc
        raise CommitConflictError(
            f"the table versions of the atlas at {self.db_uri!r} were removed before they could be read, "
            f"{_VIEW_ATTEMPTS} times (optimize(cleanup_older_than=...) running in a loop elsewhere?): "
            "read again"
        ) from removed

    def shared_reading(self) -> tuple[dict[str, FeatureSpace], zarr.Group, OpenedNodes]:
        """``(feature spaces, zarr root, opened nodes)``: what a view of this core reads through."""
        return self.feature_spaces, self.zarr_root, self._nodes

    def pinned_view(self, pinned: dict[str, int], *, shared: bool = False) -> AtlasCore:
        """A read-only core over the same storage with every table pinned to ``pinned`` (table -> version);
        ``shared``: reading through this core's zarr root and opened nodes."""
        tables = AtlasTables.open(
            self.tables.database,
            self.tables.cell_table_name,
            self.tables.registry_names,
            pinned,
            reuse=self._viewed_tables if shared else None,
        )
        return AtlasCore(
            db_uri=self.db_uri,
            meta=self.meta,
            tables=tables,
            store=self.store,
            meta_store=self.meta_store,
            dataset_schema=self._dataset_schema,
            read_only=True,
            snapshot_version=None,
            storage_options=self.storage_options,
            shares=self if shared else None,
        )

    # ------------------------------------------------------------------------------------ reading
    def node(self, path: str) -> zarr.Group | zarr.Array:
        """A zarr group or array of a committed dataset, opened once per handle (read path only)."""
        node = self._nodes.get(path)
        if node is None:
            node = open_node(self.zarr_root, path)
            self._nodes.put(path, node)
        return node

    def csc_offsets(self, zarr_group: str) -> np.ndarray:
        """The CSC copy's offsets of a committed dataset's group, read whole and checked once per handle
        (:func:`~lancell.storage.offsets.read_offsets`)."""
        key = f"{zarr_group}/csc/indptr[:]"  # not a zarr path: "[" never occurs in group names
        if key not in self._nodes:
            attrs = self.node(zarr_group).attrs  # a damaged zarr.json: ShardFormatError, as any node's
            self._nodes.put(key, read_offsets(self.node(f"{zarr_group}/csc/indptr"), attrs, "csc"))
        return self._nodes.get(key)

    def forget_nodes(self) -> None:
        """Drop every opened node: a group changed under this handle (a CSC copy or a layer was added)."""
        self._nodes.clear()

    def group_attrs(
        self, zarr_group: str, *, reopen: bool = False, listed: Sequence[str] | None = None
    ) -> dict[str, Any] | None:
        """A group's attributes, or None when the group is not in the store.

        ``reopen``: read them from the store again (the group opened earlier predates a change to it).
        ``listed``: the layers the dataset's record lists now; where the group was opened while its record
        listed others, it and every node under it are opened again (another handle's ``add_layer`` wrote
        them since, over what an interrupted one may have left: the dtype and zero fill read then are not
        the committed layer's).
        """
        key = f"{zarr_group}[listed]"  # not a zarr path: "[" never occurs in group names
        if listed is not None and self._nodes.get(key) != tuple(listed):  # (or opened without a record)
            self._nodes.forget_under(zarr_group)
        if listed is not None:
            self._nodes.put(key, tuple(listed))
        if reopen:
            self._nodes.forget(zarr_group)
        try:
            return dict(self.node(zarr_group).attrs)
        except FileNotFoundError:  # open_node: GroupNotFoundError
            return None

    def pinned(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``, kept for the handle's life when its tables are pinned (a snapshot, a view)."""
        if self.tables.pinned is None:
            return compute()
        if key not in self._pinned_values:
            self._pinned_values[key] = compute()
        return self._pinned_values[key]
