"""Several write transactions run as one, all or nothing: a 10x file split into feature spaces or a MuData's
modalities (one dataset adding the cells, the others attached to them), or a single dataset.

Every transaction is staged (:meth:`~lancell.ingest.write_transaction.WriteTransaction.stage`), then, holding
every content lock (taken in name order, so two runs never deadlock) until the end, the duplicate
policy is settled for each and the records of those not skipped are added in one commit: the commit point
of them all (:mod:`lancell.tables.visibility`). Held to the end, the content locks keep another ingestion of
the same content from being told it duplicates a record that a later failure here would roll back (it would
skip, and the content be in the atlas nowhere). Any failure before the commit rolls every transaction back;
once the records are added nothing is (an interrupt while the locks are released keeps them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING

import obstore.exceptions as obs_errors
import pyarrow as pa

from lancell.errors import IngestError, LockLostError
from lancell.ingest.fingerprint import find_duplicates
from lancell.ingest.freed_memory import release_freed_memory
from lancell.ingest.write_transaction import WriteTransaction
from lancell.storage.small_pages import numpy_small_pages
from lancell.storage.store_failures import one_line, store_error, store_failed
from lancell.storage.stores import describe_store
from lancell.tables.schema import DatasetRecord

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["run_transactions"]

log = logging.getLogger(__name__)


def run_transactions(transactions: Sequence[WriteTransaction]) -> list[DatasetRecord]:
    """Stage every transaction (a modality after its host), then commit their records in one commit; all or
    nothing. Returns the records (a skipped duplicate's: the existing dataset's). Call it directly from the
    public entry point (warnings name the entry point's caller)."""
    try:
        with numpy_small_pages():
            for transaction in transactions:
                transaction.stage()
        _commit(transactions)
    except BaseException as exc:
        for transaction in reversed(transactions):
            transaction.roll_back()  # all but committed records (an interrupt while the locks were released)
        if added := [transaction.record.uid for transaction in transactions if transaction.committed]:
            log.warning("datasets %s were committed before %r: they are in the atlas", added, exc)
        # a store failure (unreachable, refused, timed out, full), raw or as guarded (StoreError's
        # subclasses, a lost lock say, keep their type): typed, named
        if store_failed(exc):
            raise store_error(exc, _failed(transactions, exc)) from exc
        raise
    finally:
        for transaction in transactions:
            transaction.close()
        release_freed_memory()  # what the ingestion freed, before the next one
    for transaction in transactions:
        transaction.report()
    return [
        transaction.record if transaction.duplicate_of is None else transaction.duplicate_of
        for transaction in transactions
    ]


def _failed(transactions: Sequence[WriteTransaction], exc: BaseException) -> str:
    """What a store failure did to ``transactions``' datasets (and, for the zarr store's own errors, which
    say no more than the file system's words, which store it was)."""
    core = transactions[0].core
    lost = ", ".join(repr(t.record.uid) for t in transactions if not t.committed and not t.unsettled)
    unsettled = ", ".join(repr(t.record.uid) for t in transactions if t.unsettled)
    parts = [f"dataset {lost}: not ingested"] if lost else []
    if unsettled:
        parts.append(f"dataset {unsettled}: may be in the atlas (list_datasets() tells; vacuum() clears)")
    said = "; ".join(parts) or "the datasets were committed, then"
    if isinstance(exc, obs_errors.BaseError):
        said += f" (the zarr store {describe_store(core.store)} failed)"
    return said


def _commit(transactions: Sequence[WriteTransaction]) -> None:
    """Settle the duplicate policy of the staged ``transactions``, roll back the skipped ones and commit the
    records of the others in one commit, holding every content lock until it is done.

    A modality whose host (of the same run) is skipped as a duplicate is skipped with it
    (:func:`_skip_with_host`).
    """
    core = transactions[0].core
    with ExitStack() as content_locks:
        for name in sorted({transaction.content_lock for transaction in transactions}):
            content_locks.enter_context(core.lock(name))
        for transaction in transactions:
            host = transaction.host
            if host is None or host.duplicate_of is None:  # a host comes before its modalities
                transaction.settle_duplicate()
            if host is None and transaction.duplicate_of is not None:
                _skip_with_host(transaction, [t for t in transactions if t.host is transaction])
        for transaction in reversed(transactions):  # the skipped ones, before anything is committed
            if transaction.duplicate_of is not None:
                transaction.roll_back()
        committing = [transaction for transaction in transactions if transaction.duplicate_of is None]
        if committing:
            with core.lock("layouts"):
                rows = [transaction.ready_record() for transaction in committing]
                # an interrupt (Ctrl-C) or error may come after the commit inside add(): the records are
                # deleted again while the content locks are held
                try:
                    core.tables.datasets.add(pa.Table.from_pylist(rows, schema=core.dataset_arrow))
                    _check_after_commit(committing)
                    for transaction in committing:
                        transaction.record_added()
                except BaseException:  # the add may have committed: delete the records again, in one commit
                    # (by uid and group: never another's record, whoever holds the uid's lock now)
                    _delete_records(core, committing)
                    raise


def _check_after_commit(committing: Sequence[WriteTransaction]) -> None:
    """After the records' add: a lease lost before it returned (a pause past it, a clock far off) means that
    whoever took the lock over (a ``vacuum()``) may have removed what the records own. Where that is whole
    (each group and its cell rows there) the records stand, for another ingestion of the same content may
    already have been told they hold it; else ``LockLostError`` is raised, and the records go again.
    """
    try:
        for transaction in committing:
            transaction.check_leases()
    except LockLostError:
        if not all(transaction.owns_whole() for transaction in committing):
            raise
        log.warning(
            "datasets %s: a lease was taken over while their records were committed; what they own is "
            "whole: they stand",
            [transaction.record.uid for transaction in committing],
        )


def _delete_records(core: AtlasCore, committing: Sequence[WriteTransaction]) -> None:
    """Delete the records of ``committing``, whose add failed or was interrupted (it may have committed).

    Should that delete fail too, whether the records are in the atlas is unknown: nothing of theirs is
    rolled back then (:meth:`~lancell.ingest.write_transaction.WriteTransaction.record_unsettled`; were they
    not committed, vacuum() removes their rows and groups), the add's error stands and this one is logged.
    """
    own = " OR ".join(f"({transaction.own_record()})" for transaction in committing)
    try:
        core.tables.datasets.delete(own)
    except Exception as undo:
        for transaction in committing:
            transaction.record_unsettled()
        uids = [transaction.record.uid for transaction in committing]
        log.error(
            "datasets %s: their records' commit failed and so did their deletion (%s): they may be in the "
            "atlas; list_datasets() tells, and vacuum() removes their rows and groups if they are not",
            uids,
            one_line(undo),
        )
        return
    for transaction in committing:
        transaction.record_removed()


def _skip_with_host(host: WriteTransaction, modalities: Sequence[WriteTransaction]) -> None:
    """Holding the content locks, for a host skipped as a duplicate: skip it as a committed dataset whose
    cells also hold each of ``modalities`` (the same content), returned instead (``duplicate_of``).

    Raises
    ------
    IngestError
        No dataset holding the host's content has cells that hold every modality's content: the file is
        not all in the atlas, and storing the rest would put it on cells of their own.
    """
    if not modalities:
        return
    core = host.core
    held = {id(modality): find_duplicates(core, modality.fingerprints) for modality in modalities}
    for candidate in find_duplicates(core, host.fingerprints):
        owner = candidate.cells_of or candidate.uid  # the dataset whose cells the candidate's are
        on_them = [next((r for r in held[id(m)] if owner in (r.cells_of, r.uid)), None) for m in modalities]
        if all(record is not None for record in on_them):
            host.duplicate_of = candidate
            for modality, record in zip(modalities, on_them, strict=True):
                modality.duplicate_of = record
            return
    spaces = [modality.space.name for modality in modalities]
    held_by = host.duplicate_of.cells_of or host.duplicate_of.uid  # the cells a modality is attached to
    of = "" if held_by == host.duplicate_of.uid else f" (those of {held_by!r})"
    raise IngestError(
        f"dataset {host.record.uid!r}: its {host.space.name!r} content is already in the atlas as dataset "
        f"{host.duplicate_of.uid!r}, whose cells{of} hold no {spaces} data of the same content; nothing was "
        f"stored: add it to those cells with add_from_10x(..., cells_of={held_by!r}, feature_space=...) per "
        "feature space"
    )
