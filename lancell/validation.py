"""Consistency checks of an atlas: tables against each other and against the zarr groups' attributes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from lancell.groups import FORMAT_VERSION
from lancell.visibility import visible_cells_filter

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["find_problems"]

log = logging.getLogger(__name__)


def _value_counts(column: pa.Array | pa.ChunkedArray) -> dict[object, int]:
    values, counts = pc.value_counts(column).flatten()
    return dict(zip(values.to_pylist(), counts.to_pylist(), strict=True))


def find_problems(atlas: RaggedAtlas) -> list[str]:
    """Return a list of human-readable inconsistencies (empty when the atlas is consistent).

    Checks: every dataset's zarr group exists with matching attributes and its layout is stored; cell counts
    per dataset equal the dataset records; no cell belongs to an unknown dataset; cell uids are unique;
    registry uids and global indices are unique and assigned. Cell rows and pointers no dataset record
    commits (an interrupted ingestion) are invisible debris, not problems (see :mod:`lancell.visibility`).
    """
    problems: list[str] = []
    tables = atlas._tables
    datasets = tables.datasets.to_arrow()
    columns = ["uid", "dataset_uid", *atlas.feature_spaces]
    hidden = visible_cells_filter(atlas)  # rows of an interrupted ingestion are debris, not a problem
    scan = tables.cells.search().where(hidden) if hidden else tables.cells.search()
    cells = scan.select(columns).to_arrow()
    counts = _value_counts(cells.column("dataset_uid"))
    per_group = {}
    for space in atlas.feature_spaces:
        pointer = cells.column(space).combine_chunks()
        per_group |= _value_counts(pc.struct_field(pointer.filter(pointer.is_valid()), "zarr_group"))
    layout_sizes = _value_counts(tables.layouts.to_arrow().column("layout_uid"))
    known = set()
    for row in datasets.to_pylist():
        uid = row["uid"]
        if not row.get("cells_of"):
            known.add(uid)
        if per_group.get(row["zarr_group"], 0) != row["n_cells"]:
            problems.append(
                f"dataset {uid!r}: record says {row['n_cells']} cells, "
                f"{per_group.get(row['zarr_group'], 0)} cells point into {row['zarr_group']!r}"
            )
        if layout_sizes.get(row["layout_uid"]) != row["n_features"]:
            problems.append(f"dataset {uid!r}: layout {row['layout_uid']!r} missing or of the wrong size")
        attrs = atlas._group_attrs(row["zarr_group"])
        if attrs is None:
            problems.append(f"dataset {uid!r}: zarr group {row['zarr_group']!r} is missing")
            continue
        if attrs.get("lancell_format") != FORMAT_VERSION:
            problems.append(f"dataset {uid!r}: zarr group format {attrs.get('lancell_format')!r}")
        for key in ("n_cells", "nnz", "layout_uid", "feature_space"):
            if attrs.get(key) != row[key]:
                problems.append(
                    f"dataset {uid!r}: zarr attr {key}={attrs.get(key)!r}, record has {row[key]!r}"
                )
    dangling = sorted(set(per_group) - set(datasets.column("zarr_group").to_pylist()))
    if dangling:  # an attachment interrupted before its commit: readers treat these cells as unmeasured
        log.warning("cells point into zarr groups without a dataset record (vacuum() detaches): %s", dangling)
    orphans = sorted(set(counts) - known)
    if orphans:
        problems.append(f"cells of unknown datasets {orphans[:5]} (debris of an interrupted ingest?)")
    if pc.count_distinct(cells.column("uid")).as_py() != cells.num_rows:
        problems.append("cell uids are not unique")
    for space in atlas.feature_spaces:
        registry = tables.registry(space).to_arrow().select(["uid", "global_index"])
        if pc.count_distinct(registry.column("uid")).as_py() != registry.num_rows:
            problems.append(f"registry {space!r}: feature uids are not unique")
        index = registry.column("global_index")
        if index.null_count:
            problems.append(f"registry {space!r}: {index.null_count} features without global_index")
        elif pc.count_distinct(index).as_py() != registry.num_rows:
            problems.append(f"registry {space!r}: global_index values are not unique")
    return problems
