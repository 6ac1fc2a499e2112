"""Deleting a zarr group of lancell's from its store: only the objects zarr writes, never through a link.

:func:`delete_prefix` is what :meth:`lancell.tables.group_claims.GroupClaims.delete` runs once a group is
proven this atlas's own (docs/integrity.md, "What vacuum may delete").
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import obstore
import obstore.store as obs_store

from lancell.errors import StoreError
from lancell.storage.store_retries import retried
from lancell.storage.stores import describe_store

__all__ = ["delete_prefix", "linked_folder"]

log = logging.getLogger(__name__)

# A local put's staging file (object_store's LocalFileSystem): up to the first "#" anything, then only
# digits. It is hidden from list, and put refuses such a name.
_STAGING_FILE = re.compile(r"[^#]*#[0-9]+")


def delete_prefix(store: obs_store.ObjectStore, prefix: str) -> int:
    """Delete the zarr objects under ``prefix`` (a zarr group of lancell's); return how many were deleted.

    Only what zarr writes goes: ``zarr.json`` documents and chunk or shard objects (keys under a ``c``
    segment); another object (a user's notes, another program's files) stays, and is logged. On a local disk
    neither a symbolic link nor anything reached through one is deleted (obstore's listing follows them out of
    the folder), nor a group whose folder is a link or lies under one. The objects directly under ``prefix``
    (a zarr group's ``zarr.json``, which says whose the group is) go last, so that a delete interrupted
    half-way leaves them and can be finished. On a local disk the staging files of writes that died half-way
    (a process killed during a put) go first: obstore writes an object through a sibling ``<name>#<digits>``
    file that it never lists and that no object can be named, so such a file is provably a partial write, not
    an object. The directories left empty go last (only empty ones).

    Raises
    ------
    StoreError
        ``prefix`` is empty or has an empty, ``.`` or ``..`` segment (it would reach the store's root or
        outside ``prefix``).
    """
    key = prefix.strip("/")
    if not key or any(part in ("", ".", "..") for part in key.split("/")):
        raise StoreError(f"refusing to delete prefix {prefix!r} of {describe_store(store)}: not a plain path")
    if linked_folder(store, key):
        log.warning("zarr group %r is reached through a symbolic link: nothing deleted", key)
        return 0
    local = isinstance(store, obs_store.LocalStore) and store.prefix is not None
    top = Path(store.prefix) / key if local else None
    if top is not None:  # first, while the objects that say whose the group is still stand
        for folder, _, files in os.walk(top):
            for name in files:
                if _STAGING_FILE.fullmatch(name):
                    Path(folder, name).unlink(missing_ok=True)
    listed = [meta["path"] for batch in obstore.list(store, prefix=key + "/") for meta in batch]
    plain = None if top is None else _plain_files(top, key)
    paths = [path for path in listed if _zarr_key(path[len(key) + 1 :]) and (plain is None or path in plain)]
    left = sorted((set(listed) | (plain or set())) - set(paths))
    if left:
        log.warning("zarr group %r: %d entries lancell did not write stay, e.g. %s", key, len(left), left[:3])
    own = [path for path in paths if "/" not in path[len(key) + 1 :]]
    for chunk in ([path for path in paths if path not in own], own):
        if chunk:
            retried(lambda chunk=chunk: obstore.delete(store, chunk), store, f"delete of {key}'s objects")
    if top is not None:  # object semantics leave empty directories behind on a local disk
        for folder, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(folder)
            except OSError:  # not empty: something was written there since
                pass
    return len(paths)


def linked_folder(store: obs_store.ObjectStore, prefix: str) -> bool:
    """Whether ``prefix`` of a local store is a symbolic link, or lies under one below the store's root."""
    if not isinstance(store, obs_store.LocalStore) or store.prefix is None:
        return False
    root = Path(store.prefix)
    parts = prefix.strip("/").split("/")
    return any((root.joinpath(*parts[: i + 1])).is_symlink() for i in range(len(parts)))


def _zarr_key(relative: str) -> bool:
    """Whether ``relative`` (a key within a zarr group) is one zarr writes: a ``zarr.json`` or a chunk or
    shard object (the default chunk key encoding puts them under a ``c`` segment)."""
    parts = relative.split("/")
    return parts[-1] == "zarr.json" or "c" in parts[:-1]


def _plain_files(top: Path, key: str) -> set[str]:
    """The keys (``key/...``) of the regular files under folder ``top`` reached without a symbolic link."""
    found = set()
    for folder, _, files in os.walk(top):  # (does not descend into linked folders)
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                found.add(f"{key}/{path.relative_to(top).as_posix()}")
    return found
