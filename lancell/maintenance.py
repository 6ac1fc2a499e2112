"""Removing things from an atlas: a dataset (with its attached modalities), and groups nothing needs.

Zarr groups are append-only: deleting a dataset removes its rows in new table versions and leaves its group
for :func:`remove_debris`. A deletion holds its dataset's lock throughout; an attachment holds its host's
while it commits (:func:`hold_host`), so the two never interleave. What may be deleted from the store is
decided here and nowhere else: a group this atlas provably owns (:mod:`lancell.tables.group_claims`: its
claim and its id in the group's attributes) that no live dataset record and no snapshot references, and that
does not nest with a group that is referenced. The store is never listed to find candidates: groups another
atlas, another program or an older lancell wrote are never deleted.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import obstore
import pyarrow.compute as pc

from lancell.errors import (
    ArgumentError,
    AtlasNotFoundError,
    DatasetNotFoundError,
    LancellWarning,
    LockTimeoutError,
    StoreError,
    caller_outside_lancell,
    require_age,
    require_text,
    require_type,
)
from lancell.ingest.cell_rows import detach_pointers
from lancell.storage.store_failures import said_within
from lancell.tables.atlas_tables import read_columns
from lancell.tables.locks import atlas_lock
from lancell.tables.registry import sql_literal
from lancell.tables.versions import SNAPSHOT_LOCK, pinned_tables
from lancell.tables.visibility import committed_cells, committed_filter, dataset_lock_name

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from lancell.core import AtlasCore
    from lancell.tables.locks import Lease

__all__ = ["hold_host", "remove_dataset", "remove_debris", "remove_group"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def remove_dataset(core: AtlasCore, uid: str) -> None:
    """Delete dataset ``uid``: a further modality loses its pointers, a dataset its cells and modalities.

    Only table rows are deleted (new table versions); the zarr group stays for :func:`remove_debris`. The
    whole deletion holds the dataset's lock (:func:`lancell.tables.visibility.dataset_lock_name`), so no
    ingestion of ``uid``, no ``add_layer`` or ``add_csc`` of it and, for a dataset, no attachment committing
    to its cells (:func:`hold_host`) runs between its commits. Each commit removes the record before what it
    owned: killed in between, the rows or pointers left are owned by no record and no reader sees them.

    Raises
    ------
    ArgumentError
        ``uid`` is not a str.
    DatasetNotFoundError
        No such dataset.
    LockTimeoutError
        Another operation on the dataset held its lock for longer than the lock's timeout.
    LockLostError
        Another process took the dataset's lock over (this process paused past its lease): nothing more is
        deleted (a record deleted already stays deleted; vacuum() removes what it owned).
    """
    require_type("uid", uid, str, "a dataset uid (a str)")
    require_text("uid", uid)
    with core.lock(dataset_lock_name(uid), about=f"dataset {uid!r}") as lease:
        rows = core.tables.datasets.search().where(f"uid = {sql_literal(uid)}").to_arrow().to_pylist()
        if not rows:
            raise DatasetNotFoundError(f"no dataset {uid!r} in the atlas")
        record = rows[0]
        attached = (
            core.tables.datasets.search().where(f"cells_of = {sql_literal(uid)}").select(["zarr_group"])
        )
        groups = [record["zarr_group"], *attached.to_arrow().column("zarr_group").to_pylist()]
        for group in groups:
            core.group_claims.mark_released(group)  # vacuum's grace counts from now: live readers finish
        # every commit deletes what was read above, by its group too, after a check of the lease: a process
        # that lost it (paused past it) never deletes a later dataset of the same uid
        own = f"uid = {sql_literal(uid)} AND zarr_group = {sql_literal(record['zarr_group'])}"
        lease.check()
        if record.get("cells_of"):  # a further modality: the cells stay, their pointers go
            # killed before the pointers go, they lead into a group no record references: unmeasured to
            # readers, nulled by the next attachment to these cells (hold_host) or by vacuum()
            core.tables.datasets.delete(own)
            lease.check()
            with _record_deleted(uid, "its cells' pointers into its group were not nulled"):
                detach_pointers(core, record["feature_space"], record["zarr_group"])
            return
        # the records of the dataset and of every modality attached to its cells go in one commit, then the
        # rows pointing into the deleted record's group: never those of a later dataset of the same uid
        listed = ", ".join(map(sql_literal, groups))
        modalities = f"cells_of = {sql_literal(uid)} AND zarr_group IN ({listed})"
        core.tables.datasets.delete(f"({own}) OR ({modalities})")
        pointer = f"{record['feature_space']}.zarr_group = {sql_literal(record['zarr_group'])}"
        lease.check()
        with _record_deleted(uid, "its cell rows are not"):
            core.tables.cells.delete(f"dataset_uid = {sql_literal(uid)} AND {pointer}")


@contextmanager
def _record_deleted(uid: str, left: str) -> Iterator[None]:
    """A plain store failure in the block, after dataset ``uid``'s record was deleted, raised again saying
    so: the dataset is deleted, what is ``left`` (vacuum() finishes)."""
    try:
        yield
    except StoreError as exc:
        if type(exc) is not StoreError:  # a lock lost, say: said as it is
            raise
        raise said_within(
            f"dataset {uid!r} is deleted, but {left} (vacuum() finishes the deletion)", exc
        ) from exc


@contextmanager
def hold_host(core: AtlasCore, cells_of: str, feature_space: str) -> Iterator[Lease]:
    """Hold dataset ``cells_of`` while a further modality commits its pointers on its cells and its record.

    The host's lock is the one its deletion holds: the host cannot be deleted until the attachment has
    committed or rolled back. Lock order: an attachment takes it last, after its own dataset's claim, and no
    operation takes a dataset lock while holding a host's. Every attachment holds it from its pointers to its
    record, so pointers of the host's cells in ``feature_space`` into a group that no record references belong
    to no live operation (a killed attachment's, a stopped deletion's): they are nulled here, as
    :func:`lancell.tables.visibility.claim_dataset` clears an interrupted ingestion's rows.

    Raises
    ------
    DatasetNotFoundError
        The host is not (or no longer) in the atlas.
    """
    with core.lock(dataset_lock_name(cells_of), about=f"dataset {cells_of!r}") as lease:
        if core.tables.datasets.count_rows(f"uid = {sql_literal(cells_of)}") == 0:
            raise DatasetNotFoundError(
                f"cannot attach {feature_space!r}: dataset {cells_of!r} is no longer in the atlas"
            )
        where = f"dataset_uid = {sql_literal(cells_of)}"
        pointers = core.tables.cells.search().where(where).select([feature_space]).to_arrow()
        groups = pc.struct_field(pointers.column(feature_space), "zarr_group")
        for group in sorted(set(pc.unique(groups.drop_null()).to_pylist()) - _live_groups(core)):
            log.warning("dataset %r: nulling pointers into %r, which no record references", cells_of, group)
            detach_pointers(core, feature_space, group)
        yield lease


def remove_group(core: AtlasCore, group: str) -> bool:
    """Delete ``group`` (a roll-back's own group) if this atlas owns it and nothing references it.

    Returns whether a stored group was deleted. A group a live record or a snapshot references (a commit
    that went through although its call failed, a snapshot taken meanwhile) is kept, as is one this atlas
    cannot prove its own; :meth:`RaggedAtlas.vacuum` looks at it again later. The check and the deletion hold
    the snapshot lock, as vacuum's do: a snapshot being taken cannot pin the group between them.
    """
    with core.lock(SNAPSHOT_LOCK):
        if _Names(_live_groups(core) | _snapshot_groups(core, {})).nests(group):
            log.warning("zarr group %r is referenced by a dataset record or a snapshot: not deleted", group)
            return False
        return core.group_claims.delete(group) == "own"


def remove_debris(
    core: AtlasCore,
    grace: timedelta,
    *,
    dry_run: bool = False,
    on_group: Callable[[str, str], None] | None = None,
) -> dict[str, int]:
    """Delete this atlas's claimed groups that nothing references, once older than ``grace``.

    Each group deleted is logged (INFO) and given to ``on_group`` with its dataset's uid. ``dry_run``: nothing
    is deleted; the counts, the log and ``on_group`` tell what would be. A dry run takes no lock (it runs on
    an atlas no lock can be written to, a read-only mount): a group whose dataset an ingestion takes up
    meanwhile, or that a snapshot being taken references, may be listed, which a vacuum then keeps.

    A candidate is a group claimed by this atlas (claim, and deletion of its dataset, older than ``grace``: a
    reader that selected the dataset's cells before its deletion reads on for ``grace``) that no live dataset
    record and no snapshot references (nor one deleted within ``grace``: a checkout of it reads on). It is
    deleted, with the uncommitted cell rows pointing into it (and the pointers of committed cells into it: a
    modality whose attachment never committed), only while no ingestion of its dataset runs (the dataset's
    ingestion lock is free), when it is still unreferenced, nothing under it was written within ``grace``, and
    its attributes carry this atlas's id (or nothing is stored). Then its claim goes. A group only snapshots
    reference stays for their checkouts, but the cell rows and pointers into it (a deletion stopped between
    the record and the rows) are removed on the same terms.

    Returns
    -------
    dict of str to int
        ``groups``: groups deleted; ``cells``: cell rows deleted; ``unclaimed``: groups that uncommitted cell
        rows point into but this atlas never claimed (an older lancell wrote them), left in place;
        ``foreign``: claimed groups whose attributes name another atlas or none, or whose folder is a symbolic
        link, left in place.

    Raises
    ------
    ArgumentError
        ``grace`` is not a ``datetime.timedelta`` (``timedelta(0)`` for none).
    ArgumentValueError
        ``grace`` is negative (it would act as none).
    """
    grace = require_age("grace", grace)
    require_type("dry_run", dry_run, bool, "True or False")
    if on_group is not None and not callable(on_group):
        raise ArgumentError(f"on_group must be None or a function of (group, dataset uid), got {on_group!r}")
    claims = core.claims_to_read() if dry_run else core.group_claims
    snapshots: dict[int, set[str]] = {}
    cutoff = datetime.now(UTC) - grace
    owners, _ = committed_cells(core)
    mine = [claim for claim in claims.list() if claim.atlas_id == claims.atlas_id]
    claimed = {claim.group for claim in mine}
    live = _live_groups(core)
    pinned_live = _snapshot_groups(core, snapshots)  # (first: the cache then adds the deleted ones)
    pinned = _snapshot_groups(core, snapshots, cutoff)  # and snapshots deleted within the grace
    referenced = live | pinned
    live_names, referenced_names, claimed_names = _Names(live), _Names(referenced), _Names(claimed)
    counts = {"groups": 0, "cells": 0, "unclaimed": 0, "foreign": 0}
    doomed: set[str] = set()  # a dry run's rows counted (a row pointing into two groups goes once)
    unclaimed = _uncommitted_groups(core, owners) - claimed - referenced
    if unclaimed:  # an ingestion may have claimed its group, then written rows, since the claims were listed
        unclaimed -= {claim.group for claim in claims.list() if claim.atlas_id == claims.atlas_id}
    counts["unclaimed"] = len(unclaimed)
    candidates = [
        claim
        for claim in mine
        if claim.last_needed <= cutoff
        and not live_names.nests(claim.group)
        and not claimed_names.nests(claim.group, strictly=True)
    ]
    kept_for_deleted = _Names(pinned - pinned_live - live)
    waiting = sorted(  # deleted datasets' groups nothing references, kept for readers until the grace ends
        claim.group
        for claim in mine
        if claim.released_at is not None
        and (claim.last_needed > cutoff or kept_for_deleted.nests(claim.group))
        and (not referenced_names.nests(claim.group) or kept_for_deleted.nests(claim.group))
    )
    if waiting:  # (vacuum() right after delete_dataset returned zeros without a word)
        warnings.warn(
            f"{len(waiting)} zarr group(s) of deleted datasets (e.g. {waiting[0]!r}) are kept until {grace} "
            "after their deletion, or after the deletion of the snapshot that kept them (readers that "
            "selected their cells before it read on meanwhile); vacuum() then, or vacuum(grace=timedelta(0)) "
            "when no reader is left",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    # a snapshot's group stays for its checkouts; only the pointers into it go from the table's current
    # version (a deletion stopped between the record and the rows: the dataset's rows, an attached
    # modality's pointers)
    pinned_groups = {claim.group for claim in candidates if referenced_names.nests(claim.group)}
    # read again only when the table has changed, not once per group (a scan of the cell table each:
    # quadratic in the datasets deleted); an ingestion killed after vacuum began changed it with its rows
    pointed = _ReadWhenChanged(lambda: core.tables.cells, lambda: _pointed_groups(core))
    live_now = _ReadWhenChanged(lambda: core.tables.datasets, lambda: _Names(_live_groups(core)))
    for claim in candidates:
        group = claim.group
        pinned = group in pinned_groups
        if pinned and group not in pointed.value():
            continue
        with ExitStack() as held:
            try:  # an ingestion of this dataset still running holds it; its group is not debris
                if not dry_run:  # (which changes nothing: no lock, so it runs where none can be written)
                    lock = dataset_lock_name(claim.dataset_uid)
                    about = f"dataset {claim.dataset_uid!r}"
                    held.enter_context(atlas_lock(claims.meta_store, lock, about=about, timeout=0))
            except LockTimeoutError:
                log.warning(
                    "zarr group %r not deleted: dataset %r's lock is held (an operation on it is running, or "
                    "a process that lost its store held it: such a lock expires after its lease)",
                    group,
                    claim.dataset_uid,
                )
                continue
            if not dry_run:
                held.enter_context(atlas_lock(claims.meta_store, SNAPSHOT_LOCK))  # no snapshot half taken
            if live_now.value().nests(group):
                continue  # committed since the lists above were read
            if _written_since(core, group, cutoff):
                continue
            current = claims.get(group)  # read again under the lock: a deletion since restarts the grace
            if current is None or current.last_needed > cutoff:
                continue
            if pinned or _Names(_snapshot_groups(core, snapshots, cutoff)).nests(group):  # (a snapshot since)
                counts["cells"] += _drop_pointers(core, group, owners, dry_run, doomed)
                continue
            ownership = claims.deletable(group)
            if ownership in ("foreign", "linked"):
                counts["foreign"] += 1
                linked = ownership == "linked"
                why = "its folder is a symbolic link" if linked else "it names another atlas or none"
                log.warning("claimed zarr group %r: %s: not deleted", group, why)
                continue
            if ownership == "unclaimed":  # released by another vacuum meanwhile
                continue
            if group in pointed.value():  # (under the group's dataset lock: no writer of it is left)
                counts["cells"] += _drop_pointers(core, group, owners, dry_run, doomed)
            if (claims.deletable(group) if dry_run else claims.delete(group)) == "own":
                counts["groups"] += 1
                log.info("%s zarr group %r (dataset %r)", "would delete" if dry_run else "deleted", group,
                         claim.dataset_uid)  # fmt: skip
                if on_group is not None:
                    on_group(group, claim.dataset_uid)
    return counts


class _Names:
    """Group names, asked whether a group equals, contains or lies under one of them (in O(depth))."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)
        self.inner = {prefix for name in self.names for prefix in _ancestors(name)}

    def nests(self, group: str, *, strictly: bool = False) -> bool:
        """Whether ``group`` contains or lies under one of the names (or, unless ``strictly``, is one)."""
        return (
            (not strictly and group in self.names)
            or group in self.inner
            or any(prefix in self.names for prefix in _ancestors(group))
        )


def _ancestors(name: str) -> list[str]:
    """The proper prefixes of a ``/``-separated name: ``a/b/c`` -> ``a``, ``a/b``."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _live_groups(core: AtlasCore) -> set[str]:
    return set(read_columns(core.tables.datasets, ["zarr_group"]).column("zarr_group").to_pylist())


class _ReadWhenChanged(Generic[T]):
    """What ``read()`` gives of a table (``table()``, the handle's current one), read again only when the
    table has a new version."""

    def __init__(self, table: Callable[[], Any], read: Callable[[], T]) -> None:
        self._table, self._read = table, read
        self._version: int | None = None
        self._value: T | None = None

    def value(self) -> T:
        version = int(self._table().version)
        if version != self._version or self._value is None:
            self._value, self._version = self._read(), version
        return self._value


def _snapshot_groups(
    core: AtlasCore, known: dict[int, set[str]], deleted_after: datetime | None = None
) -> set[str]:
    """The groups every snapshot references (and those deleted after ``deleted_after``); ``known`` caches
    them per snapshot (a snapshot never changes)."""
    live: set[int] | None = None
    for version, pinned in pinned_tables(core.tables.db, deleted_after).items():
        if version not in known:
            try:
                known[version] = _live_groups(core.pinned_view(pinned))
            except AtlasNotFoundError:  # a deleted snapshot's versions pruned: no reader can check it out
                live = set(pinned_tables(core.tables.db)) if live is None else live
                if version in live:
                    raise
    return set().union(*known.values())


def _uncommitted_groups(core: AtlasCore, owners: list[str]) -> set[str]:
    """The groups that cell rows without a committed dataset record point into."""
    where = f"NOT ({committed_filter(owners)})"
    return _pointed_groups(core, where) if core.tables.cells.count_rows(where) else set()


def _pointed_groups(core: AtlasCore, where: str | None = None) -> set[str]:
    """The groups that cell rows (those ``where`` selects, or all) point into."""
    groups: set[str] = set()
    for space in core.feature_spaces:
        query = core.tables.cells.search()
        query = query if where is None else query.where(where)
        pointer = query.select([space]).to_arrow().column(space)
        names = pc.struct_field(pointer.filter(pc.is_valid(pointer)), "zarr_group")
        groups |= set(pc.unique(names).to_pylist())
    return groups


def _written_since(core: AtlasCore, group: str, cutoff: datetime) -> bool:
    return any(
        meta["last_modified"] > cutoff
        for batch in obstore.list(core.store, prefix=group + "/")
        for meta in batch
    )


def _drop_pointers(
    core: AtlasCore, group: str, owners: list[str], dry_run: bool = False, counted: set[str] | None = None
) -> int:
    """Delete uncommitted cell rows pointing into ``group``, null committed cells' pointers into it; return
    the rows deleted (``dry_run``: that would be, nothing changed; rows whose uids are in ``counted``, those
    an earlier group's would delete, are not counted again, and the others are added to it)."""
    removed = 0
    for space in core.feature_spaces:
        where = f"{space}.zarr_group = {sql_literal(group)} AND NOT ({committed_filter(owners)})"
        if dry_run:
            uids = set(core.tables.cells.search().where(where).select(["uid"]).to_arrow()["uid"].to_pylist())
            seen = set() if counted is None else counted
            removed += len(uids - seen)
            seen |= uids
            continue
        count = core.tables.cells.count_rows(where)
        if count:
            core.tables.cells.delete(where)
            removed += count
        detach_pointers(core, space, group)
    return removed
