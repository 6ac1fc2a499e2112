"""Dataset partitions whose landing file held the content of another dataset (``outcome: duplicate``).

Such a partition stores nothing: its content is that dataset's. Once that dataset is ingested anew (deleted
and materialized again, or replaced), the content may be in no dataset, so the landing sensor runs the
partition again, after that ingestion, once per ingestion.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

__all__ = ["absent_datasets", "latest_materializations", "stale_duplicates"]

_FETCH_LIMIT = 10_000  # event records Dagster returns at most per fetch


def latest_materializations(
    instance: dg.DagsterInstance, asset: dg.AssetKey
) -> dict[str, tuple[int, Mapping[str, dg.MetadataValue]]]:
    """``{partition: (storage id, metadata)}`` of each partition's latest materialization of ``asset``: one
    query of the event log, then one per ``_FETCH_LIMIT`` partitions (Dagster's most records at a time: the
    10,001st partition made one fetch of them all raise on every sensor tick)."""
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset, dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    storage_ids = sorted(latest.values())
    out = {}
    for start in range(0, len(storage_ids), _FETCH_LIMIT):
        page = storage_ids[start : start + _FETCH_LIMIT]
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, storage_ids=page), limit=len(page)
        ).records
        for record in records:
            done = record.asset_materialization
            if done is not None and done.partition is not None:
                out[done.partition] = (record.storage_id, done.metadata)
    return out


def absent_datasets(instance: dg.DagsterInstance, asset: dg.AssetKey, uids: set[str]) -> dict[str, str]:
    """``{partition: dataset}``: the partitions of ``asset`` whose latest materialization stored their content
    as ``dataset`` (their own, or the one they duplicated), which is not among ``uids`` (deleted since,
    outside Dagster: the partition still shows as materialized)."""
    absent = {}
    for partition, (_, meta) in latest_materializations(instance, asset).items():
        dataset = meta["duplicate_of"].value if "duplicate_of" in meta else partition
        if isinstance(dataset, str) and dataset not in uids:
            absent[partition] = dataset
    return absent


def stale_duplicates(instance: dg.DagsterInstance, asset: dg.AssetKey) -> dict[str, tuple[str, int]]:
    """``{partition: (dataset, storage id)}``: the partitions of ``asset`` whose latest materialization
    found their content in the atlas as ``dataset``, which a later materialization (that storage id)
    ingested anew."""
    metadata = latest_materializations(instance, asset)
    stale = {}
    for partition, (storage_id, meta) in metadata.items():
        original = meta["duplicate_of"].value if "duplicate_of" in meta else None
        if original is None or original not in metadata:
            continue
        ingested_at, its_meta = metadata[original]
        outcome = its_meta["outcome"].value if "outcome" in its_meta else None
        if ingested_at > storage_id and outcome == "ingested":
            stale[partition] = (original, ingested_at)
    return stale
