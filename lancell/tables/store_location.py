"""Which zarr store an opened atlas reads and writes: the one given, the one it recorded (with the settings
recorded with it), or, for an atlas copied or moved elsewhere, the one inside its new location.

An atlas records where it was created (``db_url``) and its store's URL. A copy whose store lay inside the
original's location uses the store inside its own; a copy whose store lies elsewhere is refused for writing
(that store may be the original's, whose groups a write or ``vacuum()`` of the copy would change) and read as
recorded with a warning. A store given instead must hold the atlas's groups.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import obstore
import obstore.store as obs_store

from lancell.errors import LancellWarning, StoreError, caller_outside_lancell
from lancell.storage.groups import ATLAS_ID_ATTR
from lancell.storage.store_failures import store_error
from lancell.storage.store_settings import with_recorded_config
from lancell.storage.stores import (
    check_options_used,
    describe_store,
    is_local,
    local_path,
    open_store,
    read_json,
    write_json,
)
from lancell.tables.atlas_tables import Database
from lancell.tables.table_schemas import DATASETS_TABLE

__all__ = [
    "STORE_BINDING",
    "Location",
    "StoreLike",
    "as_location",
    "bind_given_store",
    "check_given_store",
    "comparable_location",
    "located_store_url",
    "reading_store_url",
    "recorded_store",
    "refuse_the_originals_store",
    "resolve_store",
    "warn_of_other_groups",
]

StoreLike = obs_store.ObjectStore | str
# the object at a given store's root naming the atlas (id, database location) that writes it, and the store
STORE_BINDING = "_lancell_writer.json"
_FOLDERS_LOOKED_AT = 8  # folders at a new atlas's store root read for another atlas's group
# a local folder or object-store URL as the public API takes it: a string or a path (pathlib.Path)
Location = str | os.PathLike[str]


def as_location(value: Location | obs_store.ObjectStore | None) -> str | obs_store.ObjectStore | None:
    """A path given for a location (``pathlib.Path``, any ``os.PathLike``) as its string; else ``value``."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def resolve_store(
    store: StoreLike | None, default_url: str, store_kwargs: dict[str, Any] | None
) -> obs_store.ObjectStore:
    """``store`` itself, or the store at that URL (``default_url`` when None)."""
    if store is None:
        return open_store(default_url, store_kwargs)
    if isinstance(store, str):
        return open_store(store, store_kwargs)
    return store


def recorded_store(
    store: StoreLike | None,
    url: str,
    store_kwargs: dict[str, Any] | None,
    *,
    recorded_config: Mapping[str, Any] | None = None,
    db_uri: str | None = None,
) -> obs_store.ObjectStore:
    """``store`` when given, else the store the atlas recorded (``url``); that one is opened with the
    non-secret settings recorded with it (``recorded_config``) as defaults that ``store_kwargs`` override
    (:func:`~lancell.storage.store_settings.with_recorded_config`).

    Raises
    ------
    StoreError
        The recorded store is a local folder that does not exist (the atlas was moved or copied): it is not
        created empty; the caller passes ``store``. Or ``store`` names a local folder that does not exist. Or
        ``store_kwargs`` are given while the database (``db_uri``, when given) and the store are local paths,
        which take no options (:func:`~lancell.storage.stores.check_options_used`).
    """
    if db_uri is not None:
        check_options_used(
            [db_uri, *([url] if store is None else [store] if isinstance(store, str) else [])], store_kwargs
        )
    if store is None and is_local(url) and not local_path(url).exists():
        raise StoreError(
            f"the zarr store {url} that the atlas recorded does not exist (was the atlas moved or copied?); "
            "pass store= (--store on the command line) the folder that holds its zarr groups"
        )
    if isinstance(store, str) and is_local(store) and not local_path(store).exists():
        raise StoreError(f"the zarr store {store!r} given does not exist")
    if store is None or store == url:
        store_kwargs = with_recorded_config(url, store_kwargs, recorded_config)
    return resolve_store(store, url, store_kwargs)


_GROUPS_CHECKED = 16  # dataset records whose groups a given store is searched for, at most


def check_given_store(
    store: obs_store.ObjectStore,
    database: Database,
    expected: Sequence[str] | None,
    datasets_version: int | None = None,
) -> None:
    """Refuse a store given instead of the recorded one that does not hold this atlas's groups: writes there
    would split the atlas across two stores (no lancell zarr root, or none of the groups of the first
    ``_GROUPS_CHECKED`` dataset records is in it; or, in an atlas without datasets, a store other than the
    ``expected`` ones, those an open without a store settles on: None when every open must name one, a copy
    or move whose store lies outside it). ``datasets_version``: the dataset table's version whose records
    are looked for (a snapshot's; the latest by default).

    Raises
    ------
    StoreError
        Naming the store and what it lacks.
    """
    where = describe_store(store)
    try:
        root = read_json(store, "zarr.json")
        if root is None or "lancell_format" not in (root.get("attributes") or {}):
            raise StoreError(
                f"the zarr store {where} given is not an atlas's store (it has no lancell zarr root)"
            )
        records = database.dataset(DATASETS_TABLE, datasets_version).to_table(
            columns=["zarr_group"], limit=_GROUPS_CHECKED
        )
        groups = records.column("zarr_group").to_pylist()
        # the first group present settles it (one read, as a rule): a lost group is damage to repair
        # (lancell delete, which needs this open), not the sign of another store
        missing = bool(groups) and all(read_json(store, f"{group}/zarr.json") is None for group in groups)
    except obstore.exceptions.BaseError as exc:
        raise store_error(exc, f"cannot read the zarr store {where}") from exc
    if missing:
        shown = groups[:3] + (["..."] if len(groups) > 3 else [])
        raise StoreError(
            f"the zarr store {where} given does not hold this atlas's groups (none of {shown} is in it): it "
            "is another store, or those groups were deleted from it; pass the store its datasets were "
            "written to"
        )
    settled = {comparable_location(url) for url in expected or ()}
    if not groups and expected is not None and comparable_location(where) not in settled:
        raise StoreError(
            f"the zarr store {where} given is not the one the atlas records ({', '.join(expected)}), and the "
            "atlas has no dataset whose group would show that it holds this atlas's groups: its writes "
            "would not be found there by a later open; pass the recorded store (or none)"
        )


def refuse_the_originals_store(
    db_uri: str,
    meta: Mapping[str, Any],
    store: obs_store.ObjectStore,
    original_id: Callable[[str], str | None],
) -> None:
    """Refuse writing a copied atlas through the store of the atlas it was copied from while that atlas is
    still there: both databases claim the same groups, so the copy's ``vacuum()`` would delete the groups of
    the datasets the copy deleted, which the original still reads. A moved atlas (nothing left where it was
    created) writes its store as before. ``original_id``: the atlas id of the atlas at a location, or None
    when there is none.

    Raises
    ------
    StoreError
        Naming both locations and what to do instead.
    """
    here, created = comparable_location(db_uri), meta.get("db_url")
    if not created or comparable_location(created) == here:
        return
    recorded = meta.get("store_url")
    if recorded is None or comparable_location(describe_store(store)) != comparable_location(recorded):
        return  # not the store the atlas recorded (a copy of it, say): checked to hold the atlas's groups
    if original_id(created) != meta.get("atlas_id"):
        return  # moved: no atlas (or another one) is left where it was created
    raise StoreError(
        f"the atlas at {db_uri!r} is a copy of the atlas at {created}, which still uses the zarr store "
        f"{recorded}: writes of the copy would change the original's groups (the copy's vacuum() would "
        "delete the groups of the datasets it deleted, which the original still reads). Copy the store too "
        "and pass the copy as store=, write to the original instead, or open the copy read-only"
    )


def bind_given_store(
    db_uri: str,
    meta: Mapping[str, Any],
    store: obs_store.ObjectStore,
    original_id: Callable[[str], str | None],
) -> None:
    """Refuse writing an atlas through a store given for it that another copy of the atlas, still there,
    writes (a copy of a copy given the first copy's store: both databases claim its groups, and one's
    ``vacuum()`` would delete the groups of the datasets it deleted, which the other still reads); else
    record in the store (:data:`STORE_BINDING`) that this atlas writes it. A binding copied with the store
    (it names another store) or naming a location where the atlas is no more (moved) is replaced.
    ``original_id``: the atlas id of the atlas at a location, or None when there is none.

    Raises
    ------
    StoreError
        Naming both locations and what to do instead, or the store cannot be read or written.
    """
    here, where = comparable_location(db_uri), comparable_location(describe_store(store))
    bound = {"atlas_id": meta.get("atlas_id"), "db": here, "store": where}
    try:
        found = read_json(store, STORE_BINDING)
    except (obstore.exceptions.BaseError, ValueError) as exc:  # (ValueError: not JSON)
        raise store_error(exc, f"cannot read {STORE_BINDING} in the zarr store {where}") from exc
    found = found if isinstance(found, dict) else None  # (anything else: no binding of this format)
    if found == bound:
        return
    other = (found or {}).get("db")
    if (
        found is not None
        and found.get("atlas_id") == bound["atlas_id"]
        and found.get("store") == where
        and other != here
        and original_id(other) == bound["atlas_id"]
    ):
        raise StoreError(
            f"the zarr store {where} given is written by another copy of this atlas, at {other}, which is "
            f"still there: writes of the atlas at {db_uri!r} through it would change that copy's groups (its "
            "vacuum() would delete the groups of the datasets it deleted, which the other copy still reads). "
            "Copy the store too and pass the copy as store=, write to the other copy instead, or open this "
            "one read-only"
        )
    try:
        write_json(store, STORE_BINDING, bound)
    except obstore.exceptions.BaseError as exc:
        raise store_error(exc, f"cannot write {STORE_BINDING} in the zarr store {where}") from exc


def warn_of_other_groups(store: obs_store.ObjectStore, db_uri: str) -> None:
    """Warn when the zarr store of a new atlas at ``db_uri`` already holds another atlas's groups (folders
    at its root whose group carries an atlas id; the first ``_FOLDERS_LOOKED_AT`` are looked at): the new
    atlas's groups would lie beside them, which is rarely what was meant (each atlas's ``vacuum()`` leaves
    the other's alone, counting them as foreign). A store that cannot be read gets no warning.
    """
    where = describe_store(store)
    try:
        root = read_json(store, "zarr.json")
        if root is None or "lancell_format" not in (root.get("attributes") or {}):
            return
        folders = sorted(obstore.list_with_delimiter(store)["common_prefixes"])
        groups = [folder for folder in folders[:_FOLDERS_LOOKED_AT] if _is_atlas_group(store, folder)]
        found = read_json(store, STORE_BINDING) if groups else None
    except (obstore.exceptions.BaseError, ValueError):  # (ValueError: a file that is not JSON)
        return  # a store that cannot be read: the creation's own writes fail naming it, or it is new
    if not groups:
        return
    writer = found.get("db") if isinstance(found, dict) else None
    warnings.warn(
        f"the zarr store {where} of the new atlas at {db_uri!r} already holds groups of another atlas "
        f"({groups[0]!r}{' and others' if len(groups) > 1 else ''}"
        f"{f', written by the atlas at {writer}' if writer else ''}): the new atlas's groups will lie beside "
        "them (each atlas's vacuum() leaves the other's alone); give each atlas a store of its own (the "
        "default is <db_uri>/_zarr)",
        LancellWarning,
        stacklevel=caller_outside_lancell(),
    )


def _is_atlas_group(store: obs_store.ObjectStore, folder: str) -> bool:
    """Whether ``folder`` of ``store`` is a zarr group whose attributes name an atlas."""
    meta = read_json(store, f"{folder}/zarr.json")
    attributes = meta.get("attributes") if isinstance(meta, dict) else None
    return isinstance(attributes, dict) and ATLAS_ID_ATTR in attributes


def located_store_url(
    db_uri: str,
    meta: Mapping[str, Any],
    url: str,
    *,
    writable: bool,
    atlas_id_at: Callable[[str], str | None] | None = None,
) -> str:
    """The store URL an atlas opened at ``db_uri`` reads (and writes), when no store is given.

    ``url`` as recorded, unless the atlas was copied or moved (``db_url``, recorded at creation, names
    another location: another folder, another prefix, local disk for an atlas uploaded to an object store):
    a store that lies inside the atlas's location is then the one inside its new location (a copy never
    reads or writes the original's groups).

    Raises
    ------
    StoreError
        Opening for writing a copied or moved atlas whose store lies outside its location: that store may be
        the original's, whose groups a write or ``vacuum()`` of the copy would change; the caller passes
        ``store``.
    """
    here = comparable_location(db_uri)
    created = meta.get("db_url") or _legacy_creation(here, url, meta.get("atlas_id"), atlas_id_at)
    if created is None or comparable_location(created) == here or url == here or url.startswith(f"{here}/"):
        return url  # not moved, or a store already inside it (a snapshot taken after the move records it)
    there = comparable_location(created)
    if meta.get("db_url") and (url == there or url.startswith(f"{there}/")):
        return here + url[len(there) :]
    if writable:
        raise StoreError(
            f"the atlas at {db_uri!r} was created at {created} (copied or moved) and records the zarr store "
            f"{url}, which may be the original's: pass store= the location that holds this atlas's zarr "
            "groups (a copy: a copy of the original's store; a moved atlas: its store)"
        )
    return url


def reading_store_url(
    db_uri: str,
    meta: Mapping[str, Any],
    url: str,
    atlas_id_at: Callable[[str], str | None] | None = None,
) -> str:
    """The store URL a read-only handle of the atlas at ``db_uri`` reads when no store is given (``url``, as
    recorded, relocated for a copy whose store lies inside it); warns when that store may be the original's.
    """
    try:
        return located_store_url(db_uri, meta, url, writable=True, atlas_id_at=atlas_id_at)
    except StoreError:  # a copy or move whose store lies outside it: a write would be refused
        warnings.warn(
            f"the atlas at {db_uri!r} was copied or moved and its zarr store {url} lies outside it: reading "
            "that store, which may be the original's (pass store= to read another)",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
        return located_store_url(db_uri, meta, url, writable=False, atlas_id_at=atlas_id_at)


def comparable_location(uri: str) -> str:
    """``uri`` as one comparable URL: a local path as its ``file://`` URL, a remote URL without a final
    ``/``."""
    return local_path(uri).as_uri() if is_local(uri) else uri.rstrip("/")


def _legacy_creation(
    here: str, url: str, atlas_id: str | None, atlas_id_at: Callable[[str], str | None] | None
) -> str | None:
    """Where an atlas that recorded no ``db_url`` (created before one was recorded) was created, as far as
    its store tells: the database of a default store (``<db>/_zarr``) other than ``here`` (a copy), else
    None. With ``atlas_id_at`` (the id of the atlas at a location, None where there is none), that database
    must be this atlas (the same id: a copy, ``cp -r`` or of the database alone) and, on local disk, another
    folder than ``here`` (not this one by a link): an atlas sharing another's store on purpose has an id of
    its own, and a database gone leaves a store that does not exist, refused as such. Such a copy is never
    relocated (a store of that name elsewhere cannot always be told from the default): it is refused for
    writing and read as recorded (a copy of an atlas written before 2026-12-05 wrote to, and vacuumed, the
    original's store)."""
    origin = url.removesuffix("/_zarr")
    if not url.endswith("/_zarr") or origin == here:
        return None
    if is_local(here) and is_local(origin) and _same(local_path(origin), local_path(here)):
        return None
    if atlas_id_at is not None:
        try:
            theirs = atlas_id_at(origin)
        except StoreError:  # unreadable: whether it is this atlas is unknown, taken to be
            return origin
        if theirs is None or (atlas_id is not None and theirs != atlas_id):
            return None
    elif is_local(here):
        return None  # (nothing tells it from an atlas sharing the store: as before the id was compared)
    return origin


def _same(folder: Path, other: Path) -> bool:
    """Whether ``folder`` and ``other`` are the same folder (by other paths: a link, a bind mount)."""
    try:
        return os.path.samefile(folder, other)
    except OSError:
        return False
