"""``RaggedAtlas``: a LanceDB database of cells plus one zarr group per dataset, each with its own panel."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore.store as obs_store
import pandas as pd
import pyarrow as pa

from lancell.core import AtlasCore
from lancell.errors import require_text, require_type
from lancell.feature_registration import register_features
from lancell.layer_entries import recorded_layers
from lancell.opening import checked_out_core, created_core, latest_snapshot, opened_core
from lancell.optimize import assign_global_indices, optimize_tables
from lancell.snapshots import delete_snapshot, snapshot_listing, take_snapshot
from lancell.tables.feature_spaces import (
    FeatureSpace,
    resolve_feature_space,
)
from lancell.tables.group_claims import GroupClaims
from lancell.tables.registry import OnConflict
from lancell.tables.removed_versions import read_boundary
from lancell.tables.store_location import Location, StoreLike, as_location
from lancell.tables.versions import noted_snapshot
from lancell.validation import validate_atlas

# lancell.query.atlas_query and lancell.maintenance are imported where used: both import anndata; the
# schemas (lancedb's LanceModel) are only annotations here: a checked-out atlas never imports lancedb
if TYPE_CHECKING:
    from lancedb.pydantic import LanceModel

    from lancell.query.atlas_query import AtlasQuery
    from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema

__all__ = ["RaggedAtlas"]

# the public methods are the atlas's boundary with its stores: a store failure is a StoreError naming them
# a store failure is a StoreError naming the atlas; a checkout's removed versions a CommitConflictError
_boundary = read_boundary(lambda atlas: f"the atlas at {atlas.db_uri!r}", lambda atlas: atlas)


class RaggedAtlas:
    """A cell atlas whose datasets keep their own feature panels; reconstructed at query time.

    Create one with :meth:`create`, reopen it with :meth:`open` (writable, or ``read_only``), or read a frozen
    snapshot with :meth:`checkout` / :meth:`checkout_latest`. Checked-out handles are read-only.
    """

    def __init__(self, core: AtlasCore) -> None:
        self.core = core

    @property
    def db_uri(self) -> str:
        """The LanceDB location."""
        return self.core.db_uri

    @property
    def store(self) -> obs_store.ObjectStore:
        """The obstore store of the zarr groups."""
        return self.core.store

    @property
    def dataset_schema(self) -> type[DatasetRecord]:
        """The :class:`~lancell.tables.schema.DatasetRecord` subclass of dataset rows."""
        return self.core.dataset_schema

    @property
    def read_only(self) -> bool:
        """Whether this handle refuses writes (checked out at a snapshot, or opened ``read_only``)."""
        return self.core.read_only

    @property
    def snapshot_version(self) -> int | None:
        """The snapshot this handle is checked out at; None for the live atlas."""
        return self.core.snapshot_version

    @property
    def feature_spaces(self) -> dict[str, FeatureSpace]:
        """The atlas's feature spaces by name."""
        return self.core.feature_spaces

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        db_uri: Location,
        cell_table_name: str,
        cell_schema: type[LancellBaseSchema],
        *,
        store: StoreLike | Location | None = None,
        registry_schemas: Mapping[str, type[FeatureBaseSchema]],
        dataset_schema: type[DatasetRecord] | None = None,
        layers: Mapping[str, Sequence[str]] | None = None,
        fts_columns: str | Sequence[str] = (),
        store_kwargs: dict[str, Any] | None = None,
        storage_options: Mapping[str, str] | None = None,
    ) -> RaggedAtlas:
        """Create an empty atlas.

        Parameters
        ----------
        db_uri
            LanceDB location: a directory (a string or a path) or an object-store URL.
        cell_table_name
            Name of the cell table.
        cell_schema
            A :class:`LancellBaseSchema` subclass; each pointer field declares a feature space.
        store
            The obstore store of the zarr arrays, or its URL or folder (a string or a path);
            ``<db_uri>/_zarr`` by default.
        registry_schemas
            One :class:`FeatureBaseSchema` subclass per feature space.
        dataset_schema
            The :class:`DatasetRecord` subclass of dataset rows (``DatasetRecord`` when None).
        layers
            Allowed layer names per feature space (defaults in
            ``lancell.tables.feature_spaces.DEFAULT_LAYERS``).
        fts_columns
            String cell columns (one name or several) that ``optimize()`` indexes for full-text
            ``search(text)``.
        store_kwargs
            Keyword arguments of :func:`obstore.store.from_url` for the store and the database's side files
            (credentials stay in memory: only the URL and non-secret settings are persisted).
        storage_options
            LanceDB options; derived from ``store_kwargs`` when None (:func:`lancedb_storage_options`).

        Raises
        ------
        SchemaError
            Schemas that do not fit together. :class:`AtlasExistsError` if an atlas is already there.
        """
        return cls(
            created_core(
                as_location(db_uri),
                cell_table_name,
                cell_schema,
                store=as_location(store, "store"),
                registry_schemas=registry_schemas,
                dataset_schema=dataset_schema,
                layers=layers,
                fts_columns=fts_columns,
                store_kwargs=store_kwargs,
                storage_options=storage_options,
            )
        )

    @classmethod
    def open(
        cls,
        db_uri: Location,
        *,
        store: StoreLike | Location | None = None,
        store_kwargs: dict[str, Any] | None = None,
        dataset_schema: type[DatasetRecord] | None = None,
        storage_options: Mapping[str, str] | None = None,
        read_only: bool = False,
    ) -> RaggedAtlas:
        """Open the live atlas at ``db_uri``; schemas and feature spaces come from the database.

        ``read_only``: a handle that reads the live tables and refuses writes
        (:class:`~lancell.errors.ReadOnlyAtlasError`); it writes nothing on opening, and a copied or moved
        atlas whose store lies outside its location reads that store as recorded, with a
        :class:`~lancell.errors.LancellWarning` (a writable open refuses it until ``store`` is given, which
        must hold the atlas's groups).
        """
        return cls(
            opened_core(
                as_location(db_uri),
                store=as_location(store, "store"),
                store_kwargs=store_kwargs,
                dataset_schema=dataset_schema,
                storage_options=storage_options,
                read_only=read_only,
            )
        )

    @classmethod
    def checkout(
        cls,
        db_uri: Location,
        version: int,
        *,
        store: StoreLike | Location | None = None,
        store_kwargs: dict[str, Any] | None = None,
        dataset_schema: type[DatasetRecord] | None = None,
        storage_options: Mapping[str, str] | None = None,
    ) -> RaggedAtlas:
        """Open snapshot ``version`` read-only: every table pinned to the Lance version it recorded, read
        through pylance (lancedb is imported only by a search)."""
        core = checked_out_core(
            as_location(db_uri),
            version,
            store=as_location(store, "store"),
            store_kwargs=store_kwargs,
            dataset_schema=dataset_schema,
            storage_options=storage_options,
        )
        return cls(core)

    @classmethod
    def checkout_latest(
        cls,
        db_uri: Location,
        store: StoreLike | Location | None = None,
        store_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> RaggedAtlas:
        """Open the most recent snapshot read-only (store inferred from the atlas when not given)."""
        version = latest_snapshot(as_location(db_uri), store_kwargs, kwargs.get("storage_options"))
        return cls.checkout(db_uri, version, store=store, store_kwargs=store_kwargs, **kwargs)

    @staticmethod
    def list_versions(
        db_uri: Location,
        storage_options: Mapping[str, str] | None = None,
        *,
        store_kwargs: dict[str, Any] | None = None,
        deleted: bool = False,
    ) -> pd.DataFrame:
        """Every snapshot: version, table versions, cell and dataset counts, store URL, note; ``deleted``:
        deleted ones too, with ``deleted_at`` (missing for the others).

        Raises
        ------
        AtlasNotFoundError
            No atlas at ``db_uri`` (nothing is created there).
        """
        return snapshot_listing(as_location(db_uri), storage_options, store_kwargs, deleted=deleted)

    @staticmethod
    def find_snapshot(
        db_uri: Location,
        note: str,
        storage_options: Mapping[str, str] | None = None,
        *,
        store_kwargs: dict[str, Any] | None = None,
    ) -> int | None:
        """The snapshot whose note is ``note`` (a label: the Dagster partitions), or None
        (:func:`~lancell.tables.versions.noted_snapshot`).

        Raises
        ------
        AtlasNotFoundError
            No atlas at ``db_uri`` (nothing is created there).
        VersionNotFoundError
            The snapshot with that note was deleted.
        """
        every = snapshot_listing(as_location(db_uri), storage_options, store_kwargs, deleted=True)
        return noted_snapshot(every, note)

    # ----------------------------------------------------------------------------------- writing
    @_boundary
    def register_features(
        self,
        feature_space: str,
        features: Sequence[LanceModel] | pd.DataFrame | pa.Table,
        on_conflict: OnConflict = "error",
    ) -> int:
        """Add features to a registry; returns how many were new.

        A uid registered again with the same values in the given columns changes nothing. One registered
        with other values (a mouse ``C3`` given where a human ``C3`` is registered) is a conflict:
        ``on_conflict="error"`` raises :class:`~lancell.errors.FeatureConflictError` listing uid, column,
        registered and given value, and registers nothing; ``"keep"`` keeps the registered values and warns
        (:class:`~lancell.errors.FeatureConflictWarning`); ``"update"`` writes the given values. A registered
        value that is missing (null, NaN: not recorded) is filled in with a given one whatever
        ``on_conflict`` says, as no conflict (the count returned is of new features only); a given value that
        is missing is no conflict either and never overwrites a registered one. A feature's ``global_index``
        never changes.
        """
        return register_features(self.core, feature_space, features, on_conflict)

    @_boundary
    def optimize(self, cleanup_older_than: timedelta | None = None) -> dict[str, int]:
        """Compact every table, prune old *untagged* versions, and number unindexed features; return each
        table's version after (:func:`lancell.optimize.optimize_tables`).

        Snapshot versions are tagged, so no cleanup setting can make a snapshot un-checkout-able.

        Raises
        ------
        ArgumentError
            ``cleanup_older_than`` is not a ``datetime.timedelta`` (nothing is changed).
        ArgumentValueError
            ``cleanup_older_than`` is negative (nothing is changed).
        LockLostError
            Another process took the optimize lock over; the tables not yet optimized are left as they are.
        """
        return optimize_tables(self.core, cleanup_older_than)

    @_boundary
    def assign_global_indices(self) -> dict[str, int]:
        """Number features that have no global index yet (rows added by hand); return counts per space."""
        return assign_global_indices(self.core)

    @_boundary
    def validate(self, dataset_uid: str | None = None, *, checksums: bool = False) -> list[str]:
        """Inconsistencies between tables and zarr groups; an empty list means the atlas is consistent.

        ``dataset_uid``: check that dataset only (and the registries), at the cost of the dataset; an unknown
        uid raises :class:`~lancell.errors.DatasetNotFoundError`. ``checksums``: also read every stored chunk
        and check its CRC32C (a flipped bit, a truncated object), at the cost of reading the data. A live
        handle checks one state of the tables: a dataset another process commits or deletes meanwhile is seen
        whole or not at all.
        """
        return validate_atlas(self.core, dataset_uid, checksums=checksums)

    @_boundary
    def snapshot(self, note: str | None = None) -> int:
        """Validate and record the current version of every table; return the new snapshot number
        (:func:`lancell.snapshots.take_snapshot`).

        Raises
        ------
        ArgumentError
            ``note`` is neither a str nor None (nothing is recorded).
        ArgumentValueError
            ``note`` is blank (nothing is recorded).
        ValidationError
            The atlas is inconsistent (nothing is recorded).
        LockLostError
            Another process took the snapshot lock over while this one validated (nothing is recorded).
        """
        return take_snapshot(self.core, note)

    @_boundary
    def delete_snapshot(self, version: int) -> None:
        """Delete snapshot ``version`` so that what only it kept can be reclaimed (by ``optimize`` with
        ``cleanup_older_than``, and ``vacuum``); its number and note are never reused
        (:func:`lancell.snapshots.delete_snapshot`, whose errors it raises)."""
        delete_snapshot(self.core, version)

    @_boundary
    def delete_dataset(self, uid: str) -> None:
        """Remove a dataset's cells and record (a new table version); its zarr group stays until vacuum()."""
        from lancell.maintenance import remove_dataset

        self.core.require_writable()
        remove_dataset(self.core, uid)

    @_boundary
    def vacuum(
        self,
        grace: timedelta = timedelta(hours=1),
        *,
        dry_run: bool = False,
        on_group: Callable[[str, str], None] | None = None,
    ) -> dict[str, int]:
        """Delete this atlas's own zarr groups that no live dataset and no snapshot references, released
        more than ``grace`` ago (:func:`lancell.maintenance.remove_debris`: the store is never listed, so
        nothing else in it is deleted). Each group deleted is logged (INFO) and given to ``on_group`` as
        ``(group, dataset uid)``; ``dry_run=True`` deletes nothing and counts, logs and names what it would
        (also through a handle opened ``read_only``: it takes no lock).

        Returns
        -------
        dict of str to int
            ``groups`` and ``cells`` (of interrupted ingestions) deleted; ``unclaimed`` and ``foreign``:
            groups left in place because this atlas cannot prove them its own.
        """
        from lancell.maintenance import remove_debris

        if not dry_run:  # (a dry run refuses a checkout itself: a snapshot's datasets are not the live ones)
            self.core.require_writable()
        return remove_debris(self.core, grace, dry_run=dry_run, on_group=on_group)

    @property
    def atlas_id(self) -> str | None:
        """This atlas's id; every zarr group it writes carries it. None only on a read-only handle of an
        atlas created before lancell recorded ids (:meth:`open` gives such an atlas one)."""
        return self.core.atlas_id

    @property
    def group_claims(self) -> GroupClaims:
        """The claims of the zarr groups this atlas wrote (:mod:`lancell.tables.group_claims`); writable only.

        Raises
        ------
        ReadOnlyAtlasError
            The handle is checked out at a snapshot.
        """
        return self.core.group_claims

    @_boundary
    def table_versions(self) -> dict[str, int]:
        """The Lance version of every table this handle reads (a snapshot's pinned ones when checked out)."""
        return self.core.tables.versions()

    @_boundary
    def group_attributes(self, zarr_group: str) -> dict[str, Any] | None:
        """A dataset's zarr group attributes (format, layers and their dtypes, geometry, counts), or None when
        the group is not in the store (:class:`~lancell.errors.ArgumentError`: not a str;
        :class:`~lancell.errors.ArgumentValueError`: not text UTF-8 can store)."""
        require_type("zarr_group", zarr_group, str, "a zarr group name (a str)")
        require_text("zarr_group", zarr_group)
        return self.core.group_attrs(
            zarr_group, reopen=True
        )  # (as stored now: another handle may add a layer)

    @_boundary
    def list_datasets(self) -> pd.DataFrame:
        """The dataset records; a dataset table from before several layers (no ``layers`` column) shows as
        each record's ``layers`` those its zarr group stores (what readers read), else its one ``layer``."""
        frame = self.core.tables.datasets.to_arrow().to_pandas()
        if "layers" not in frame.columns:
            stored = [
                recorded_layers(None, self.core.group_attrs(group, reopen=True) or {}) or [layer]
                for group, layer in zip(frame["zarr_group"], frame["layer"], strict=True)
            ]
            frame.insert(int(frame.columns.get_loc("layer")) + 1, "layers", stored)
        return frame

    @property
    def cell_arrow_schema(self) -> pa.Schema:
        """The cell table's Arrow schema: every stored cell column and its type."""
        return self.core.cell_arrow

    @_boundary
    def feature_registry(self, feature_space: str) -> pd.DataFrame:
        """The registry of ``feature_space`` sorted by global index."""
        space = resolve_feature_space(self.feature_spaces, feature_space)
        frame = self.core.tables.registry(space.name).to_arrow().to_pandas()
        return frame.sort_values("global_index").reset_index(drop=True)

    def query(self) -> AtlasQuery:
        """A lazy query over the cells (see :class:`lancell.query.atlas_query.AtlasQuery`)."""
        from lancell.query.atlas_query import AtlasQuery

        return AtlasQuery(self)

    def __repr__(self) -> str:
        state = "live" if self.snapshot_version is None else f"snapshot {self.snapshot_version}"
        state += ", read-only" if self.read_only and self.snapshot_version is None else ""
        return f"RaggedAtlas({self.db_uri!r}, {state}, feature spaces {sorted(self.feature_spaces)})"
