"""One write transaction for every ingest path: plan -> claim -> write group -> commit rows -> record.

:func:`lancell.ingest.from_anndata.add_from_anndata`, :func:`lancell.ingest.tenx.add_from_10x`,
:func:`lancell.ingest.modalities.attach_modality` (and ``add_from_mudata``) hand a validated
:class:`~lancell.ingest.plan.IngestPlan` to a :class:`WriteTransaction`, which, in order
(docs/architecture.md, "Ingestion"; docs/integrity.md, "Crash safety: the dataset record is the commit
point"):

1. claims the dataset (:func:`lancell.tables.visibility.claim_dataset`: a per-dataset lock held as a lease
   to the end, which also clears rows an interrupted run left) and a fresh zarr group
   (:meth:`lancell.tables.group_claims.GroupClaims.claim_new`);
2. streams every stored layer's source into the group (sparse layers on one shared pattern,
   :mod:`lancell.ingest.layer_blocks`) (:class:`~lancell.storage.groups.SparseGroupWriter` /
   :class:`~lancell.storage.groups.DenseGroupWriter`; values checked block by block, the content fingerprint
   fed as they go) and, unless a committed dataset already holds the content (then step 4 refuses or skips
   it, so nothing more is written), the CSC copy (:func:`lancell.storage.csc.write_csc`);
3. stores the feature layout (under the layouts lock) and commits the cell rows: new cells (in commits of
   :data:`~lancell.ingest.plan.ROWS_PER_COMMIT` rows), or the pointers of a further modality on existing
   cells that have none, holding the host's lock from then on (:func:`lancell.maintenance.hold_host`);
4. under the content lock (:func:`lancell.ingest.fingerprint.content_lock_name`), checks its leases and
   commits the dataset record: the commit point (a transaction staged short whose duplicate was deleted
   meanwhile is refused with :class:`~lancell.errors.CommitConflictError`).

Any failure rolls back exactly what the transaction wrote: the record, the rows (deleted, or the pointers
nulled), a layout it added that no record uses, and its group (through
:func:`lancell.maintenance.remove_group`, which deletes only this atlas's own unreferenced groups).
:func:`lancell.ingest.transaction_run.run_transactions` runs several as one, all or nothing: their records in
one commit, every content lock held until it is done (a 10x file split into feature spaces, a MuData).
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from lancell.errors import (
    CommitConflictError,
    DroppedColumnsWarning,
    DuplicateContentWarning,
    IngestError,
    LancellWarning,
    caller_outside_lancell,
)
from lancell.ingest.cell_rows import cell_batches, detach_pointers, pointer_batches
from lancell.ingest.csc_choice import check_csc_of_run, writes_csc
from lancell.ingest.fingerprint import (
    ContentHasher,
    OnDuplicate,
    combined_fingerprint,
    committed_duplicate,
    content_lock_name,
    find_duplicate,
    formats_to_match,
)
from lancell.ingest.group_write import write_group
from lancell.ingest.plan import CELL_BATCH, ROWS_PER_COMMIT, IngestPlan
from lancell.ingest.sources import stored_dtype
from lancell.maintenance import hold_host, remove_group
from lancell.storage.csc import CSC_BUDGET, write_csc
from lancell.storage.csc_blocks import CsrBlocks
from lancell.tables.feature_spaces import FeatureSpace
from lancell.tables.registry import ensure_layout, sql_literal
from lancell.tables.schema import CELL_UID_SEPARATOR, DatasetRecord
from lancell.tables.visibility import claim_dataset

if TYPE_CHECKING:
    from lancell.core import AtlasCore
    from lancell.tables.locks import Lease

__all__ = ["WriteTransaction"]

log = logging.getLogger(__name__)


class WriteTransaction:
    """The atomic write of one dataset's group, rows and record.

    Parameters
    ----------
    atlas
        A writable atlas.
    plan
        The validated plan (:mod:`lancell.ingest.plan`): its ``layers`` are what the group stores.
    space
        The feature space of the plan.
    record
        The caller's record (checked by :func:`lancell.ingest.plan.check_record`); lancell fills in the
        fields it assigns.
    cells_of
        For a further modality: the dataset whose cells ``plan.obs_names`` name (their pointers are set);
        None to add new cells.
    host
        For a further modality of cells that another transaction of the same run adds (``cells_of`` is its
        uid): that transaction, whose dataset claim covers the cells until the records commit together.
    csc
        Write the CSC copy; by default for sparse datasets of at least ``CSC_MIN_VALUES`` stored values.
    on_duplicate
        See :func:`lancell.ingest.from_anndata.add_from_anndata`.
    progress
        Show progress bars while the matrix and its CSC copy are written.
    """

    def __init__(
        self,
        core: AtlasCore,
        plan: IngestPlan,
        space: FeatureSpace,
        record: DatasetRecord,
        *,
        cells_of: str | None = None,
        host: WriteTransaction | None = None,
        csc: bool | None = None,
        on_duplicate: OnDuplicate = "error",
        progress: bool = True,
    ) -> None:
        self.core, self.plan, self.space, self.record = core, plan, space, record
        self.cells_of, self.csc, self.on_duplicate, self.progress = cells_of, csc, on_duplicate, progress
        self.host = host
        check_csc_of_run(csc, [space], record.uid)  # (a dense space's rows hold every feature)
        self.duplicate_of: DatasetRecord | None = None
        self._fingerprints: list[str] = []  # the content's, current format first (set by stage)
        self._claims = ExitStack()
        self._leases: list[Lease] = []  # the dataset's claim; for a further modality, also its host's
        self._group: str | None = None
        self._layout_written = self._rows_written = self._committed = False
        self._unsettled = False  # the record's add and its deletion failed: it may be committed
        self._short = False  # staged up to the fingerprint only: the content was already committed
        self._started = time.perf_counter()

    def stage(self) -> None:
        """Claim the dataset and a group; write the group, its CSC copy, the layout and the cell rows (after
        the group, no more where its content is already committed and ``on_duplicate`` is not ``"allow"``:
        :meth:`settle_duplicate` then refuses or skips it)."""
        core, plan, space = self.core, self.plan, self.space
        self._leases.append(self._claims.enter_context(claim_dataset(core, self.record.uid)))
        self._group = core.group_claims.claim_new(self.record.uid)
        names = list(plan.layers)
        written = None
        if writes_csc(space, plan.nnz, self.csc):
            dtypes = {name: stored_dtype(source) for name, source in plan.layers.items()}
            written = CsrBlocks(
                len(plan.feature_uids),
                dtypes,
                spill=plan.nnz > CSC_BUDGET,
                values_per_row=plan.nnz / max(plan.n_cells, 1),
            )
        with ExitStack() as hashing:
            if written is not None:
                hashing.callback(
                    written.close
                )  # the sorted blocks, kept or spilled, once the copy is written
            formats = formats_to_match(core)
            hashers = {
                name: hashing.enter_context(
                    ContentHasher(space.kind, stored_dtype(source), source.shape, formats)
                )
                for name, source in plan.layers.items()
            }
            indptr = write_group(
                core,
                plan,
                space,
                self._group,
                plan.layers,
                self.progress,
                written,
                hashers,
                self.check_leases,
            )
            fingerprints = combined_fingerprint(
                {
                    name: hasher.finish(
                        obs_names=plan.obs_names,
                        feature_space=space.name,
                        layer=name,
                        feature_uids=plan.feature_uids,
                    )
                    for name, hasher in hashers.items()
                }
            )
            self._fingerprints = [fingerprints[fmt] for fmt in formats]
            if self.on_duplicate != "allow":
                with warnings.catch_warnings():  # an atlas without fingerprints: settling warns
                    warnings.simplefilter("ignore", LancellWarning)
                    self._short = find_duplicate(core, self._fingerprints) is not None
            # the host's cells are not written (its content is committed already): nor are their pointers
            self._short |= self.host is not None and self.host.staged_short
            if self._short:  # settling refuses or skips it: the rest would be written to be removed
                return
            if written is not None:
                write_csc(
                    core.zarr_root[self._group],
                    names,
                    written=written,
                    guard=self.check_leases,
                    progress=self.progress,
                )
        with core.lock("layouts"):
            self._layout_written = ensure_layout(
                core.tables.layouts, plan.layout_uid, plan.feature_uids, plan.global_index
            )
        self._commit_rows(indptr)
        self.record = self.record.model_copy(
            update={
                "zarr_group": self._group,
                "feature_space": space.name,
                "layer": names[0],
                "layers": names,
                "n_cells": plan.n_cells,
                "n_features": len(plan.feature_uids),
                "nnz": plan.nnz,
                "layout_uid": plan.layout_uid,
                "dropped_obs_columns": plan.dropped_obs_columns,
                "content_fingerprint": self._fingerprints[0],
                "cells_of": self.cells_of,
            }
        )

    def _commit_rows(self, indptr: np.ndarray) -> None:
        core, space, cells = self.core, self.space, self.core.tables.cells
        schema = core.cell_arrow
        if self.cells_of is None:
            batches = cell_batches(schema, self.plan, space.name, self._group, indptr)
            self._rows_written = True  # a roll-back deletes the rows of every commit below
            # LanceDB's writer keeps the rows of the data file it writes until it closes (up to 1M rows),
            # so a large dataset's rows go in commits of ROWS_PER_COMMIT: the memory is the same at any size
            while part := list(itertools.islice(batches, ROWS_PER_COMMIT // CELL_BATCH)):
                cells.add(pa.RecordBatchReader.from_batches(schema, part))
            return
        if (
            self.host is None
        ):  # held to the record's commit (or the roll-back): the host is not deleted meanwhile
            self._leases.append(self._claims.enter_context(hold_host(core, self.cells_of, space.name)))
        uids = (self.cells_of + CELL_UID_SEPARATOR + self.plan.obs_names.astype(str)).to_numpy(dtype=object)
        batches = pointer_batches(uids, space.kind, space.name, self._group, indptr)
        rows = pa.schema([schema.field("uid"), schema.field(space.name)])
        self._rows_written = True  # a roll-back nulls the pointers into this group, however many were set
        merged = (
            cells.merge_insert("uid")
            .when_matched_update_all(where=f"target.{space.name} IS NULL")  # never another's pointer
            .execute(pa.RecordBatchReader.from_batches(rows, batches))
        )
        if merged.num_updated_rows != uids.size:
            raise IngestError(
                f"dataset {self.record.uid!r}: {uids.size - merged.num_updated_rows} of its cells of "
                f"{self.cells_of!r} are gone or already carry a {space.name!r} pointer"
            )

    @property
    def content_lock(self) -> str:
        """The lock held from :meth:`settle_duplicate` to the record's commit
        (:func:`lancell.ingest.fingerprint.content_lock_name`)."""
        return content_lock_name(self._fingerprints)

    def settle_duplicate(self) -> None:
        """Holding :attr:`content_lock`: find the committed dataset that already holds this content
        (``duplicate_of``: the run then rolls this one back and returns that record,
        :mod:`lancell.ingest.transaction_run`).

        Raises
        ------
        DuplicateContentError
            ``on_duplicate="error"`` and the content is already in the atlas.
        CommitConflictError
            Staged short (:meth:`_commit_allowed`) and that dataset was deleted meanwhile.
        """
        self.duplicate_of = committed_duplicate(
            self.core, self.record.uid, self._fingerprints, self.on_duplicate
        )
        if self.duplicate_of is None:
            self._commit_allowed()

    @property
    def staged_short(self) -> bool:
        """Staged up to the fingerprint only: the content was committed already (or, for a modality of a
        host of the same run, the host's was)."""
        return self._short

    @property
    def fingerprints(self) -> list[str]:
        """The content's fingerprints, current format first (set by :meth:`stage`)."""
        return list(self._fingerprints)

    def ready_record(self) -> dict:
        """Holding the layouts lock (and :attr:`content_lock`): make sure the layout is there (a failed write
        of the same panel removes it unless a record uses it), check the leases and return the record's row.

        Raises
        ------
        LockLostError
            Another process took over one of this transaction's leases.
        """
        plan = self.plan
        self._layout_written |= ensure_layout(
            self.core.tables.layouts, plan.layout_uid, plan.feature_uids, plan.global_index
        )
        self.check_leases()
        return self.record.model_dump()

    def owns_whole(self) -> bool:
        """Whether what the record owns is all there: its group (with its claim) and a cell row (or pointer)
        into it for each of its cells."""
        core, space = self.core, self.space.name
        if self._group is None or core.group_claims.get(self._group) is None:
            return False
        if core.group_attrs(self._group, reopen=True) is None:
            return False
        pointing = core.tables.cells.count_rows(f"{space}.zarr_group = {sql_literal(self._group)}")
        return pointing == self.plan.n_cells

    def check_leases(self) -> None:
        """Confirm that this transaction still holds its leases (one read of each lock object).

        Raises
        ------
        LockLostError
            Another process took one over (this one paused past it, or a clock far off): nothing more may
            be stored or committed.
        """
        for lease in self._leases:
            lease.check()

    def record_added(self) -> None:
        """The record is committed: from here on nothing is rolled back (an interrupt while the locks are
        released keeps the dataset, which another ingestion may already have been told holds its content)."""
        self._committed = True

    def record_removed(self) -> None:
        """The record's add failed or was interrupted, and the record was deleted again."""
        self._committed = False

    def record_unsettled(self) -> None:
        """The record's add failed or was interrupted and its deletion failed: it may be committed, so
        nothing is rolled back (what it owns stays; vacuum() removes it should the record not be there)."""
        self._committed = True
        self._unsettled = True

    @property
    def committed(self) -> bool:
        """Whether the record was added (:meth:`record_added`; not where that is unknown:
        :meth:`record_unsettled`)."""
        return self._committed and not self._unsettled

    @property
    def unsettled(self) -> bool:
        """Whether the record's add and its deletion failed, so that it may be committed
        (:meth:`record_unsettled`)."""
        return self._unsettled

    def own_record(self) -> str:
        """SQL selecting this transaction's record: its uid and its group (never another's of the uid)."""
        return f"uid = {sql_literal(self.record.uid)} AND zarr_group = {sql_literal(self.record.zarr_group)}"

    def _commit_allowed(self) -> None:
        """Refuse to commit a record staged short (its duplicate found by :meth:`stage`) now that no
        committed dataset holds the content (deleted meanwhile): its layout and cell rows were not written.

        Raises
        ------
        CommitConflictError
            Always, when staged short.
        """
        if self._short:
            raise CommitConflictError(
                f"dataset {self.record.uid!r}: the dataset holding the same content was deleted while this "
                "one was written; nothing was stored: ingest it again"
            )

    def roll_back(self) -> None:
        """Undo what this transaction wrote, unless its record is committed (logged, not raised, if the store
        refuses: vacuum() finishes)."""
        core, uid = self.core, self.record.uid
        if self._committed:
            return
        try:
            if self._rows_written and self.cells_of is None:  # its own rows: those pointing into its group
                pointer = f"{self.space.name}.zarr_group = {sql_literal(self._group)}"
                core.tables.cells.delete(f"dataset_uid = {sql_literal(uid)} AND {pointer}")
            elif self._rows_written:
                detach_pointers(core, self.space.name, self._group)
            self._rows_written = False
            if self._layout_written:
                with core.lock("layouts"):
                    where = f"layout_uid = {sql_literal(self.plan.layout_uid)}"
                    if core.tables.datasets.count_rows(where) == 0:
                        core.tables.layouts.delete(where)
                self._layout_written = False
            if self._group is not None:
                remove_group(core, self._group)
                self._group = None
        except Exception as exc:  # whatever the store or LanceDB raise: the caller's error stands
            log.error("roll-back of dataset %s left debris (vacuum() removes it): %s", uid, exc)

    def close(self) -> None:
        """Release the dataset claim."""
        self._claims.close()

    def report(self) -> None:
        """Warn about what was not stored (dropped obs columns, a skipped duplicate) and log the speed."""
        uid, plan = self.record.uid, self.plan
        if self.duplicate_of is not None:
            warnings.warn(
                f"dataset {uid!r}: the same content is already in the atlas as dataset "
                f"{self.duplicate_of.uid!r}; nothing was ingested (on_duplicate='skip')",
                DuplicateContentWarning,
                stacklevel=caller_outside_lancell(),
            )
            return
        if plan.dropped_obs_columns:
            why = (
                "are not in the cell schema (or are names lancell reserves)"
                if self.cells_of is None
                else f"belong to a modality attached to the cells of {self.cells_of!r}, which keep their own "
                "obs (give them to add_from_mudata in mdata.obs or the first modality's obs)"
            )
            warnings.warn(
                f"dataset {uid!r}: obs columns {plan.dropped_obs_columns} {why} and were not stored (listed "
                "on the record as dropped_obs_columns)",
                DroppedColumnsWarning,
                stacklevel=caller_outside_lancell(),
            )
        elapsed = time.perf_counter() - self._started
        log.info(
            "ingested %s: %d cells, %d nnz in %.2f s (%.0f cells/s)",
            uid,
            plan.n_cells,
            plan.nnz,
            elapsed,
            plan.n_cells / max(elapsed, 1e-9),
        )
