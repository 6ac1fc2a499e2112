"""Where an atlas lives: creating its tables, zarr root and metadata file, and reading the metadata back.

The metadata file (``_lancell/atlas.json`` next to the LanceDB tables) records the atlas's id (a uuid: the
groups this atlas writes carry it, see :mod:`lancell.tables.group_claims`), the on-disk format, the cell table
and registry table names, the zarr store's URL and non-secret settings, the full-text columns and the creation
time. It is written last, under the "create" lock, so an atlas without it does not exist; a creation killed
before it is finished by the next ``create`` at that location (``_lancell/creating.json`` names its tables).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import obstore
import obstore.store as obs_store
import pyarrow as pa
import zarr

from lancell.errors import (
    AtlasExistsError,
    AtlasNotFoundError,
    FormatVersionError,
    SchemaError,
    StoreError,
    require_type,
)
from lancell.storage.groups import FORMAT_VERSION
from lancell.storage.store_failures import is_store_failure, store_error
from lancell.storage.store_retries import retried
from lancell.storage.store_settings import canonical_name
from lancell.storage.stores import (
    check_options_used,
    describe_store,
    is_local,
    lancedb_storage_options,
    local_path,
    location_in_store,
    open_store,
    public_store_config,
    read_json,
    write_json,
)
from lancell.storage.zarr_store import zarr_store
from lancell.tables.atlas_tables import Database, create_tables, table_names
from lancell.tables.feature_spaces import (
    build_feature_spaces,
    feature_spaces_table,
)
from lancell.tables.layout_numbering import NUMBERED_LAYOUTS
from lancell.tables.locks import atlas_lock
from lancell.tables.store_location import (
    DEFAULT_INSIDE,
    StoreLike,
    comparable_location,
    resolve_store,
    warn_of_other_groups,
)
from lancell.tables.stored_fields import SEARCH_RESULT_COLUMN, vector_fields
from lancell.tables.table_schemas import (
    DATASETS_TABLE,
    FEATURE_SPACES_SCHEMA,
    FEATURE_SPACES_TABLE,
    LAYOUTS_SCHEMA,
    LAYOUTS_TABLE,
    VERSIONS_SCHEMA,
    VERSIONS_TABLE,
)

if TYPE_CHECKING:  # typing only; lancell.tables.schema (lancedb's LanceModel) is imported by create_storage
    from lancedb.db import DBConnection

    from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema

__all__ = [
    "META_PATH",
    "create_storage",
    "db_options",
    "ensure_atlas_id",
    "read_meta",
]

META_PATH = "_lancell/atlas.json"
# written before the tables of a creation and deleted after META_PATH: it names the tables an unfinished
# creation made (see _drop_unfinished)
CREATING_PATH = "_lancell/creating.json"
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")  # what LanceDB accepts
# Settings that are (part of) an identity: access keys, secrets, tokens, profiles, roles, SAS keys.
_CREDENTIAL = re.compile(r"key|secret|token|profile|role|credential|password|sas")

log = logging.getLogger(__name__)


def db_options(
    db_uri: str, store_kwargs: dict[str, Any] | None, storage_options: Mapping[str, str] | None
) -> Mapping[str, str] | None:
    """LanceDB options: those derived from ``store_kwargs``, completed and overridden by ``storage_options``
    (LanceDB-only settings; given alone, they replaced the endpoint and credentials): a setting given under
    any spelling (``aws_endpoint``, ``endpoint``) replaces the derived one, and credentials given replace
    every derived credential (a key with another identity's session token would be refused).

    Raises
    ------
    StoreError
        ``storage_options`` without ``store_kwargs`` for a database on an object store: they configure LanceDB
        only, and the atlas's metadata, locks and zarr store would be opened without them.
    """
    if storage_options and store_kwargs is None and not is_local(db_uri):
        raise StoreError(
            f"storage_options configure LanceDB only, not the metadata, locks and zarr store of the atlas "
            f"at {db_uri!r}: give the settings as store_kwargs (obstore's config and client_options, from "
            "which LanceDB's are derived), or store_kwargs={} when the environment configures the stores"
        )
    derived = lancedb_storage_options(db_uri, store_kwargs)
    if storage_options is None:
        return derived
    given = {canonical_name(key) for key in storage_options}
    kept = {key: value for key, value in (derived or {}).items() if canonical_name(key) not in given}
    if any(_CREDENTIAL.search(name) for name in given):  # their own identity: no part of the derived one
        kept = {key: value for key, value in kept.items() if not _CREDENTIAL.search(canonical_name(key))}
    return {**kept, **storage_options}


def read_meta(
    db_uri: str, store_kwargs: dict[str, Any] | None
) -> tuple[dict[str, Any], obs_store.ObjectStore]:
    """The atlas's metadata file and the store it lives in.

    Raises
    ------
    AtlasNotFoundError
        Nothing at ``db_uri``. :class:`FormatVersionError` for another on-disk format.
    """
    if is_local(db_uri) and not local_path(db_uri).is_dir():
        kind = "a file" if local_path(db_uri).exists() else "nothing there"
        raise AtlasNotFoundError(f"no atlas at {db_uri!r} ({kind})")
    meta_store = open_store(db_uri, store_kwargs)
    try:
        meta = read_json(meta_store, META_PATH)
    except obstore.exceptions.BaseError as exc:  # refused credentials, an unreachable endpoint...
        raise store_error(exc, f"cannot read the atlas at {db_uri!r} ({META_PATH})") from exc
    if meta is None:
        if read_json(meta_store, CREATING_PATH) is not None:
            raise AtlasNotFoundError(
                f"the creation of the atlas at {db_uri!r} did not finish ({META_PATH} is missing): create it "
                "again at this location (the unfinished creation's empty tables are replaced)"
            )
        remote = "://" in db_uri and not db_uri.startswith("file://")
        where = "; check the bucket and the path" if remote else ""
        raise AtlasNotFoundError(f"no atlas at {db_uri!r} ({META_PATH} is missing{where})")
    if meta.get("lancell_format") != FORMAT_VERSION:
        raise FormatVersionError(
            f"atlas at {db_uri!r} has format {meta.get('lancell_format')!r}; "
            f"this lancell reads {FORMAT_VERSION}"
        )
    return meta, meta_store


def ensure_atlas_id(meta_store: obs_store.ObjectStore, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with an ``atlas_id``: one is added to the metadata file of an atlas created without it.

    Taken under the "create" lock and read again there, so two processes opening such an atlas agree.
    """
    if meta.get("atlas_id"):
        return meta
    with atlas_lock(meta_store, "create"):
        current = read_json(meta_store, META_PATH) or meta
        if not current.get("atlas_id"):
            current = {**current, "atlas_id": uuid.uuid4().hex}
            write_json(meta_store, META_PATH, current)
    return current


def create_storage(
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
) -> tuple[dict[str, Any], obs_store.ObjectStore, Database, obs_store.ObjectStore, Mapping[str, str] | None]:
    """Create the empty tables, zarr root and metadata file of a new atlas (see ``RaggedAtlas.create``).

    Nothing is opened or written before the schemas are checked. Returns ``(meta, meta_store, database,
    store, storage_options)``; ``store`` is ``<db_uri>/_zarr`` and ``dataset_schema`` ``DatasetRecord`` when
    None.

    Raises
    ------
    SchemaError
        Schemas that do not fit together, or a table name LanceDB refuses. :class:`AtlasExistsError` if an
        atlas is already there.
        :class:`StoreError` if ``db_uri`` is empty or the store's root is ``db_uri`` itself (every group would
        lie in the database directory).
    """
    from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, pointer_fields
    from lancell.tables.schema_fit import refuse_enum_fields, refuse_unapplied_fields

    require_type("cell_table_name", cell_table_name, str, "a table name (a str)")
    fts_columns = [fts_columns] if isinstance(fts_columns, str) else list(fts_columns)  # one name or several
    require_type(
        "registry_schemas", registry_schemas, Mapping, "a dict {feature space: FeatureBaseSchema subclass}"
    )
    dataset_schema = DatasetRecord if dataset_schema is None else dataset_schema
    pointers = pointer_fields(cell_schema)
    for name, schema in registry_schemas.items():
        if not (isinstance(schema, type) and issubclass(schema, FeatureBaseSchema)):
            raise SchemaError(f"registry schema for {name!r} must subclass FeatureBaseSchema, got {schema!r}")
    from lancell.tables.schema_fit import require_record_schema  # (lancedb's schema module: created only)

    require_record_schema(dataset_schema)
    spaces = build_feature_spaces(pointers, list(registry_schemas), layers)
    cell_arrow = cell_schema.to_arrow_schema()
    refuse_enum_fields("cell schema", cell_schema, cell_arrow)
    refuse_unapplied_fields("cell schema", cell_schema)
    refuse_enum_fields("dataset schema", dataset_schema, dataset_schema.to_arrow_schema())
    for schema in registry_schemas.values():
        refuse_enum_fields("registry schema", schema, schema.to_arrow_schema())
        refuse_unapplied_fields("registry schema", schema)
    for column in fts_columns:
        if column not in cell_arrow.names or not pa.types.is_string(cell_arrow.field(column).type):
            raise SchemaError(f"fts column {column!r} is not a string column of the cell schema")
    kinds = ["vector"] * bool(vector_fields(cell_arrow)) + ["fts", "hybrid"] * bool(fts_columns)
    searched = sorted({SEARCH_RESULT_COLUMN[kind] for kind in kinds})  # the searches this atlas can run
    if taken := [name for name in searched if name in cell_arrow.names]:
        raise SchemaError(
            f"cell schema {cell_schema.__name__}: fields {taken} take the names of the columns its searches "
            "add to their results; name them otherwise"
        )
    registries = [space.registry_table for space in spaces.values()]
    for table in [cell_table_name, *registries]:
        if not _TABLE_NAME.fullmatch(table):
            raise SchemaError(f"table name {table!r}: use letters, digits, '_', '-' and '.' only")
    own = [DATASETS_TABLE, FEATURE_SPACES_TABLE, LAYOUTS_TABLE, VERSIONS_TABLE, *registries]
    if cell_table_name in own:  # the two tables would be one: the atlas could not be read
        raise SchemaError(
            f"cell table name {cell_table_name!r} is the name of one of the atlas's own tables ({own}); "
            "name it otherwise"
        )
    if not db_uri.strip():
        raise StoreError("the atlas's location (db_uri) is empty")
    check_options_used([db_uri, *([store] if isinstance(store, str) else [])], store_kwargs)
    storage_options = db_options(db_uri, store_kwargs, storage_options)  # a refusal: before anything is made
    made = [db_uri, *([store] if isinstance(store, str) else [])]
    with _folders_removed_on_failure(made):  # a refusal or a failure leaves no folder it made
        meta_store = open_store(db_uri, store_kwargs)
        # (a local one, before its store folder is made; every one again, locked)
        if is_local(db_uri) and read_json(meta_store, META_PATH) is not None:
            raise AtlasExistsError(f"an atlas already exists at {db_uri!r}")
        store = resolve_store(store, f"{db_uri.rstrip('/')}{DEFAULT_INSIDE}", store_kwargs)
        if location_in_store(store, db_uri) == "":
            raise StoreError(
                f"the zarr store {describe_store(store)} is the database directory {db_uri!r} itself; give a "
                "store beside or inside it (the default is <db_uri>/_zarr)"
            )
        database = Database(db_uri, storage_options)
        db = database.connect()
        meta = {
            "atlas_id": uuid.uuid4().hex,
            "lancell_format": FORMAT_VERSION,
            "cell_table_name": cell_table_name,
            "store_url": describe_store(store),
            "db_url": comparable_location(
                db_uri
            ),  # where it was created (a copy elsewhere finds its own store)
            "store_config": public_store_config(store),
            "registries": {name: space.registry_table for name, space in spaces.items()},
            "fts_columns": list(fts_columns),
            "created_at": datetime.now(UTC).isoformat(),
            NUMBERED_LAYOUTS: True,  # every layout uid hashes its global indices (layout_numbering)
        }
        schemas = {
            cell_table_name: cell_arrow,
            DATASETS_TABLE: dataset_schema.to_arrow_schema(),
            LAYOUTS_TABLE: LAYOUTS_SCHEMA,
            FEATURE_SPACES_TABLE: FEATURE_SPACES_SCHEMA,
            VERSIONS_TABLE: VERSIONS_SCHEMA,
        }
        for name, schema in registry_schemas.items():
            schemas[spaces[name].registry_table] = schema.to_arrow_schema()
        with atlas_lock(meta_store, "create"):  # two processes may both find no atlas and create one
            if read_json(meta_store, META_PATH) is not None:
                raise AtlasExistsError(f"an atlas already exists at {db_uri!r}")
            _drop_unfinished(db, meta_store)
            clash = _stored_tables(db, schemas)
            if clash:
                raise AtlasExistsError(
                    f"tables {clash} already exist at {db_uri!r}, which is not a lancell atlas "
                    f"({META_PATH} is missing): create the atlas in another location"
                )
            warn_of_other_groups(store, db_uri)
            write_json(meta_store, CREATING_PATH, {"tables": sorted(schemas)})
            try:
                create_tables(db, schemas, {FEATURE_SPACES_TABLE: feature_spaces_table(spaces)})
                root = zarr.open_group(zarr_store(store), mode="a", zarr_format=3)
                root.update_attributes({"lancell_format": FORMAT_VERSION})
                _write_meta(meta_store, meta)
            except FileExistsError:
                raise AtlasExistsError(f"an atlas was created concurrently at {db_uri!r}") from None
            except Exception as exc:
                _roll_back_creation(db, meta_store)
                if is_store_failure(exc):
                    raise store_error(exc, f"cannot create the atlas at {db_uri!r}") from exc
                raise
            try:
                _delete_marker(meta_store)
            except (
                Exception
            ):  # the atlas is whole: the marker only tells create() what an unfinished one made
                log.warning(
                    "atlas at %r created; its %s could not be deleted", db_uri, CREATING_PATH, exc_info=True
                )
    return meta, meta_store, database, store, storage_options


def _write_meta(meta_store: obs_store.ObjectStore, meta: dict[str, Any]) -> None:
    """Write the new atlas's ``META_PATH`` (only where none is), the last step of its creation. A write whose
    outcome is unknown (its reply lost, or a retry of it finding it written) is read back: it is done when
    the object holds this atlas's id."""
    try:
        write_json(meta_store, META_PATH, meta, create=True)
    except Exception:
        try:
            written = read_json(meta_store, META_PATH)
        except Exception:  # the store cannot be read either: the write's own error is the one to raise
            written = None
        if written is None or written.get("atlas_id") != meta["atlas_id"]:
            raise


@contextmanager
def _folders_removed_on_failure(uris: Iterable[str]) -> Iterator[None]:
    """Remove again, if the block raises (other than :class:`AtlasExistsError`: an atlas there is not this
    call's), the local folders of ``uris`` that do not exist on entry: only empty ones (never a file), so
    a creation refused or failed leaves the disk as it found it (a refused ``lancell init`` left an empty
    database folder)."""
    made = []
    for uri in uris:
        if is_local(uri):
            path, top = local_path(uri), None
            while not os.path.lexists(path):  # (False, not an error, for a name too long or no permission)
                path, top = path.parent, path
            made += [top] if top is not None else []
    try:
        yield
    except AtlasExistsError:
        raise
    except BaseException:
        for top in made:
            for folder, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
                with suppress(OSError):  # not empty (something else wrote there), or gone
                    os.rmdir(folder)
        raise


def _delete_marker(meta_store: obs_store.ObjectStore) -> None:
    """Delete the marker of a creation in progress (sent again after a broken connection)."""
    retried(lambda: obstore.delete(meta_store, CREATING_PATH), meta_store, f"delete of {CREATING_PATH}")


def _roll_back_creation(db: DBConnection, meta_store: obs_store.ObjectStore) -> None:
    """Drop what a failed creation made; if that fails too, the next ``create`` drops it
    (:func:`_drop_unfinished`)."""
    try:
        _drop_unfinished(db, meta_store)
        _delete_marker(meta_store)
    except Exception:
        log.warning(
            "could not drop the tables of a failed creation; the next create() drops them", exc_info=True
        )


def _drop_unfinished(db: DBConnection, meta_store: obs_store.ObjectStore) -> None:
    """Drop the tables an unfinished creation (killed before writing ``META_PATH``) made at this location.

    Its ``CREATING_PATH`` file names them, and nothing can have written to them: an atlas without its
    metadata file is never opened. Called under the "create" lock.
    """
    unfinished = read_json(meta_store, CREATING_PATH)
    if unfinished is None:
        return
    for name in _stored_tables(db, unfinished["tables"]):
        db.drop_table(name)


def _stored_tables(db: DBConnection, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that are tables of ``db``: listed, and opening (an object store whose deleted
    objects leave their folders, as SeaweedFS's, lists a dropped table that no longer opens)."""
    stored = []
    for name in sorted(table_names(db) & set(names)):
        try:
            db.open_table(name)
        except ValueError:  # lancedb: "Table ... was not found"
            continue
        stored.append(name)
    return stored
