"""Guards on the zarr store an atlas is opened with, before it writes there: a store given must hold the
atlas's groups, and no two live copies of one atlas write one store (one's ``vacuum()`` would delete the
groups of the datasets it deleted, which the other still reads). :mod:`lancell.tables.store_location` says
which store an open reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import obstore
import obstore.store as obs_store

from lancell.errors import LancellError, StoreError
from lancell.storage.store_failures import store_error
from lancell.storage.stores import describe_store, is_local, local_path, read_json, write_json
from lancell.tables.atlas_tables import Database
from lancell.tables.store_location import DEFAULT_INSIDE, STORE_BINDING, comparable_location, store_inside
from lancell.tables.table_schemas import DATASETS_TABLE

__all__ = [
    "bind_given_store",
    "check_given_store",
    "refuse_another_copys_store",
    "refuse_the_originals_store",
]


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


def refuse_another_copys_store(
    db_uri: str,
    meta: Mapping[str, Any],
    store: obs_store.ObjectStore,
    original_id: Callable[[str], str | None],
) -> None:
    """Refuse writing an atlas through a store given for it that is the own store of another copy of the
    atlas, still there (a database copied alone, or a backup of it, given the store of the copy it was made
    from, or of the atlas moved since): that copy writes its own store without naming it (no binding records
    it), and either copy's ``vacuum()`` would delete the groups of the datasets it deleted, which the other
    still reads. A copy's own store lies where this atlas's lies in its location (``<db>/_zarr`` by
    default). A place that cannot be read (another store's credentials, another format) tells nothing.
    ``original_id``: the atlas id of the atlas at a location, or None.

    Raises
    ------
    StoreError
        Naming both locations and what to do instead.
    """
    where = comparable_location(describe_store(store))
    if where == comparable_location(meta.get("store_url") or ""):
        return  # the store the atlas recorded: refuse_the_originals_store's to tell
    here = comparable_location(db_uri)
    for inside in {store_inside(meta) or DEFAULT_INSIDE, DEFAULT_INSIDE}:
        place = where.removesuffix(inside)
        if place == where or place == here or _same_folder(place, here):
            continue
        try:
            theirs = original_id(place)
        except (LancellError, ValueError):  # (ValueError: an atlas.json that is no JSON)
            continue
        if theirs is not None and theirs == meta.get("atlas_id"):
            raise StoreError(
                f"the zarr store {describe_store(store)} given is the store of the atlas at {place}, another "
                f"copy of the atlas at {db_uri!r}, which is still there and writes it: writes of this one "
                "through it would change that copy's groups (either's vacuum() would delete the groups of "
                "the datasets it deleted, which the other still reads). Copy the store too and pass the copy "
                "as store=, write to the other copy instead, or open this one read-only"
            )


def _same_folder(place: str, other: str) -> bool:
    """Whether two local locations are one folder (by a link or a bind mount too)."""
    if not (is_local(place) and is_local(other)):
        return False
    try:
        return os.path.samefile(local_path(place), local_path(other))
    except OSError:
        return False
