"""Dataset partitions whose landing file held the content of another dataset (``outcome: duplicate``).

Such a partition stores nothing: its content is that dataset's. Once that dataset is replaced (deleted and
ingested again, or its file landed again), the partition's content may be in no dataset, so the landing
sensor runs it again and ``dataset_group`` names it when it ingests the dataset anew.
"""

from __future__ import annotations

import dagster as dg

__all__ = ["duplicates_of"]


def duplicates_of(instance: dg.DagsterInstance, asset: dg.AssetKey, originals: set[str]) -> dict[str, str]:
    """``{partition: dataset}``: the partitions of ``asset`` whose latest materialization found their
    content in the atlas as one of the datasets ``originals`` (two queries of the event log)."""
    if not originals:
        return {}
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset, dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    if not latest:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, storage_ids=list(latest.values())), limit=len(latest)
    ).records
    found = {}
    for record in records:
        materialized = record.asset_materialization
        original = materialized.metadata.get("duplicate_of") if materialized else None
        if original is not None and original.value in originals and materialized.partition not in originals:
            found[materialized.partition] = original.value
    return found
