"""The read plan of a query: which output features in which order, which zarr groups measured what is asked,
how each group's local features map to output columns, and what happens to the cells that measured nothing.

Every reader of a query (``to_anndata``, ``to_batches``, ``to_mudata`` and the training loader) executes the
one :class:`ReconstructionPlan` that :func:`plan_reconstruction` builds, so they return the same columns and
apply the same unmeasured-cell policy:

- a cell is *unmeasured* in a layer when it has no data in the feature space (a null pointer), when its
  dataset does not store that layer (neither its zarr group nor its dataset record lists it: a layer added
  after a snapshot is not in that snapshot), or when its group has no dataset record (an attachment that
  never committed); several layers are requested together (``layers(space, ["counts", "log_normalized"])``)
  and the policy applies per layer;
- ``"error"`` (default): :class:`~lancell.errors.UnmeasuredDataError` names the datasets, their cell counts
  and the layer;
- ``"drop"``: cells unmeasured in any requested layer are not returned;
- ``"keep"``: they are returned, as empty rows in each layer they lack (presence False for every feature
  in ``X``'s layer; ``uns["lancell"]["layer_datasets"]`` lists the datasets measuring each layer).

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

from lancell.errors import GroupNotFoundError, QueryError
from lancell.layer_entries import recorded_layers
from lancell.query.unmeasured import OnUnmeasured, check_policy, unmeasured_cells, warn_all_dropped
from lancell.storage.groups import ATLAS_ID_ATTR, other_atlas
from lancell.storage.stores import describe_store
from lancell.tables.atlas_tables import read_columns
from lancell.tables.layout_numbering import check_layouts_numbered
from lancell.tables.registry import read_global_indices
from lancell.tables.registry_view import registry_view

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = [
    "Join",
    "OnUnmeasured",
    "PlannedCells",
    "PlannedGroup",
    "ReconstructionPlan",
    "dataset_group_attrs",
    "plan_reconstruction",
]

Join = Literal["union", "intersection"]


@dataclass
class PlannedGroup:
    """One measured zarr group: its dataset, its local -> output column map and its stored dtypes.

    ``layer_dtypes`` holds the requested layers the group stores (all of them unless the policy is
    ``"keep"``); ``zero_fill`` the layers whose stored zeros are padding of the
    shared pattern (:mod:`lancell.ingest.layer_blocks`), left out by readers.
    """

    zarr_group: str
    dataset_uid: str
    cells_of: str  # the dataset whose cells the group measures: its own, or the one a modality attaches to
    global_index: np.ndarray
    layer_dtypes: dict[str, np.dtype]
    zero_fill: frozenset[str] = frozenset()
    out_col: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class ReconstructionPlan:
    """Everything a query's reconstruction needs that does not depend on which cells a batch holds.

    Computed once per query (registry and layouts read once), then applied to any batch of its cells.

    Attributes
    ----------
    columns
        int64: registry global index of each output column, in output order.
    layers, layer
        The requested layers, in output order (the first is ``X``), and the first.
    dtypes, dtype
        Value dtype of each reconstructed layer (int64 for integer layers; float32 when the groups store
        floats in it, float64 when some store floats and others integers), and the first layer's.
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
    layers: list[str]
    join: Join
    columns: np.ndarray
    dtypes: dict[str, np.dtype]
    groups: dict[str, PlannedGroup]
    var: pd.DataFrame
    presence: pd.DataFrame
    on_unmeasured: OnUnmeasured = "error"
    unmeasured: dict[str, int] = field(default_factory=dict)

    @property
    def layer(self) -> str | None:
        """The first requested layer (``X``), None when no selected dataset stores any layer."""
        return self.layers[0] if self.layers else None

    @property
    def dtype(self) -> np.dtype:
        """The first layer's output dtype."""
        return self.dtypes[self.layers[0]] if self.layers else np.dtype(np.float32)

    def groups_with(self, layer: str) -> dict[str, PlannedGroup]:
        """The planned groups that store ``layer``."""
        return {name: g for name, g in self.groups.items() if layer in g.layer_dtypes}

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
            "layers": list(self.layers),
            "layer_datasets": {
                layer: sorted(g.dataset_uid for g in self.groups_with(layer).values())
                for layer in self.layers
            },
            "join": self.join,
            "on_unmeasured": self.on_unmeasured,
            "unmeasured_datasets": sorted(self.unmeasured),
        }


@dataclass
class PlannedCells:
    """A query's cells as its readers return them (unmeasured-cell policy applied) and their plan."""

    cells: pa.Table
    plan: ReconstructionPlan


def dataset_group_attrs(
    core: AtlasCore, zarr_group: str, dataset_uid: str, listed: Sequence[str] = ()
) -> dict[str, Any]:
    """The attributes of a dataset's zarr group: the one place a read path looks them up.

    ``listed``: the layers the dataset's record lists; attributes (and the group's arrays) opened while it
    listed others are opened again (:meth:`~lancell.core.AtlasCore.group_attrs`).

    Raises
    ------
    GroupNotFoundError
        The dataset record names a group that is absent from the store, or one whose attributes say another
        atlas wrote it (a foreign group at that path is never read as this dataset's data).
    """
    attrs = core.group_attrs(zarr_group, listed=listed)
    if attrs is None:
        snapshot = core.snapshot_version
        hint = (  # (a snapshot deleted since this checkout: vacuum reclaims what only it referenced)
            "atlas.validate() lists every such problem"
            if snapshot is None
            else f"this handle reads snapshot {snapshot}: if it was deleted, vacuum() reclaimed its groups"
        )
        raise GroupNotFoundError(
            f"dataset {dataset_uid!r}: zarr group {zarr_group!r} is missing from the store "
            f"{describe_store(core.store)} ({hint})"
        )
    if (owner := other_atlas(attrs, core.atlas_id)) is not None:
        raise GroupNotFoundError(
            f"dataset {dataset_uid!r}: zarr group {zarr_group!r} in the store {describe_store(core.store)} "
            f"belongs to another atlas ({ATLAS_ID_ATTR} {owner!r}, this atlas is {core.atlas_id!r})"
        )
    return attrs


def _group_records(core: AtlasCore) -> dict[str, dict[str, Any]]:
    """``zarr group -> its dataset record`` (uid, zarr_group, layout_uid, feature_space and, where the
    dataset table has them, ``layers``, the layers it lists, and ``cells_of``)."""
    columns = ["uid", "zarr_group", "layout_uid", "feature_space"]
    columns += [name for name in ("layers", "cells_of") if name in core.dataset_arrow.names]
    rows = core.pinned("dataset_groups", lambda: read_columns(core.tables.datasets, columns).to_pylist())
    return {row["zarr_group"]: row for row in rows}


def _describe_groups(
    core: AtlasCore, names: list[str], layers: list[str] | None, on_unmeasured: str
) -> tuple[dict[str, dict[str, np.dtype]], dict[str, PlannedGroup], list[str]]:
    """``(requested layers each group among names stores, the planned groups, the requested layers)``;
    ``layers`` None: the one layer the groups store (inferred when unambiguous)."""
    by_group = _group_records(core)
    layers_of, zero_fill = {}, {}
    for name in names:
        if name not in by_group:  # no record: an attachment whose commit never happened, unmeasured
            continue
        attrs = dataset_group_attrs(core, name, by_group[name]["uid"], by_group[name].get("layers") or ())
        listed = recorded_layers(by_group[name].get("layers"), attrs)
        layers_of[name] = {
            lay: np.dtype(attrs["layers"][lay]) for lay in listed if lay in attrs.get("layers", {})
        }
        zero_fill[name] = frozenset(attrs.get("zero_fill", ()))
    if layers is None:
        present = {lay for stored in layers_of.values() for lay in stored}
        if len(present) > 1:
            per_dataset = {by_group[n]["uid"]: sorted(stored) for n, stored in layers_of.items()}
            what = "dataset stores several" if len(per_dataset) == 1 else "datasets store different"
            raise QueryError(f"the selected {what} layers {per_dataset}; choose with .layers()")
        layers = [present.pop()] if present else []
    need = any if on_unmeasured == "keep" else all
    kept = [name for name, stored in layers_of.items() if layers and need(lay in stored for lay in layers)]
    check_layouts_numbered(core, list(by_group.values()), kept)
    layouts = read_global_indices(core, [by_group[name]["layout_uid"] for name in kept])
    groups = {}
    for name in kept:
        record = by_group[name]
        dtypes = {lay: layers_of[name][lay] for lay in layers if lay in layers_of[name]}
        groups[name] = PlannedGroup(
            name,
            record["uid"],
            record.get("cells_of") or record["uid"],
            layouts[record["layout_uid"]],
            dtypes,
            zero_fill[name] & set(dtypes),
        )
    return layers_of, groups, layers


def _stored_elsewhere(core: AtlasCore, feature_space: str, layer: str) -> list[np.dtype]:
    """The dtype in which the atlas's first other dataset of ``feature_space`` storing ``layer`` stores it
    (none: an empty list): what a selection none of whose groups store it reads it as (a float layer read as
    int64 where no selected cell had it). Groups are read until one stores it; one that is missing or
    another atlas's is passed over (an unrelated dataset's damage is not this answer's)."""
    for name, row in _group_records(core).items():
        if row["feature_space"] == feature_space and layer in (row.get("layers") or [layer]):
            attrs = core.group_attrs(name, listed=row.get("layers") or ()) or {}
            foreign = other_atlas(attrs, core.atlas_id) is not None
            dtype = None if foreign else attrs.get("layers", {}).get(layer)
            if dtype is not None:
                return [np.dtype(dtype)]
    return []


def _join_columns(groups: list[PlannedGroup], join: Join) -> np.ndarray:
    if not groups:
        return np.zeros(0, dtype=np.int64)
    if join == "union":
        return np.unique(np.concatenate([g.global_index for g in groups]))
    common = groups[0].global_index
    for g in groups[1:]:
        common = np.intersect1d(common, g.global_index)
    return np.unique(common)


def plan_reconstruction(
    core: AtlasCore,
    cells: pa.Table,
    feature_space: str,
    layers: str | Sequence[str] | None,
    join: Join = "union",
    features: np.ndarray | None = None,
    on_unmeasured: OnUnmeasured = "error",
) -> ReconstructionPlan:
    """Plan the output columns and dtypes for ``cells`` (their ``dataset_uid`` and pointer columns).

    ``layers``: one layer name or several (the first is ``X``), None: the one layer the selected datasets
    store.

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
    space = core.feature_spaces[feature_space]
    pointer = cells.column(feature_space)
    names = pc.unique(pc.drop_null(pc.struct_field(pc.drop_null(pointer), "zarr_group")))
    wanted = [layers] if isinstance(layers, str) else None if layers is None else list(layers)
    layers_of, groups, wanted = _describe_groups(core, sorted(names.to_pylist()), wanted, on_unmeasured)
    per_layer = {
        layer: unmeasured_cells(
            cells, feature_space, layer, [n for n, stored in layers_of.items() if layer in stored]
        )
        for layer in wanted or [None]
    }
    check_policy(per_layer, cells.num_rows, feature_space, on_unmeasured)
    if on_unmeasured == "drop" and cells.num_rows and not groups:  # (a group's cells are kept)
        warn_all_dropped(per_layer, cells.num_rows, feature_space)
    unmeasured: dict[str, int] = {}
    for missing in per_layer.values():
        for uid, (n, _) in missing.items():
            unmeasured[uid] = max(n, unmeasured.get(uid, 0))
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
    dtypes = {}
    for layer in wanted:
        stored = [g.layer_dtypes[layer] for g in groups.values() if layer in g.layer_dtypes]
        stored = stored or _stored_elsewhere(core, feature_space, layer)  # (not int64 for a float layer)
        # integers as int64; floats in the dtype that holds every stored value exactly (numpy's promotion:
        # float32 alone, float64 with uint32 counts of other datasets, which float32 would round above 2**24)
        is_float = any(dtype.kind == "f" for dtype in stored)
        dtypes[layer] = np.result_type(*stored) if is_float else np.dtype(np.int64)
    var = _var(core, feature_space, columns)
    first = wanted[0] if wanted else None
    presence: dict[str, np.ndarray] = {}  # keyed like obs["dataset_uid"]: by the dataset the cells belong to
    for g in groups.values():
        if first in g.layer_dtypes:  # several groups of one dataset's cells: a feature all of them measured
            measured = np.isin(columns, g.global_index)
            presence[g.cells_of] = presence[g.cells_of] & measured if g.cells_of in presence else measured
    if on_unmeasured == "keep":  # presence is per dataset: one with any cell lacking X's layer is marked
        # unmeasured throughout (an attached modality may cover part of its cells), never the other way round
        presence.update({uid: np.zeros(columns.size, bool) for uid in per_layer[first]})
    return ReconstructionPlan(
        feature_space,
        space.kind,
        wanted,
        join,
        columns,
        dtypes,
        groups,
        var,
        pd.DataFrame(presence, index=var.index, dtype=bool),
        on_unmeasured,
        unmeasured,
    )


def _var(core: AtlasCore, feature_space: str, columns: np.ndarray) -> pd.DataFrame:
    """Registry rows of ``columns`` in output order; text columns as categoricals, as ``obs``'s (a column of
    Python strings and None that holds no string is one ``write_h5ad`` refuses)."""
    frame = registry_view(core, feature_space).frame.reindex(columns)
    frame.index = pd.Index(frame.pop("uid").astype(str), name=None)
    for name in frame.select_dtypes(include="object").columns:
        frame[name] = pd.Categorical(frame[name])
    frame["global_index"] = columns
    return frame
