"""Group claims: the record of which zarr groups an atlas wrote, and the one way lancell deletes a group.

Before a write path creates a dataset group it claims the group's name: an object
``_lancell/groups/<group>.json`` in the atlas's metadata store (next to the LanceDB tables, so a claim
travels with the database, never with the array store) holding the atlas id, the dataset uid and the time.
The group's first object (its ``zarr.json``) carries the same atlas id
(``lancell.storage.groups.ATLAS_ID_ATTR``). Deleting the group's dataset adds the time to its claim
(``released_at``), so that ``vacuum``'s grace counts from the deletion.

A group is *this atlas's own* when both hold: the atlas's claim names it, and the group carries this atlas's
id (or is absent or empty: a write interrupted before its first object). :meth:`GroupClaims.delete` deletes
nothing else, never a prefix that contains, equals or lies under the database's location in the store, and
deletes the group before its claim, so an interrupted delete is finished by the next one. Which of its own
groups may go (nothing references them) is :mod:`lancell.maintenance`'s decision.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

import obstore
import obstore.exceptions as obs_errors
import obstore.store as obs_store

from lancell.errors import GroupNotFoundError, LancellWarning, StoreError, caller_outside_lancell
from lancell.storage.deletion import delete_prefix, linked_folder
from lancell.storage.groups import ATLAS_ID_ATTR, new_group_name
from lancell.storage.store_retries import broken_connection, retried
from lancell.storage.stores import describe_store, location_in_store, read_json, write_json

__all__ = ["CLAIMS_PREFIX", "GroupClaim", "GroupClaims", "Ownership"]

log = logging.getLogger(__name__)

CLAIMS_PREFIX = "_lancell/groups"
_NAME_ATTEMPTS = 8

# "own": claimed by this atlas and carrying its id; "absent": claimed, nothing stored under the name;
# "foreign": something is stored under the name that does not carry this atlas's id; "unclaimed": no claim
# of this atlas names it.
Ownership = Literal["own", "absent", "foreign", "unclaimed", "linked"]


@dataclass(frozen=True)
class GroupClaim:
    """One claim: ``group`` was (or is being) written by atlas ``atlas_id`` for dataset ``dataset_uid``."""

    group: str
    atlas_id: str
    dataset_uid: str
    created_at: datetime
    released_at: datetime | None = None
    stored_at: datetime | None = None  # when the store last wrote the claim file, by the store's clock

    @property
    def last_needed(self) -> datetime:
        """When the group was last known to be needed: its claim, the deletion of its dataset, or the claim
        file's last write by the store's clock (a deleting host whose clock ran behind wrote an early
        ``released_at``: vacuum's grace for readers did not hold)."""
        times = [self.created_at, self.released_at, self.stored_at]
        return max(moment for moment in times if moment is not None)


class GroupClaims:
    """The group claims of one atlas.

    Parameters
    ----------
    atlas_id
        The atlas's id (``_lancell/atlas.json``).
    meta_store
        The atlas's metadata store (at ``db_uri``): where claims and locks live.
    store
        The atlas's zarr store: where the groups live.
    db_uri
        The LanceDB location; no group that contains, equals or lies under it in ``store`` is ever claimed
        or deleted.
    """

    def __init__(
        self,
        *,
        atlas_id: str,
        meta_store: obs_store.ObjectStore,
        store: obs_store.ObjectStore,
        db_uri: str,
    ) -> None:
        self.atlas_id = atlas_id
        self.meta_store = meta_store
        self.store = store
        self.db_uri = db_uri

    def claim_new(self, dataset_uid: str) -> str:
        """Claim a fresh group name for ``dataset_uid`` (nothing stored under it, unclaimed); return it.

        Raises
        ------
        StoreError
            The name would contain, equal or lie under the database (the store's root is ``db_uri``), or no
            free name was found.
        """
        for _ in range(_NAME_ATTEMPTS):
            group = new_group_name(dataset_uid)
            self._check_deletable(group)
            if _stored_under(self.store, group):  # another atlas sharing the store took this name
                continue
            body = {
                "group": group,
                "atlas_id": self.atlas_id,
                "dataset_uid": dataset_uid,
                "created_at": datetime.now(UTC).isoformat(),
            }
            try:
                write_json(self.meta_store, _claim_path(group), body, create=True)
            except FileExistsError:
                continue
            except obs_errors.GenericError as exc:  # read back: the claim landed, or a new name is tried
                if not broken_connection(exc):
                    raise
                if self._read(_claim_path(group)) != _parse(body):
                    continue  # (should it land late, it claims a group never written: vacuum's, as debris)
            return group
        raise StoreError(
            f"dataset {dataset_uid!r}: no free zarr group name in {describe_store(self.store)} "
            f"after {_NAME_ATTEMPTS} attempts"
        )

    def get(self, group: str) -> GroupClaim | None:
        """The claim of ``group``, or None (also for a file there that is not a claim: warned)."""
        return self._read(_claim_path(group))

    def list(self) -> list[GroupClaim]:
        """Every claim in the metadata store, oldest first (files there that are not claims: warned)."""
        stored = {
            meta["path"]: meta["last_modified"]
            for batch in obstore.list(self.meta_store, prefix=CLAIMS_PREFIX + "/")
            for meta in batch
            if meta["path"].endswith(".json")
        }
        claims = [
            replace(claim, stored_at=stored_at)
            for path, stored_at in stored.items()
            if (claim := self._read(path)) is not None
        ]
        return sorted(claims, key=lambda claim: (claim.created_at, claim.group))

    def _read(self, path: str) -> GroupClaim | None:
        """The claim stored at ``path``; None when there is none, or when the file is not a claim of the group
        its name says (not JSON, fields missing or malformed: warned). Such a group is not provably this
        atlas's, so nothing deletes it."""
        try:
            body = read_json(self.meta_store, path)
            claim = None if body is None else _parse(body)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            claim, problem = None, f"{type(exc).__name__}: {exc}"
        else:
            if claim is None or _claim_path(claim.group) == path:
                return claim
            problem = f"it names group {claim.group!r}"
        warnings.warn(
            f"{path} in the atlas's metadata store is not a claim lancell wrote ({problem}): the group it "
            "names is left in place (remove or restore the file)",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
        return None

    def mark_released(self, group: str) -> None:
        """Record that ``group``'s dataset is being deleted now (``vacuum``'s grace counts from then).

        A claim that is missing (an older lancell wrote the group), not a claim, or another atlas's stays as
        it is.
        """
        claim = self.get(group)
        if claim is None or claim.atlas_id != self.atlas_id:
            return
        body = {
            "group": claim.group,
            "atlas_id": claim.atlas_id,
            "dataset_uid": claim.dataset_uid,
            "created_at": claim.created_at.isoformat(),
            "released_at": datetime.now(UTC).isoformat(),
        }
        write_json(self.meta_store, _claim_path(group), body)

    def release(self, group: str) -> None:
        """Remove the claim of ``group`` (its group is gone)."""
        try:
            path = _claim_path(group)
            retried(lambda: obstore.delete(self.meta_store, path), self.meta_store, f"delete of {path}")
        except FileNotFoundError:
            pass

    def ownership(self, group: str) -> Ownership:
        """Whether ``group`` is provably this atlas's own (see the module docstring)."""
        claim = self.get(group)
        if claim is None or claim.atlas_id != self.atlas_id:
            return "unclaimed"
        return self._stored_ownership(group)

    def require_own(self, group: str, dataset_uid: str) -> None:
        """Raise unless ``group`` is this atlas's own and stored (before rewriting a part of it).

        Raises
        ------
        GroupNotFoundError
            The group is missing, unclaimed, or carries another atlas's id (or none).
        """
        ownership = self.ownership(group)
        if ownership != "own":
            raise GroupNotFoundError(
                f"dataset {dataset_uid!r}: zarr group {group!r} in {describe_store(self.store)} is "
                f"{_DESCRIBED[ownership]}; lancell rewrites only groups it can prove are this atlas's "
                f"({self.atlas_id})"
            )

    def deletable(self, group: str) -> Ownership:
        """:meth:`ownership` as :meth:`delete` acts on it: a group of this atlas whose folder is a symbolic
        link, or lies under one (its data lies where a user put it), is ``"linked"``."""
        ownership = self.ownership(group)
        return "linked" if ownership == "own" and linked_folder(self.store, group) else ownership

    def delete(self, group: str) -> Ownership:
        """Delete ``group`` if it is this atlas's own, then its claim; return what it was.

        ``"own"``: the group was deleted; ``"absent"``: nothing was stored, the claim was released;
        ``"foreign"``, ``"linked"`` (:meth:`deletable`) or ``"unclaimed"``: nothing was touched. Whether
        anything still references the group is the caller's to check.

        Raises
        ------
        StoreError
            ``group`` contains, equals or lies under the database's location in the store, or is not a plain
            path, or that location cannot be worked out.
        """
        self._check_deletable(group)
        ownership = self.deletable(group)
        if ownership == "own":
            delete_prefix(self.store, group)
        if ownership in ("own", "absent"):
            self.release(group)
        else:
            log.warning("zarr group %r is %s: not deleted", group, _DESCRIBED[ownership])
        return ownership

    def _stored_ownership(self, group: str) -> Ownership:
        try:
            attrs = json.loads(bytes(obstore.get(self.store, f"{group}/zarr.json").bytes())).get("attributes")
        except FileNotFoundError:
            # a group's zarr.json is its first object written and its last deleted (delete_prefix)
            return "foreign" if _stored_under(self.store, group) else "absent"
        except ValueError:  # not JSON: not a group lancell wrote
            return "foreign"
        return "own" if (attrs or {}).get(ATLAS_ID_ATTR) == self.atlas_id else "foreign"

    def _check_deletable(self, group: str) -> None:
        parts = group.split("/")
        if not group or any(part in ("", ".", "..") for part in parts):
            raise StoreError(f"{group!r} is not a plain zarr group path")
        location = location_in_store(self.store, self.db_uri)
        if location is None:
            return
        if (
            location == ""
            or group == location
            or location.startswith(group + "/")
            or group.startswith(location + "/")
        ):
            raise StoreError(
                f"zarr group {group!r} would contain, equal or lie under the database {self.db_uri!r} "
                f"(at {location or 'the root'!r} of {describe_store(self.store)}); lancell neither writes "
                "nor deletes there"
            )


_DESCRIBED = {
    "own": "this atlas's own",
    "absent": "missing from the store",
    "foreign": "not this atlas's (its attributes name another atlas, or none)",
    "unclaimed": "not claimed by this atlas",
    "linked": "reached through a symbolic link (its data lies where the link leads)",
}


def _claim_path(group: str) -> str:
    return f"{CLAIMS_PREFIX}/{group}.json"


def _parse(body: dict[str, object]) -> GroupClaim:
    """The claim a claim file holds (ValueError, TypeError, KeyError or AttributeError: it holds none)."""
    released = body.get("released_at")
    return GroupClaim(
        group=str(body["group"]),
        atlas_id=str(body["atlas_id"]),
        dataset_uid=str(body["dataset_uid"]),
        created_at=_moment(body["created_at"]),
        released_at=None if released is None else _moment(released),
    )


def _moment(text: object) -> datetime:
    """A time a claim recorded (ISO 8601 with its offset, as lancell writes it)."""
    moment = datetime.fromisoformat(str(text))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no offset")
    return moment


def _stored_under(store: obs_store.ObjectStore, prefix: str) -> bool:
    """Whether any object is stored under ``prefix/``."""
    for batch in obstore.list(store, prefix=prefix + "/", chunk_size=1):
        if batch:
            return True
    return False
