"""Opening an atlas: the :class:`~lancell.core.AtlasCore` behind each of ``RaggedAtlas``'s constructors.

Which store a handle reads (the one given, the one inside the atlas's own location, or the one recorded)
is decided by :mod:`lancell.tables.store_location`; which table versions it reads, here: the live tables,
or those a snapshot recorded (``checkout``), read through pylance.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import obstore

from lancell.core import AtlasCore
from lancell.errors import (
    AtlasNotFoundError,
    LancellError,
    LancellWarning,
    StoreError,
    caller_outside_lancell,
)
from lancell.storage.store_failures import StoreFailures
from lancell.storage.stores import read_json
from lancell.tables.atlas_meta import create_storage, db_options, ensure_atlas_id, read_meta
from lancell.tables.atlas_tables import AtlasTables, Database
from lancell.tables.store_guards import (
    bind_given_store,
    check_given_store,
    refuse_another_copys_store,
    refuse_the_originals_store,
)
from lancell.tables.store_location import (
    StoreLike,
    located_store_url,
    reading_store_url,
    recorded_store,
    snapshot_store_candidate,
)
from lancell.tables.table_schemas import DATASETS_TABLE
from lancell.tables.versions import read_snapshot, snapshot_number

if TYPE_CHECKING:
    import obstore.store as obs_store

    from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema

__all__ = ["checked_out_core", "created_core", "latest_snapshot", "opened_core"]


def created_core(
    db_uri: str,
    cell_table_name: str,
    cell_schema: type[LancellBaseSchema],
    *,
    store: StoreLike | None,
    registry_schemas: Mapping[str, type[FeatureBaseSchema]],
    dataset_schema: type[DatasetRecord] | None,
    layers: Mapping[str, Sequence[str]] | None,
    fts_columns: str | Sequence[str],
    store_kwargs: dict[str, Any] | None,
    storage_options: Mapping[str, str] | None,
) -> AtlasCore:
    """The core of a new, empty atlas (``RaggedAtlas.create``; :func:`create_storage` writes it)."""
    meta, meta_store, database, store, _ = create_storage(
        db_uri,
        cell_table_name,
        cell_schema,
        store=store,
        registry_schemas=registry_schemas,
        dataset_schema=dataset_schema,
        layers=layers,
        fts_columns=fts_columns,
        store_kwargs=store_kwargs,
        storage_options=storage_options,
    )
    return _core(meta, meta_store, database, store, dataset_schema, None)


def opened_core(
    db_uri: str,
    *,
    store: StoreLike | None,
    store_kwargs: dict[str, Any] | None,
    dataset_schema: type[DatasetRecord] | None,
    storage_options: Mapping[str, str] | None,
    read_only: bool,
) -> AtlasCore:
    """The core of the live atlas at ``db_uri`` (``RaggedAtlas.open``).

    A writable open records the atlas's id if it has none, reads the store inside the atlas's location
    (refusing a copy whose store lies elsewhere); a read-only one writes nothing and reads the recorded
    store of a copy, with a warning. Either checks that a given store holds the atlas's groups.
    """
    options = db_options(db_uri, store_kwargs, storage_options)  # refused settings: before any request
    meta, meta_store = read_meta(db_uri, store_kwargs)
    meta = meta if read_only else ensure_atlas_id(meta_store, meta)
    given, url = store is not None, meta["store_url"]
    atlas_id_at = functools.partial(_atlas_id_at, store_kwargs=store_kwargs)
    if not given and read_only:
        url = reading_store_url(db_uri, meta, url, atlas_id_at)
    elif not given:
        url = located_store_url(db_uri, meta, url, writable=True, atlas_id_at=atlas_id_at)
    store = recorded_store(store, url, store_kwargs, recorded_config=meta.get("store_config"), db_uri=db_uri)
    database = Database(db_uri, options)
    if given and read_only:  # (a wrong one would read as groups missing: damage, not a wrong argument)
        check_given_store(store, database, None)
    elif given:
        check_given_store(store, database, _settled_stores(db_uri, meta, atlas_id_at))
        refuse_the_originals_store(db_uri, meta, store, atlas_id_at)
        refuse_another_copys_store(db_uri, meta, store, atlas_id_at)
        bind_given_store(db_uri, meta, store, atlas_id_at)
    return _core(meta, meta_store, database, store, dataset_schema, None, read_only=read_only)


def _settled_stores(
    db_uri: str, meta: dict[str, Any], atlas_id_at: Callable[[str], str | None]
) -> list[str] | None:
    """The stores an open without ``store=`` could settle on: the recorded one, and a copy's own inside its
    folder; None for a copy or move whose store lies outside it (every open of it names its store)."""
    try:
        located = located_store_url(db_uri, meta, meta["store_url"], writable=True, atlas_id_at=atlas_id_at)
        return sorted({meta["store_url"], located})
    except StoreError:
        return None


def _atlas_id_at(db_uri: str, store_kwargs: dict[str, Any] | None) -> str | None:
    """The id of the atlas at ``db_uri``, or None when there is none (its creation unfinished, or nothing).

    Raises
    ------
    StoreError
        What is at ``db_uri`` cannot be read (refused, unreachable, another format): whether the atlas is
        still there is unknown, and writing is not safe.
    """
    try:
        meta, _ = read_meta(db_uri, store_kwargs)
    except AtlasNotFoundError:  # moved: nothing (or an unfinished creation) left there
        return None
    except LancellError as exc:
        raise StoreError(
            f"cannot tell whether the atlas this one was copied or moved from is still at {db_uri} ({exc}): "
            "it may still use the zarr store given; open read-only, or pass a copy of the store"
        ) from exc
    return meta.get("atlas_id")


def checked_out_core(
    db_uri: str,
    version: int,
    *,
    store: StoreLike | None,
    store_kwargs: dict[str, Any] | None,
    dataset_schema: type[DatasetRecord] | None,
    storage_options: Mapping[str, str] | None,
) -> AtlasCore:
    """The read-only core of snapshot ``version`` (``RaggedAtlas.checkout``): every table pinned to the
    Lance version the snapshot recorded, its store as recorded (or inside a moved atlas's location).

    Raises
    ------
    ArgumentError
        ``version`` is not an integer.
    VersionNotFoundError
        No snapshot has it.
    """
    version = snapshot_number(version, "checkout(version=...) (checkout_latest opens the newest)")
    options = db_options(db_uri, store_kwargs, storage_options)  # refused settings: before any request
    meta, meta_store = read_meta(db_uri, store_kwargs)
    database = Database(db_uri, options)
    row = read_snapshot(database, version)
    reading = lambda uri: _atlas_id_at(uri, store_kwargs)  # noqa: E731
    given = store is not None
    url = row["store_url"]
    if not given:
        moved = _moved_snapshot_store(db_uri, meta, row, database, store_kwargs)
        url = moved if moved is not None else reading_store_url(db_uri, meta, url, reading)
    store = recorded_store(store, url, store_kwargs, recorded_config=row.get("store_config"), db_uri=db_uri)
    if given:  # (the snapshot's records: an archive of its store need not hold later datasets' groups)
        check_given_store(store, database, None, row["tables"][DATASETS_TABLE])
    return _core(meta, meta_store, database, store, dataset_schema, row)


_GROUPS_LOOKED_AT = 8  # a snapshot's first and last datasets whose groups a relocated store must hold


def _moved_snapshot_store(
    db_uri: str,
    meta: Mapping[str, Any],
    row: Mapping[str, Any],
    database: Database,
    store_kwargs: dict[str, Any] | None,
) -> str | None:
    """The store inside this atlas's location for a snapshot taken where the atlas had been moved (its
    recorded store lay inside that place: :func:`snapshot_store_candidate`), when it holds the groups of the
    snapshot's first and last ``_GROUPS_LOOKED_AT`` datasets; else None (the recorded store is read, as for
    any other snapshot)."""
    candidate = snapshot_store_candidate(db_uri, meta, row["store_url"])
    if candidate is None:
        return None
    try:
        store = recorded_store(None, candidate, store_kwargs, recorded_config=row.get("store_config"))
        groups = database.dataset(DATASETS_TABLE, row["tables"][DATASETS_TABLE]).to_table(["zarr_group"])
        names = groups.column("zarr_group").to_pylist()
        looked_at = dict.fromkeys(names[:_GROUPS_LOOKED_AT] + names[-_GROUPS_LOOKED_AT:])
        if any(read_json(store, f"{name}/zarr.json") is None for name in looked_at):
            return None  # not that snapshot's store (an older copy of it, or a store given then, elsewhere)
    except (StoreError, obstore.exceptions.BaseError, ValueError):  # (not there, or not readable)
        return None
    return candidate


def latest_snapshot(
    db_uri: str, store_kwargs: dict[str, Any] | None, storage_options: Mapping[str, str] | None
) -> int:
    """The newest snapshot's version (``RaggedAtlas.checkout_latest``).

    Raises
    ------
    AtlasNotFoundError
        No atlas at ``db_uri`` (checked before anything is opened or created).
    VersionNotFoundError
        The atlas has no snapshot.
    """
    options = db_options(db_uri, store_kwargs, storage_options)
    read_meta(db_uri, store_kwargs)
    database = Database(db_uri, options)
    snapshot = read_snapshot(database, None)
    _warn_of_later_datasets(database, snapshot)
    return int(snapshot["version"])


def _warn_of_later_datasets(database: Database, snapshot: Mapping[str, Any]) -> None:
    """Warn when the live atlas's datasets are not the latest snapshot's (ingested, deleted or given a layer
    since): a notebook that ingested more and read ``checkout_latest`` again read the older release without a
    word."""
    at = snapshot["tables"][DATASETS_TABLE]
    live = database.dataset(DATASETS_TABLE)
    if live.version == at:
        return
    released = database.dataset(DATASETS_TABLE, at)
    # (a dataset deleted and ingested again under its uid: another group; a layer added: other layers)
    columns = ["uid", "zarr_group", "layers"]
    columns = [name for name in columns if name in live.schema.names and name in released.schema.names]
    now, then = _dataset_keys(live, columns), _dataset_keys(released, columns)
    if now != then:
        changed = sorted({key[0] for key in now ^ then})
        warnings.warn(
            f"the latest snapshot ({snapshot['version']}) is older than the atlas: {len(changed)} dataset(s) "
            f"ingested, deleted, replaced or given a layer since (e.g. {changed[:3]}) are not read as they "
            "are now; snapshot() to release them, or RaggedAtlas.open(db_uri, read_only=True) to read the "
            "live atlas",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def _dataset_keys(datasets: Any, columns: list[str]) -> set[tuple]:
    """Each dataset record's ``columns`` (a list as a tuple) of the Lance dataset ``datasets``."""
    rows = datasets.to_table(columns=columns).to_pylist()
    return {tuple(tuple(v) if isinstance(v, list) else v for v in (row[c] for c in columns)) for row in rows}


def _core(
    meta: dict[str, Any],
    meta_store: obs_store.ObjectStore,
    database: Database,
    store: obs_store.ObjectStore,
    dataset_schema: type[DatasetRecord] | None,
    snapshot: dict[str, Any] | None,
    *,
    read_only: bool = False,
) -> AtlasCore:
    pinned = None if snapshot is None else snapshot["tables"]
    tables = AtlasTables.open(database, meta["cell_table_name"], dict(meta["registries"]), pinned=pinned)
    if dataset_schema is not None:  # (its class has loaded lancedb, which the schema module imports)
        from lancell.tables.schema_fit import check_record_fields

        check_record_fields(dataset_schema, tables.datasets.schema, writable=not (read_only or snapshot))
    with StoreFailures(f"opening the zarr store of the atlas at {database.uri!r} failed"):
        return AtlasCore(
            db_uri=database.uri,
            meta=meta,
            tables=tables,
            store=store,
            meta_store=meta_store,
            dataset_schema=dataset_schema,
            read_only=read_only or snapshot is not None,
            snapshot_version=None if snapshot is None else int(snapshot["version"]),
            storage_options=database.storage_options,
        )
