"""What changed between a snapshot and the one before it, shown on each ``atlas_snapshot`` partition."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from resources import AtlasResource


def _features(atlas: RaggedAtlas) -> dict[str, int]:
    return {name: len(atlas.feature_registry(name)) for name in atlas.feature_spaces}


def snapshot_diff(atlas: AtlasResource, frozen: RaggedAtlas) -> dict[str, object]:
    """Metadata comparing snapshot ``frozen`` with the latest snapshot before it.

    ``previous_snapshot`` (None for the first), ``datasets_added`` and ``datasets_removed`` (uids),
    ``cells_added`` (may be negative after deletions) and ``features_added`` per feature space.
    """
    versions = atlas.list_versions()
    earlier = versions[versions["version"] < frozen.snapshot_version]["version"]
    previous = atlas.checkout(int(earlier.max())) if len(earlier) else None
    now_uids = set(frozen.list_datasets()["uid"])
    before_uids = set(previous.list_datasets()["uid"]) if previous is not None else set()
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
        "cells_added": dg.MetadataValue.int(frozen.query().count() - before_cells),
        "features_added": dg.MetadataValue.json(
            {name: n - before_features.get(name, 0) for name, n in _features(frozen).items()}
        ),
    }
