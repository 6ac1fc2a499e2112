"""Which cell rows readers see (only those whose dataset record is committed) and the ingestion claim.

Ingestion commits in two LanceDB transactions: the cell rows, then the dataset record. The dataset record is
the commit point. A process killed between the two (or a roll-back that could not finish) leaves cell rows
that no dataset record owns; they stay invisible to every reader (queries, counts, loaders, ``validate()``,
snapshots) until ``vacuum()`` removes them or a re-ingestion of the same dataset replaces them.

A handle of live tables filters by the committed datasets (read from the dataset table first) on every read:
the cell rows it then reads may be a newer version than any count taken before, so a count cannot tell that
no uncommitted row is among them. A handle pinned to table versions read at one state (a snapshot, or the
view a live handle's query reads through: ``AtlasTables.consistent_versions``) reads counts and rows of the
same versions: when the committed records account for every cell row (one ``count_rows()``, table metadata
only, and a read of the small dataset table), no filter is added at all. Records own complete sets of rows:
ingestion writes a dataset's rows before its record, and deletion removes the record before the rows (and a
further modality's record before its pointers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lancell.errors import DuplicateDatasetError
from lancell.tables.atlas_tables import read_columns
from lancell.tables.registry import sql_literal

if TYPE_CHECKING:
    import pandas as pd

    from lancell.core import AtlasCore
    from lancell.tables.locks import Lease

__all__ = [
    "claim_dataset",
    "committed_cells",
    "committed_filter",
    "dataset_lock_name",
    "recorded_cells",
    "visible_cells_filter",
]


def committed_cells(core: AtlasCore) -> tuple[list[str], int]:
    """``(uids of datasets that own cells, number of cells their records commit)``.

    Records of further modalities (``cells_of`` set) own no cell rows and are left out.
    """
    rows = read_columns(core.tables.datasets, ["uid", "n_cells", "cells_of"]).to_pylist()
    owners = [row for row in rows if not row["cells_of"]]
    return [row["uid"] for row in owners], sum(int(row["n_cells"]) for row in owners)


def recorded_cells(datasets: pd.DataFrame) -> int:
    """The cells the records of ``datasets`` (a ``list_datasets()`` frame) commit: a further modality's record
    (``cells_of`` set) owns none, its cells are its host's."""
    return int(datasets.loc[datasets["cells_of"].isna(), "n_cells"].sum())


def committed_filter(owners: list[str]) -> str:
    """A SQL predicate selecting the cell rows of the datasets ``owners``."""
    if not owners:
        return "false"
    return f"dataset_uid IN ({', '.join(sql_literal(uid) for uid in owners)})"


def visible_cells_filter(core: AtlasCore) -> str | None:
    """A SQL predicate that hides uncommitted cell rows, or ``None`` when ``core``'s tables are pinned and
    there are none to hide.

    Worked out once per snapshot-pinned handle, on every call for a live one.
    """

    def compute() -> str | None:
        owners, committed = committed_cells(core)
        if core.tables.pinned is not None and core.tables.cells.count_rows() == committed:
            return None
        return committed_filter(owners)

    return core.pinned("visible_cells_filter", compute)


def dataset_lock_name(uid: str) -> str:
    """The name of dataset ``uid``'s lock.

    Held by an ingestion of ``uid`` from its first write to its commit (:func:`claim_dataset`), by its
    deletion throughout, by ``add_layer`` and ``add_csc`` of it, and by an attachment to its cells from its
    pointers to its record (:func:`lancell.maintenance.hold_host`). Lock order: the attachment takes its
    host's lock last, after its own dataset's claim, and nothing takes a dataset lock while holding a host's.
    """
    return f"dataset-{hashlib.sha1(uid.encode()).hexdigest()[:20]}"


@contextmanager
def claim_dataset(core: AtlasCore, uid: str) -> Iterator[Lease]:
    """Hold the right to ingest dataset ``uid``: one process at a time, and never twice.

    Inside the claim no other process writes or deletes rows of ``uid`` (a deletion of ``uid`` holds the same
    lock throughout), so rows of ``uid`` without a record can only be debris of an interrupted ingestion or
    deletion: they are deleted before the new rows are written. The claim yields its lock's lease: call
    ``lease.check()`` right before committing the dataset record.

    Raises
    ------
    DuplicateDatasetError
        A dataset ``uid`` was committed (possibly by another process since the caller checked).
    """
    with core.lock(dataset_lock_name(uid), about=f"dataset {uid!r}") as lease:
        if core.tables.datasets.count_rows(f"uid = {sql_literal(uid)}") > 0:
            raise DuplicateDatasetError(f"dataset {uid!r} is already in the atlas")
        debris = f"dataset_uid = {sql_literal(uid)}"
        if core.tables.cells.count_rows(debris):
            core.tables.cells.delete(debris)
        yield lease
