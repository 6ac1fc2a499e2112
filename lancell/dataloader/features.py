"""Per-group tables of a :class:`~lancell.dataloader.CellDataset`: which zarr group, which layer dtype, and
how its local feature indices map to the dataset's output columns.

Every zarr group (one per dataset) keeps its own panel. The dataset chooses one output feature set for all
batches (``features=``):

- ``None``: the registry's global index space (column ``j`` is the feature with ``global_index == j``), stable
  across snapshots, as token models want;
- ``"union"`` / ``"intersection"``: the features any / every selected dataset measured, ordered by global
  index (the columns ``to_anndata()`` returns with the same join);
- a list of registry uids: exactly those columns, in that order.

Each group gets a lookup table ``local index -> output column`` (``-1``: dropped), and a presence row that
says which output columns its dataset measured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from lancell.errors import QueryError

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["FeatureSelection", "GroupTable", "build_group_table", "output_dtype"]

log = logging.getLogger(__name__)

FeatureSelection = Literal["union", "intersection"] | Sequence[str] | None


@dataclass
class GroupTable:
    """What a dataset knows about each zarr group its cells live in (a few arrays per group, none per cell).

    Attributes
    ----------
    names
        Zarr group path of each group code.
    dataset_uids
        Dataset uid of each group code.
    measured
        bool (n_groups,): the group stores the requested layer (otherwise its cells read as empty rows).
    dtypes
        Stored dtype of the layer per group (``""`` when not measured).
    luts
        int32 arrays, ``luts[g][local] = output column`` or ``-1`` when the feature is not an output column.
    keeps_all
        bool (n_groups,): no local feature of the group is dropped.
    monotonic
        bool (n_groups,): kept local features map to increasing output columns, so rows stay sorted.
    presence
        bool (n_groups + 1, n_features): which output features each group measured; the last row (group code
        ``-1``, a cell without data in the feature space) is all False.
    """

    names: list[str]
    dataset_uids: list[str]
    measured: np.ndarray
    dtypes: list[str]
    luts: list[np.ndarray]
    keeps_all: np.ndarray
    monotonic: np.ndarray
    presence: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays of this table (lookup tables and presence rows)."""
        return int(sum(lut.nbytes for lut in self.luts) + self.presence.nbytes)


def _dataset_rows(atlas: RaggedAtlas) -> dict[str, dict[str, str]]:
    table = atlas._tables.datasets.to_arrow().select(["uid", "zarr_group", "layout_uid"])
    return {row["zarr_group"]: row for row in table.to_pylist()}


def _registry(atlas: RaggedAtlas, feature_space: str) -> tuple[np.ndarray, np.ndarray]:
    """``(uids, global_index)`` of every numbered feature of the registry."""
    from lancell.registry_view import registry_view  # lancedb: only when the dataset is built

    view = registry_view(atlas, feature_space)
    return view.frame["uid"].to_numpy(dtype=object), view.frame.index.to_numpy(dtype=np.int64)


def _output_columns(
    atlas: RaggedAtlas,
    feature_space: str,
    panels: list[np.ndarray],
    features: FeatureSelection,
) -> tuple[np.ndarray, np.ndarray]:
    """Global index and uid of each output column."""
    uids, global_index = _registry(atlas, feature_space)
    uid_of = np.full(int(global_index.max()) + 1 if global_index.size else 0, "", dtype=object)
    uid_of[global_index] = uids
    if features is None:
        columns = np.arange(uid_of.size, dtype=np.int64)
    elif isinstance(features, str):
        if features not in ("union", "intersection"):
            raise QueryError(
                f"features must be 'union', 'intersection', a list of uids or None, got {features!r}"
            )
        if not panels:
            columns = np.zeros(0, dtype=np.int64)
        elif features == "union":
            columns = np.unique(np.concatenate(panels))
        else:
            columns = panels[0]
            for panel in panels[1:]:
                columns = np.intersect1d(columns, panel)
            columns = np.unique(columns)
    else:
        wanted = [str(u) for u in features]
        index_of = {u: int(g) for u, g in zip(uids, global_index, strict=True)}
        missing = [u for u in wanted if u not in index_of]
        if missing:
            raise QueryError(
                f"{len(missing)} features are not in the {feature_space!r} registry, e.g. {missing[:5]}"
            )
        columns = np.asarray([index_of[u] for u in wanted], dtype=np.int64)
        if np.unique(columns).size != columns.size:
            raise QueryError("features lists a uid more than once")
    return columns, uid_of[columns]


def build_group_table(
    atlas: RaggedAtlas,
    feature_space: str,
    layer: str,
    group_names: Sequence[str],
    features: FeatureSelection,
) -> tuple[GroupTable, np.ndarray, np.ndarray]:
    """Describe ``group_names`` and choose the output columns.

    Returns
    -------
    table, columns, feature_uids
        The :class:`GroupTable`, the global index of each output column (int64) and its registry uid.

    Raises
    ------
    QueryError
        An unknown ``features`` value or uid.
    """
    from lancell.registry import read_global_indices  # lancedb: only when the dataset is built

    records = _dataset_rows(atlas)
    stored_layouts = read_global_indices(
        atlas, [r["layout_uid"] for n, r in records.items() if n in group_names]
    )
    dataset_uids, dtypes, measured, layouts = [], [], [], []
    for name in group_names:
        record = records.get(name)
        if record is None:  # pointers of a modality whose attachment never committed: not measured
            log.warning("zarr group %s has no dataset record (an interrupted ingestion); unmeasured", name)
            dataset_uids.append("")
            dtypes.append("")
            measured.append(False)
            layouts.append(np.zeros(0, dtype=np.int64))
            continue
        stored = (atlas._group_attrs(name) or {}).get("layers", {})
        dataset_uids.append(record["uid"])
        dtypes.append(stored.get(layer, ""))
        measured.append(layer in stored)
        if layer not in stored:
            log.warning("dataset %s has no layer %r; its cells are returned unmeasured", record["uid"], layer)
        layouts.append(stored_layouts[record["layout_uid"]])
    panels = [p for p, m in zip(layouts, measured, strict=True) if m]
    columns, feature_uids = _output_columns(atlas, feature_space, panels, features)
    width = int(max(columns.max(initial=-1), max((p.max(initial=-1) for p in layouts), default=-1))) + 1
    column_of_global = np.full(width, -1, dtype=np.int32)
    column_of_global[columns] = np.arange(columns.size, dtype=np.int32)
    presence = np.zeros((len(group_names) + 1, columns.size), dtype=bool)
    luts, keeps_all, monotonic = [], [], []
    for g, (panel, is_measured) in enumerate(zip(layouts, measured, strict=True)):
        lut = column_of_global[panel] if is_measured else np.full(panel.size, -1, dtype=np.int32)
        kept = lut[lut >= 0]
        presence[g, kept] = True
        luts.append(np.ascontiguousarray(lut, dtype=np.int32))
        keeps_all.append(bool(kept.size == lut.size))
        monotonic.append(bool(np.all(np.diff(kept) > 0)))
    table = GroupTable(
        names=list(group_names),
        dataset_uids=dataset_uids,
        measured=np.asarray(measured, dtype=bool),
        dtypes=dtypes,
        luts=luts,
        keeps_all=np.asarray(keeps_all, dtype=bool),
        monotonic=np.asarray(monotonic, dtype=bool),
        presence=presence,
    )
    return table, columns, np.asarray(feature_uids, dtype=object)


def output_dtype(table: GroupTable) -> np.dtype:
    """The stored dtype when every measured group stores the same one (e.g. uint32 counts), else float32."""
    dtypes = {np.dtype(d) for d, m in zip(table.dtypes, table.measured, strict=True) if m}
    return dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)
