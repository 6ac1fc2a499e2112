"""Dataset partitions whose landing file held the content of another dataset (``outcome: duplicate``).

Such a partition stores nothing: its content is that dataset's. Once that dataset is ingested anew (deleted
and materialized again, or replaced), the content may be in no dataset, so the landing sensor runs the
partition again, after that ingestion, once per ingestion.
"""

from __future__ import annotations

import dagster as dg

__all__ = ["stale_duplicates"]


def stale_duplicates(instance: dg.DagsterInstance, asset: dg.AssetKey) -> dict[str, tuple[str, int]]:
    """``{partition: (dataset, storage id)}``: the partitions of ``asset`` whose latest materialization
    found their content in the atlas as ``dataset``, which a later materialization (that storage id)
    ingested anew. Two queries of the event log, whatever the number of partitions."""
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset, dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    if not latest:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, storage_ids=list(latest.values())), limit=len(latest)
    ).records
    metadata = {
        record.asset_materialization.partition: (record.storage_id, record.asset_materialization.metadata)
        for record in records
        if record.asset_materialization is not None
    }
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
