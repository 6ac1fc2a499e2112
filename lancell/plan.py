"""The read plan of a query: which output features in which order, which zarr groups measured what is asked,
how each group's local features map to output columns, and what happens to the cells that measured nothing.

Every reader of a query (``to_anndata``, ``to_batches``, ``to_mudata`` and the training loader) executes the
one :class:`ReconstructionPlan` that :func:`plan_reconstruction` builds, so they return the same columns and
apply the same unmeasured-cell policy:

- a cell is *unmeasured* when it has no data in the feature space (a null pointer), when its zarr group lacks
  the requested layer, or when its group has no dataset record (an attachment that never committed);
- ``"error"`` (default): :class:`~lancell.errors.UnmeasuredDataError` names the datasets, their cell counts
  and the layer;
- ``"drop"``: those cells are not returned;
- ``"keep"``: they are returned as empty rows, with presence False for every feature.

Joins (``"intersection"``) are computed over the measured groups only. A dataset record whose zarr group is
absent from the store is damage, never "unmeasured": :class:`~lancell.errors.GroupNotFoundError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import GroupNotFoundError, QueryError, UnmeasuredDataError
from lancell.groups import ATLAS_ID_ATTR
from lancell.registry import read_global_indices
from lancell.registry_view import registry_view
from lancell.stores import describe_store
from lancell.tables import read_columns

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = [
    "Join",
    "OnUnmeasured",
    "PlannedCells",
    "PlannedGroup",
    "ReconstructionPlan",
    "dataset_group_attrs",
    "plan_reconstruction",
    "registry_columns",
    "resolve_features",
]

Join = Literal["union", "intersection"]
OnUnmeasured = Literal["error", "drop", "keep"]
ON_UNMEASURED = ("error", "drop", "keep")


@dataclass
class PlannedGroup:
    """One measured zarr group: its dataset, its local -> output column map and its stored dtype."""

    zarr_group: str
    dataset_uid: str
    global_index: np.ndarray
    layer_dtype: np.dtype
    out_col: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class ReconstructionPlan:
    """Everything a query's reconstruction needs that does not depend on which cells a batch holds.

    Computed once per query (registry and layouts read once), then applied to any batch of its cells.

    Attributes
    ----------
    columns
        int64: registry global index of each output column, in output order.
    dtype
        Value dtype of reconstructed AnnData (int64 for integer layers, float32 when any group stores floats).
    groups
        ``zarr group -> PlannedGroup`` of the measured groups only.
    var, presence
        Registry rows of the output columns; features x datasets booleans (a column per measured dataset, and
        under ``"keep"`` an all-False column per dataset with unmeasured cells only).
    on_unmeasured
        The unmeasured-cell policy this plan applies.
    unmeasured
        ``dataset uid -> number of unmeasured cells`` among the planned cells (dropped or kept as empty).
    """

    feature_space: str
    kind: str
    layer: str | None
    join: Join
    columns: np.ndarray
    dtype: np.dtype
    groups: dict[str, PlannedGroup]
    var: pd.DataFrame
    presence: pd.DataFrame
    on_unmeasured: OnUnmeasured = "error"
    unmeasured: dict[str, int] = field(default_factory=dict)

    def measured(self, pointer: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """bool per cell of ``pointer`` (this plan's pointer column): the cell's group measured the layer."""
        valid = pc.is_valid(pointer)
        known = pc.is_in(
            pc.struct_field(pointer, "zarr_group"), value_set=pa.array(list(self.groups), pa.string())
        )
        return pc.and_(valid, known.fill_null(False)).to_numpy(zero_copy_only=False)

    def select(self, cells: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
        """``cells`` as this plan returns them: the unmeasured ones left out under ``"drop"``."""
        if self.on_unmeasured != "drop":
            return cells
        return cells.filter(pa.array(self.measured(cells.column(self.feature_space))))

    def uns(self) -> dict[str, Any]:
        """What ``adata.uns["lancell"]`` records about this plan."""
        return {
            "feature_space": self.feature_space,
            "layer": self.layer or "",
            "join": self.join,
            "on_unmeasured": self.on_unmeasured,
            "unmeasured_datasets": sorted(self.unmeasured),
        }


@dataclass
class PlannedCells:
    """A query's cells as its readers return them (unmeasured-cell policy applied) and their plan."""

    cells: pa.Table
    plan: ReconstructionPlan


def dataset_group_attrs(atlas: RaggedAtlas, zarr_group: str, dataset_uid: str) -> dict[str, Any]:
    """The attributes of a dataset's zarr group: the one place a read path looks them up.

    Raises
    ------
    GroupNotFoundError
        The dataset record names a group that is absent from the store, or one whose attributes say another
        atlas wrote it (a foreign group at that path is never read as this dataset's data).
    """
    attrs = atlas._group_attrs(zarr_group)
    if attrs is None:
        raise GroupNotFoundError(
            f"dataset {dataset_uid!r}: zarr group {zarr_group!r} is missing from the store "
            f"{describe_store(atlas.store)} (atlas.validate() lists every such problem)"
        )
    owner = attrs.get(ATLAS_ID_ATTR)
    if owner is not None and atlas.atlas_id is not None and owner != atlas.atlas_id:
        raise GroupNotFoundError(
            f"dataset {dataset_uid!r}: zarr group {zarr_group!r} in the store {describe_store(atlas.store)} "
            f"belongs to another atlas ({ATLAS_ID_ATTR} {owner!r}, this atlas is {atlas.atlas_id!r})"
        )
    return attrs


def resolve_features(
    atlas: RaggedAtlas, feature_space: str, names_or_uids: Sequence[str], *, case_sensitive: bool = True
) -> np.ndarray:
    """Global indices of ``names_or_uids`` (registry uids, or symbols where not a uid), in the order given.

    A symbol shared by several registry features yields all of them; repeats are kept once. With
    ``case_sensitive=False`` a name matches every feature whose uid or symbol equals it ignoring case
    (``"sox17"`` is human ``SOX17`` and mouse ``Sox17`` in a two-organism registry).

    Raises
    ------
    QueryError
        Names that are neither a uid nor a symbol of the registry.
    """
    view = registry_view(atlas, feature_space)
    folded: dict[str, list[int]] = {}
    if not case_sensitive:
        for name, index in zip(view.by_uid.index, view.by_uid.to_numpy(), strict=True):
            folded.setdefault(name.casefold(), []).append(int(index))
        for symbol, indices in view.by_symbol.items():
            folded.setdefault(symbol.casefold(), []).extend(indices)
    indices, unknown = [], []
    for name in names_or_uids:
        if not case_sensitive and name.casefold() in folded:
            indices.extend(sorted(set(folded[name.casefold()])))
        elif case_sensitive and name in view.by_uid.index:
            indices.append(int(view.by_uid[name]))
        elif case_sensitive and name in view.by_symbol:
            indices.extend(view.by_symbol[name])
        else:
            unknown.append(name)
    if unknown:
        raise QueryError(f"{len(unknown)} features are not in the {feature_space!r} registry: {unknown[:10]}")
    return np.asarray(list(dict.fromkeys(indices)), dtype=np.int64)


def registry_columns(atlas: RaggedAtlas, feature_space: str) -> np.ndarray:
    """Global index of every numbered feature of the registry, in order (assigned contiguously from 0)."""
    return registry_view(atlas, feature_space).frame.index.to_numpy(dtype=np.int64)


def _describe_groups(
    atlas: RaggedAtlas, names: list[str], layer: str | None
) -> tuple[dict[str, PlannedGroup], str | None]:
    """The groups among ``names`` that store ``layer`` (inferred when None and unambiguous)."""
    datasets = atlas._pinned(
        "dataset_groups",
        lambda: read_columns(atlas._tables.datasets, ["uid", "zarr_group", "layout_uid"]).to_pylist(),
    )
    by_group = {d["zarr_group"]: d for d in datasets}
    layers_of = {
        name: dataset_group_attrs(atlas, name, by_group[name]["uid"]).get("layers", {})
        for name in names
        if name in by_group  # no record: an attachment whose commit never happened, unmeasured
    }
    if layer is None:
        present = {lay for layers in layers_of.values() for lay in layers}
        if len(present) > 1:
            per_dataset = {by_group[n]["uid"]: sorted(layers) for n, layers in layers_of.items()}
            raise QueryError(
                f"the selected datasets store different layers {per_dataset}; choose one with .layers()"
            )
        layer = present.pop() if present else None
    kept = [name for name in layers_of if layer in layers_of[name]]
    layouts = read_global_indices(atlas, [by_group[name]["layout_uid"] for name in kept])
    groups = {}
    for name in kept:
        record = by_group[name]
        dtype = np.dtype(layers_of[name][layer])
        groups[name] = PlannedGroup(name, record["uid"], layouts[record["layout_uid"]], dtype)
    return groups, layer


def _join_columns(groups: list[PlannedGroup], join: Join) -> np.ndarray:
    if not groups:
        return np.zeros(0, dtype=np.int64)
    if join == "union":
        return np.unique(np.concatenate([g.global_index for g in groups]))
    common = groups[0].global_index
    for g in groups[1:]:
        common = np.intersect1d(common, g.global_index)
    return np.unique(common)


def _unmeasured(
    cells: pa.Table, feature_space: str, layer: str | None, groups: dict[str, PlannedGroup]
) -> dict[str, tuple[int, str]]:
    """``dataset uid -> (unmeasured cells, why)`` among ``cells``."""
    pointer = cells.column(feature_space)
    valid = pc.is_valid(pointer).to_numpy(zero_copy_only=False)
    names = pc.struct_field(pointer, "zarr_group")
    in_plan = pc.is_in(names, value_set=pa.array(list(groups), pa.string())).fill_null(False)
    measured = valid & in_plan.to_numpy(zero_copy_only=False)
    if measured.all():
        return {}
    uids = cells.column("dataset_uid").to_numpy(zero_copy_only=False)
    wanted = f"layer {layer!r}" if layer is not None else "any layer"
    out = {}
    for uid in sorted({str(u) for u in uids[~measured]}):
        mine = (uids == uid) & ~measured
        kinds = {
            f"no {feature_space!r} data": int((mine & ~valid).sum()),
            f"their group has no {wanted}": int((mine & valid).sum()),
        }
        kinds = {why: n for why, n in kinds.items() if n}
        why = next(iter(kinds)) if len(kinds) == 1 else ", ".join(f"{n} {why}" for why, n in kinds.items())
        out[uid] = (int(mine.sum()), why)
    return out


def _check_policy(
    unmeasured: dict[str, tuple[int, str]], n_cells: int, space: str, layer: str | None, policy: str
) -> None:
    if policy not in ON_UNMEASURED:
        raise QueryError(f"on_unmeasured must be 'error', 'drop' or 'keep', got {policy!r}")
    if not unmeasured or policy != "error":
        return
    total = sum(n for n, _ in unmeasured.values())
    listed = "; ".join(f"dataset {uid!r}: {n} cells ({why})" for uid, (n, why) in unmeasured.items())
    wanted = f"layer {layer!r}" if layer is not None else "any layer"
    raise UnmeasuredDataError(
        f"{total} of the {n_cells} selected cells did not measure {wanted} of {space!r}: {listed}. "
        "Choose .on_unmeasured('drop') to leave them out, or .on_unmeasured('keep') to return them as "
        "empty rows with presence False (or select the measured datasets with .where())"
    )


def plan_reconstruction(
    atlas: RaggedAtlas,
    cells: pa.Table,
    feature_space: str,
    layer: str | None,
    join: Join = "union",
    features: np.ndarray | None = None,
    on_unmeasured: OnUnmeasured = "error",
) -> ReconstructionPlan:
    """Plan the output columns and dtypes for ``cells`` (their ``dataset_uid`` and pointer columns).

    ``features`` (global indices, in output order) restricts the columns; with ``join="intersection"`` only
    those every measured group measured are kept. Unmeasured cells follow ``on_unmeasured`` (see the module
    docstring).

    Raises
    ------
    UnmeasuredDataError
        Unmeasured cells under ``"error"``.
    GroupNotFoundError
        A selected dataset's zarr group is absent from the store.
    QueryError
        An unknown policy, or datasets storing different layers when ``layer`` is None.
    """
    space = atlas.feature_spaces[feature_space]
    pointer = cells.column(feature_space)
    names = pc.unique(pc.drop_null(pc.struct_field(pc.drop_null(pointer), "zarr_group")))
    groups, layer = _describe_groups(atlas, sorted(names.to_pylist()), layer)
    unmeasured = _unmeasured(cells, feature_space, layer, groups)
    _check_policy(unmeasured, cells.num_rows, feature_space, layer, on_unmeasured)
    if features is None:
        columns = _join_columns(list(groups.values()), join)
    elif join == "intersection":
        columns = features[np.isin(features, _join_columns(list(groups.values()), join))]
    else:  # explicitly requested features are output even where no selected dataset measured them
        columns = np.asarray(features, dtype=np.int64)
    width = max(
        [int(columns.max(initial=-1)), *(int(g.global_index.max(initial=-1)) for g in groups.values())]
    )
    position = np.full(width + 1, -1, dtype=np.int64)
    position[columns] = np.arange(columns.size)
    for g in groups.values():
        g.out_col = position[g.global_index]
    is_float = any(g.layer_dtype.kind == "f" for g in groups.values())
    dtype = np.dtype(np.float32) if is_float else np.dtype(np.int64)
    var = _var(atlas, feature_space, columns)
    presence = {g.dataset_uid: np.isin(columns, g.global_index) for g in groups.values()}
    if on_unmeasured == "keep":
        presence.update({uid: np.zeros(columns.size, bool) for uid in unmeasured if uid not in presence})
    return ReconstructionPlan(
        feature_space,
        space.kind,
        layer,
        join,
        columns,
        dtype,
        groups,
        var,
        pd.DataFrame(presence, index=var.index, dtype=bool),
        on_unmeasured,
        {uid: n for uid, (n, _) in unmeasured.items()},
    )


def _var(atlas: RaggedAtlas, feature_space: str, columns: np.ndarray) -> pd.DataFrame:
    """Registry rows of ``columns`` in output order."""
    frame = registry_view(atlas, feature_space).frame.reindex(columns)
    frame.index = pd.Index(frame.pop("uid").astype(str), name=None)
    frame["global_index"] = columns
    return frame
