"""What changed between a snapshot and the one before it, shown on each ``atlas_snapshot`` partition."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from resources import AtlasResource


def _features(atlas: RaggedAtlas) -> dict[str, int]:
    return {name: len(atlas.feature_registry(name)) for name in atlas.feature_spaces}


def _contents(atlas: RaggedAtlas | None) -> dict[str, tuple[object, ...]]:
    """``{dataset uid: what its record says it stores}``: a dataset deleted and ingested again under its
    uid, or given another layer, differs (a new zarr group, fingerprint, layers or size)."""
    if atlas is None:
        return {}
    frame = atlas.list_datasets()
    columns = [c for c in _CONTENT_FIELDS if c in frame.columns]
    return {row["uid"]: tuple(str(row[c]) for c in columns) for row in frame.to_dict("records")}


_CONTENT_FIELDS = ("zarr_group", "content_fingerprint", "layers", "n_cells", "nnz", "feature_space")


def snapshot_diff(atlas: AtlasResource, frozen: RaggedAtlas) -> dict[str, object]:
    """Metadata comparing snapshot ``frozen`` with the latest snapshot before it.

    ``previous_snapshot`` (None for the first), ``datasets_added`` and ``datasets_removed`` (uids),
    ``datasets_changed`` (uids in both whose stored data differs: replaced under the same uid, or a layer
    added), ``cells_added`` (may be negative after deletions) and ``features_added`` per feature space.
    """
    versions = atlas.list_versions()
    earlier = versions[versions["version"] < frozen.snapshot_version]["version"]
    previous = atlas.checkout(int(earlier.max())) if len(earlier) else None
    now, before = _contents(frozen), _contents(previous)
    now_uids, before_uids = set(now), set(before)
    before_cells = previous.query().count() if previous is not None else 0
    before_features = _features(previous) if previous is not None else {}
    return {
        "previous_snapshot": (
            dg.MetadataValue.int(previous.snapshot_version)
            if previous is not None
            else dg.MetadataValue.null()
        ),
        "datasets_added": dg.MetadataValue.json(sorted(now_uids - before_uids)),
        "datasets_removed": dg.MetadataValue.json(sorted(before_uids - now_uids)),
        "datasets_changed": dg.MetadataValue.json(
            sorted(uid for uid in now_uids & before_uids if now[uid] != before[uid])
        ),
        "cells_added": dg.MetadataValue.int(frozen.query().count() - before_cells),
        "features_added": dg.MetadataValue.json(
            {name: n - before_features.get(name, 0) for name, n in _features(frozen).items()}
        ),
    }
