"""Optimizing an atlas's tables: number new features, compact, prune untagged versions, build indexes."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING

from lancell.errors import CommitConflictError, require_age
from lancell.tables.indexes import build_indexes
from lancell.tables.registry import number_unindexed
from lancell.tables.versions import SNAPSHOT_LOCK

if TYPE_CHECKING:
    from lancedb.table import Table

    from lancell.core import AtlasCore

__all__ = ["DEFAULT_RETENTION", "assign_global_indices", "optimize_tables"]

DEFAULT_RETENTION = timedelta(days=7)
_NEVER = timedelta(days=365 * 100)
_ATTEMPTS = 6


def assign_global_indices(core: AtlasCore) -> dict[str, int]:
    """Number features that have no global index yet (rows added by hand); return counts per space."""
    core.require_writable()
    numbered = {}
    for space in core.feature_spaces.values():
        with core.lock(f"registry-{space.name}") as lease:
            numbered[space.name] = number_unindexed(core.tables.registry(space.name), lease.check)
    return numbered


def _compact(handle: Table) -> None:
    """Compact and index ``handle``, again after a commit conflict (a concurrent delete or write won the
    commit: LanceDB asks for a retry), up to ``_ATTEMPTS`` times."""
    for attempt in range(_ATTEMPTS):
        try:
            handle.optimize(cleanup_older_than=_NEVER)
            return
        except RuntimeError as exc:
            if "Retryable commit conflict" not in str(exc):
                raise
            if attempt == _ATTEMPTS - 1:
                raise CommitConflictError(
                    f"optimize: table {handle.name!r}: the compaction lost {_ATTEMPTS} commits in a row to "
                    f"other processes' writes; run optimize() again ({exc})"
                ) from exc
            time.sleep(0.05 * 2**attempt)


def optimize_tables(core: AtlasCore, cleanup_older_than: timedelta | None = None) -> dict[str, int]:
    """Number unindexed features, compact every table, prune *untagged* versions older than
    ``cleanup_older_than`` (:data:`DEFAULT_RETENTION` when None) and build the cell table's indexes; return
    each table's version after.

    Snapshot versions are tagged, so no cleanup setting can make a snapshot un-checkout-able.

    Raises
    ------
    ArgumentError
        ``cleanup_older_than`` is not a ``datetime.timedelta`` (nothing is changed).
    ArgumentValueError
        ``cleanup_older_than`` is negative (nothing is changed).
    LockLostError
        Another process took the optimize lock over; the tables not yet optimized are left as they are.
    CommitConflictError
        A table's compaction lost its commit to other processes' writes ``_ATTEMPTS`` times in a row.
    """
    keep_for = (
        DEFAULT_RETENTION
        if cleanup_older_than is None
        else require_age("cleanup_older_than", cleanup_older_than)
    )
    core.require_writable()
    assign_global_indices(core)
    with core.lock("optimize") as lease:
        for handle in core.tables.handles.values():
            # lancedb's own cleanup refuses to run once a tagged version is old; compact and index here,
            # then prune untagged versions with pylance, which skips tagged ones.
            lease.check()
            _compact(handle)
            with core.lock(SNAPSHOT_LOCK):  # no version pruned that a snapshot has pinned and not yet tagged
                dataset = handle.to_lance()
                dataset.cleanup_old_versions(older_than=keep_for, error_if_tagged_old_versions=False)
        lease.check()
        build_indexes(core.tables.cells, core.meta.get("fts_columns", []))
    return core.tables.versions()
