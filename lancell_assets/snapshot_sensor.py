"""The snapshot partitions follow the atlas's snapshots, wherever they were taken or deleted.

A snapshot taken outside Dagster (``lancell snapshot --note LABEL``, ``RaggedAtlas.snapshot(note=...)``)
becomes a ``lancell_snapshots`` partition, to materialize (its metadata, checks and diff) or train on; a
snapshot deleted (``lancell delete-snapshot``, ``RaggedAtlas.delete_snapshot``) takes its partition, and the
materializations shown for it, away: a deleted snapshot's note is never given again, so that partition can
only ever have named it (the nightly sensor does not add it back). A partition that names no snapshot yet
(added by the nightly sensor or ``take_snapshot`` before their run takes it) is left alone. A snapshot
without a note, or whose note is no plain file name (:func:`resources.models.check_label`), gets no
partition: that is logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from lancell_assets.partitions import snapshot_partitions
from resources import AtlasResource
from resources.models import check_label

if TYPE_CHECKING:
    import pandas as pd


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def snapshot_partitions_sensor(context: dg.SensorEvaluationContext, atlas: AtlasResource) -> dg.SensorResult:
    """Add a partition for each labelled snapshot that has none; delete those of deleted snapshots."""
    from lancell.errors import AtlasNotFoundError, SnapshotLabelError

    try:
        listing = atlas.list_versions(deleted=True)
    except AtlasNotFoundError:
        return dg.SensorResult(skip_reason="no atlas yet")
    live, gone = _notes(listing)
    registered = set(context.instance.get_dynamic_partitions(snapshot_partitions.name))
    added, unfit = [], []
    for note in sorted(live - registered):
        try:
            check_label(note)
            added.append(note)
        except SnapshotLabelError as exc:
            unfit.append(str(exc))
    removed = sorted(gone & registered)
    seen = f"{len(listing)}:{len(gone)}"  # the snapshots taken and deleted so far
    if unfit and seen != context.cursor:  # (once per change, not every minute)
        context.log.info("snapshots without a partition: %s", "; ".join(unfit))
    if not added and not removed:
        return dg.SensorResult(
            skip_reason=f"every labelled snapshot has its partition ({len(live)})", cursor=seen
        )
    context.log.info("snapshot partitions added %s, removed (snapshots deleted) %s", added, removed)
    requests = []
    if added:
        requests.append(snapshot_partitions.build_add_request(added))
    if removed:
        requests.append(snapshot_partitions.build_delete_request(removed))
    return dg.SensorResult(  # (the reason says what it did: the tick requests no run)
        dynamic_partitions_requests=requests,
        cursor=seen,
        skip_reason=f"snapshot partitions added {added}, removed (snapshots deleted) {removed}",
    )


def deleted_labels(atlas: AtlasResource) -> set[str]:
    """The notes of the atlas's deleted snapshots (none where there is no atlas yet): labels never given
    again, whose partitions :func:`snapshot_partitions_sensor` removes."""
    from lancell.errors import AtlasNotFoundError

    try:
        return _notes(atlas.list_versions(deleted=True))[1]
    except AtlasNotFoundError:
        return set()


def _notes(listing: pd.DataFrame) -> tuple[set[str], set[str]]:
    """``(notes of live snapshots, notes of deleted ones only)`` of a ``list_versions(deleted=True)``."""
    noted = listing[listing["note"].notna()]
    live = set(noted.loc[noted["deleted_at"].isna(), "note"])
    return live, set(noted.loc[noted["deleted_at"].notna(), "note"]) - live
