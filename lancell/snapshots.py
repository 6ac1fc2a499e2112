"""Taking a snapshot: validate the tables at their current versions, tag them, record the version row.

See ``docs/architecture.md`` ("Versioning"): a snapshot is a row of ``atlas_versions`` naming each table's
Lance version, and a tag on each of those versions so that no cleanup can remove them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lancell.errors import ValidationError
from lancell.storage.groups import FORMAT_VERSION
from lancell.storage.stores import describe_store, public_store_config
from lancell.tables.table_schemas import VERSIONS_TABLE
from lancell.tables.versions import SNAPSHOT_LOCK, next_version, record_snapshot, tag_tables
from lancell.tables.visibility import committed_cells
from lancell.validation import find_problems

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["take_snapshot"]


def take_snapshot(core: AtlasCore, note: str | None = None) -> int:
    """Validate and record the current version of every table of ``core``; return the new snapshot number.

    Validation reads the tables pinned at the versions being recorded, under the ``snapshot`` lock, so what
    is validated is exactly what the snapshot names.

    Raises
    ------
    ValidationError
        The atlas is inconsistent (nothing is recorded).
    LockLostError
        Another process took the snapshot lock over while this one validated (nothing is recorded).
    ReadOnlyAtlasError
        ``core`` is read-only.
    """
    core.require_writable()
    with core.lock(SNAPSHOT_LOCK) as lease:
        pinned = core.tables.versions()
        view = core.pinned_view(pinned)
        problems = find_problems(view)
        if problems:
            raise ValidationError(problems)
        versions = core.tables.db.open_table(VERSIONS_TABLE)
        version = next_version(versions)
        lease.check()  # a process that took the lock over may be taking this same version
        tag_tables(core.tables.handles, pinned, version)
        record_snapshot(
            versions,
            version,
            pinned,
            total_cells=committed_cells(view)[1],
            n_datasets=view.tables.datasets.count_rows(),
            store_url=describe_store(core.store),
            store_config=public_store_config(core.store),
            lancell_format=FORMAT_VERSION,
            note=note,
        )
    return version
