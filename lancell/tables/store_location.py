"""Which zarr store an opened atlas reads and writes: the one given, the one it recorded (with the settings
recorded with it), or, for an atlas copied or moved elsewhere, the one inside its new location
(:mod:`lancell.tables.store_guards` guards the store before an atlas writes there).

An atlas records where it was created (``db_url``) and its store's URL. A copy whose store lay inside the
original's location uses the store inside its own; a copy whose store lies elsewhere is refused for writing
(that store may be the original's, whose groups a write or ``vacuum()`` of the copy would change) and read as
recorded with a warning. A store given instead must hold the atlas's groups.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import obstore
import obstore.store as obs_store

from lancell.errors import LancellWarning, StoreError, caller_outside_lancell, require_type
from lancell.storage.groups import ATLAS_ID_ATTR
from lancell.storage.store_settings import with_recorded_config
from lancell.storage.stores import (
    check_options_used,
    describe_store,
    is_local,
    local_path,
    open_store,
    read_json,
)

__all__ = [
    "DEFAULT_INSIDE",
    "STORE_BINDING",
    "Location",
    "StoreLike",
    "as_location",
    "comparable_location",
    "located_store_url",
    "reading_store_url",
    "recorded_store",
    "resolve_store",
    "snapshot_store_candidate",
    "store_inside",
    "warn_of_other_groups",
]

StoreLike = obs_store.ObjectStore | str
# the object at a given store's root naming the atlas (id, database location) that writes it, and the store
STORE_BINDING = "_lancell_writer.json"
DEFAULT_INSIDE = "/_zarr"  # an atlas's default store, inside its location
_FOLDERS_LOOKED_AT = 8  # folders at a new atlas's store root read for another atlas's group
# a local folder or object-store URL as the public API takes it: a string or a path (pathlib.Path)
Location = str | os.PathLike[str]
_STORE_TAKES = "None, a folder or URL (a str or a pathlib.Path) or an obstore store"


def as_location(
    value: Location | obs_store.ObjectStore | None, name: str = "db_uri"
) -> str | obs_store.ObjectStore | None:
    """A path given for a location (``pathlib.Path``, any ``os.PathLike``) as its string; else ``value``.

    ``name`` is the argument: ``"db_uri"`` takes a folder or URL (a str or a path); ``"store"`` also an
    obstore store, or None.

    Raises
    ------
    ArgumentError
        Anything else (``None`` for a ``db_uri``: an unset environment variable), naming the argument.
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if name == "store":
        require_type(name, value, (str, obs_store.ObjectStore, type(None)), _STORE_TAKES)
    else:
        require_type(name, value, str, "a folder or URL (a str or a pathlib.Path)")
    return value


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
            f"the zarr store {url} that the atlas reads (as recorded, or inside its own location for a "
            "copied or moved atlas) does not exist (was the atlas moved or copied without it?); "
            "pass store= (--store on the command line) the folder that holds its zarr groups"
        )
    if isinstance(store, str) and is_local(store) and not local_path(store).exists():
        raise StoreError(f"the zarr store {store!r} given does not exist")
    if store is None or store == url:
        store_kwargs = with_recorded_config(url, store_kwargs, recorded_config)
    return resolve_store(store, url, store_kwargs)


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


def store_inside(meta: Mapping[str, Any]) -> str | None:
    """The atlas's store as a path inside its location (:data:`DEFAULT_INSIDE` by default), where it was
    created inside it; else None. The store of a copy of it, or of the place it had when moved, lies there."""
    there = comparable_location(meta.get("db_url") or "")
    recorded = meta.get("store_url") or ""
    return recorded[len(there) :] if meta.get("db_url") and recorded.startswith(f"{there}/") else None


def snapshot_store_candidate(db_uri: str, meta: Mapping[str, Any], url: str) -> str | None:
    """Where a snapshot's recorded store ``url`` lies now if it was the store inside the place the atlas had
    when the snapshot was taken (it was moved since, then moved or copied again): that path inside this
    atlas's location; None where ``url`` is not such a path. The caller checks that the store there holds
    the snapshot's groups (a store given then, elsewhere, can end the same way)."""
    here, inside = comparable_location(db_uri), store_inside(meta)
    if inside is None or not url.endswith(inside) or url == here + inside:
        return None
    return here + inside


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
    origin = url.removesuffix(DEFAULT_INSIDE)
    if not url.endswith(DEFAULT_INSIDE) or origin == here:
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
