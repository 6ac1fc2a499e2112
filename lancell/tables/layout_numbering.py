"""Whether a stored feature layout numbers its features as its feature space's registry does.

A query places a dataset's local features at its layout's global indices and names them from the registry
of the dataset's feature space. A layout's uid hashes its features' uids and global indices, so a layout
is the same in every space that numbers those features alike; before 2026-12-06 it hashed the uids only,
and one gene panel in two feature spaces numbered otherwise shared the first space's layout: the second's
datasets read one gene's values under another's name (and kept reading them so once the first space's
datasets were deleted). ``validate()`` reports every such layout (:func:`layouts_off_the_registry`) and a
query refuses to read them (:func:`check_layouts_numbered`): each layout a query reads is checked once per
process in atlases created before atlas.json recorded :data:`NUMBERED_LAYOUTS`; in the others (an older
lancell may still write into them) only the layouts datasets of two feature spaces use, which costs nothing
where there are none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import QueryError
from lancell.storage.bounded_cache import BoundedCache
from lancell.tables.registry import sql_literal
from lancell.tables.registry_view import atlas_identity

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["NUMBERED_LAYOUTS", "check_layouts_numbered", "layouts_off_the_registry"]

# atlas.json's key, true in atlases created since every layout's uid hashes its features' global indices
NUMBERED_LAYOUTS = "layouts_numbered"

# (atlas, layout uid, feature space) -> whether the layout records other global indices than that space's
# registry: a stored layout never changes and global indices are assigned once
_CHECKED: BoundedCache[tuple[Any, str, str], bool] = BoundedCache(1024)


def layouts_off_the_registry(core: AtlasCore, space: str, layouts: pa.Table) -> dict[str, tuple[int, dict]]:
    """Of ``layouts`` (rows ``layout_uid``, ``local_index``, ``feature_uid``, ``global_index``) those that
    record a feature ``space``'s registry does not hold under the same global index: ``layout uid -> (how
    many such features, the first: {feature_uid, global_index, registered_index})``."""
    registry = core.tables.registry(space).to_arrow().select(["uid", "global_index"])
    registry = registry.filter(registry.column("global_index").is_valid())  # (a row added by hand: none)
    registered = registry.rename_columns(["feature_uid", "registered_index"])
    joined = layouts.join(registered, "feature_uid", join_type="left outer")
    same = pc.fill_null(pc.equal(joined.column("global_index"), joined.column("registered_index")), False)
    off = joined.filter(pc.invert(same))
    found = {}
    for layout in sorted(set(off.column("layout_uid").to_pylist())):
        mine = off.filter(pc.equal(off.column("layout_uid"), layout)).sort_by("local_index")
        found[layout] = (mine.num_rows, mine.slice(0, 1).to_pylist()[0])
    return found


def check_layouts_numbered(core: AtlasCore, records: list[Mapping[str, Any]], queried: list[str]) -> None:
    """Refuse to read the datasets of ``queried`` (zarr groups) whose layout records other global indices
    than their feature space's registry; ``records``: every visible dataset record (``zarr_group``,
    ``layout_uid``, ``feature_space``, ``uid``). Nothing is read in an atlas that records
    :data:`NUMBERED_LAYOUTS`.

    Raises
    ------
    QueryError
        Such a dataset is among ``queried`` (an atlas written before 2026-12-06).
    """
    by_group = {record["zarr_group"]: record for record in records}
    read = [by_group[name] for name in queried]
    if core.meta.get(NUMBERED_LAYOUTS):  # an older lancell may still write one: a layout of two spaces
        spaces: dict[str, set[str]] = {}
        for record in records:
            spaces.setdefault(record["layout_uid"], set()).add(record["feature_space"])
        read = [record for record in read if len(spaces[record["layout_uid"]]) > 1]
    atlas = atlas_identity(core)
    verdicts: dict[tuple[str, str], bool] = {}  # (this call's: the cache may evict meanwhile)
    for record in read:
        key = (record["layout_uid"], record["feature_space"])
        if (cached := _CHECKED.get((atlas, *key))) is not None:
            verdicts[key] = cached
    unchecked = {(r["layout_uid"], r["feature_space"]) for r in read} - set(verdicts)
    for space in sorted({space for _, space in unchecked}):
        uids = sorted(layout for layout, of in unchecked if of == space)
        rows = core.tables.layouts.to_lance().to_table(
            columns=["layout_uid", "local_index", "feature_uid", "global_index"],
            filter=f"layout_uid IN ({', '.join(map(sql_literal, uids))})",
        )
        off = layouts_off_the_registry(core, space, rows)
        for layout in uids:
            verdicts[(layout, space)] = layout in off
            _CHECKED.put((atlas, layout, space), layout in off)
    bad = [record for record in read if verdicts[(record["layout_uid"], record["feature_space"])]]
    if bad:
        named = ", ".join(f"{record['uid']!r} ({record['feature_space']})" for record in bad[:5])
        raise QueryError(
            f"datasets {named}{' ...' if len(bad) > 5 else ''} use a feature layout that an older lancell "
            "(before 2026-12-06) shared with another feature space numbering its features otherwise: their "
            "values would be read under other features' names; delete those datasets and ingest them again "
            "(validate() lists every such layout)"
        )
