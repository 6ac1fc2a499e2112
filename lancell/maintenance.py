"""Removing things from an atlas: a dataset (with its attached modalities) and debris no snapshot needs.

Zarr groups are append-only: deleting a dataset removes its rows in new table versions and leaves its group
for :func:`remove_debris`, which keeps every group the live tables or any tagged snapshot still reference.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import obstore

from lancell.errors import IngestError
from lancell.modalities import detach_pointers
from lancell.registry import sql_literal
from lancell.stores import delete_prefix
from lancell.versions import list_snapshots, read_version
from lancell.visibility import committed_cells, committed_filter

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["remove_dataset", "remove_debris"]


def remove_dataset(atlas: RaggedAtlas, uid: str) -> None:
    """Delete dataset ``uid``: a further modality loses its pointers, a dataset its cells and modalities.

    Raises
    ------
    IngestError
        No such dataset.
    """
    where = f"uid = {sql_literal(uid)}"
    rows = atlas._tables.datasets.search().where(where).to_arrow().to_pylist()
    if not rows:
        raise IngestError(f"no dataset {uid!r} in the atlas")
    record = rows[0]
    if record.get("cells_of"):  # a further modality: the cells stay, their pointer goes
        detach_pointers(atlas, record["feature_space"], record["zarr_group"])
    else:  # the cells go, with every modality attached to them
        atlas._tables.cells.delete(f"dataset_uid = {sql_literal(uid)}")
        atlas._tables.datasets.delete(f"cells_of = {sql_literal(uid)}")
    atlas._tables.datasets.delete(where)


def remove_debris(atlas: RaggedAtlas, grace: timedelta) -> dict[str, int]:
    """Delete unreferenced zarr groups older than ``grace`` and the uncommitted cell rows pointing into them.

    Committed cells that point into such a group (a modality whose attachment never committed) lose that
    pointer instead.
    """
    tables = atlas._tables
    referenced = set(tables.datasets.to_arrow().column("zarr_group").to_pylist())
    for version in list_snapshots(tables.db)["version"]:
        view = atlas._pinned_view(read_version(tables.db, int(version))["tables"])
        referenced |= set(view._tables.datasets.to_arrow().column("zarr_group").to_pylist())
    top_level = {name.split("/", 1)[0] for name in referenced}  # groups of older atlases could nest
    cutoff = datetime.now(UTC) - grace
    owners, _ = committed_cells(atlas)
    removed_groups = removed_cells = 0
    for prefix in obstore.list_with_delimiter(atlas.store)["common_prefixes"]:
        group = prefix.rstrip("/")
        if group in top_level or group.startswith("_"):
            continue
        objects = obstore.list(atlas.store, prefix=group + "/").collect()
        if any(meta["last_modified"] > cutoff for meta in objects):
            continue
        for space in atlas.feature_spaces:
            where = f"{space}.zarr_group = {sql_literal(group)} AND NOT ({committed_filter(owners)})"
            removed = tables.cells.count_rows(where)
            if removed:
                tables.cells.delete(where)
                removed_cells += removed
            detach_pointers(atlas, space, group)
        delete_prefix(atlas.store, group)
        removed_groups += 1
    return {"groups": removed_groups, "cells": removed_cells}
