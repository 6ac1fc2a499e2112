"""Per-group tables of a :class:`~lancell.dataloader.CellDataset`: which zarr group, which layers and
dtypes, and how its local feature indices map to the dataset's output columns.

They are read off the query's :class:`~lancell.query.plan.ReconstructionPlan` (the one ``to_anndata()``
executes), so the loader's output columns, measured groups and unmeasured cells are those of ``to_anndata()``.
Each group gets a lookup table ``local index -> output column`` (``-1``: dropped), and a presence row that
says which output columns its dataset measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lancell.query.plan import ReconstructionPlan

__all__ = ["GroupTable", "group_table", "output_dtype"]


@dataclass
class GroupTable:
    """What a dataset knows about each zarr group its cells live in (a few arrays per group, none per cell).

    Attributes
    ----------
    names
        Zarr group path of each group code.
    dataset_uids
        Dataset uid of each group code (``""`` for a group that is not measured).
    layers
        The requested layers, in output order (the first is ``X``).
    measured
        bool (n_groups,): the group stores at least one requested layer (otherwise its cells read as empty
        rows in every layer).
    stores
        bool (n_layers, n_groups): the group stores requested layer ``k`` (under ``on_unmeasured("keep")``
        a group may lack some; its cells then read as empty rows in those).
    dtypes
        ``dtypes[k][g]``: stored dtype of layer ``k`` in group ``g`` (``""`` when the group lacks it).
    unstored
        ``unstored[k]``: layer ``k``'s dtype where no group stores it: ``to_anndata()``'s (from how the
        atlas's other datasets store it; int64 when none does).
    luts
        int32 arrays, ``luts[g][local] = output column`` or ``-1`` when the feature is not an output column.
    keeps_all
        bool (n_groups,): no local feature of the group is dropped.
    monotonic
        bool (n_groups,): kept local features map to increasing output columns, so rows stay sorted.
    zero_fill
        bool (n_layers, n_groups): the group's stored zeros of layer ``k`` pad a pattern shared with other
        layers (:mod:`lancell.ingest.layer_blocks`); readers leave them out, as ``to_anndata()`` does.
    presence
        bool (n_groups + 1, n_features): which output features each group measured in the first layer (as
        ``varm["presence"]``); the last row (group code ``-1``, a cell without data in the feature space) is
        all False.
    """

    names: list[str]
    dataset_uids: list[str]
    layers: list[str]
    measured: np.ndarray
    stores: np.ndarray
    dtypes: list[list[str]]
    unstored: list[str]
    luts: list[np.ndarray]
    keeps_all: np.ndarray
    monotonic: np.ndarray
    presence: np.ndarray
    zero_fill: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays of this table (lookup tables and presence rows)."""
        return int(sum(lut.nbytes for lut in self.luts) + self.presence.nbytes)


def group_table(plan: ReconstructionPlan, names: Sequence[str]) -> GroupTable:
    """The :class:`GroupTable` of the zarr groups ``names`` (group code ``i`` is ``names[i]``) under ``plan``.

    A group the plan does not measure (it stores no requested layer) gets an empty lookup table and an
    all-False presence row; so does the presence row of a group lacking the first layer (``to_anndata()``'s
    ``varm["presence"]``).
    """
    n_features = plan.columns.size
    layers = list(plan.layers)
    presence = np.zeros((len(names) + 1, n_features), dtype=bool)
    stores = np.zeros((len(layers), len(names)), dtype=bool)
    zero_fill = np.zeros((len(layers), len(names)), dtype=bool)
    dtypes: list[list[str]] = [[""] * len(names) for _ in layers]
    dataset_uids, luts, keeps_all, monotonic = [], [], [], []
    for code, name in enumerate(names):
        planned = plan.groups.get(name)
        lut = np.full(0, -1, np.int32) if planned is None else planned.out_col.astype(np.int32)
        kept = lut[lut >= 0]
        for k, layer in enumerate(layers):
            if planned is not None and layer in planned.layer_dtypes:
                stores[k, code] = True
                dtypes[k][code] = planned.layer_dtypes[layer].name
                zero_fill[k, code] = layer in planned.zero_fill
        if layers and stores[0, code]:
            presence[code, kept] = True
        dataset_uids.append("" if planned is None else planned.dataset_uid)
        luts.append(np.ascontiguousarray(lut))
        keeps_all.append(bool(kept.size == lut.size))
        monotonic.append(bool(np.all(np.diff(kept) > 0)))
    return GroupTable(
        names=list(names),
        dataset_uids=dataset_uids,
        layers=layers,
        measured=np.asarray([name in plan.groups for name in names], dtype=bool),
        stores=stores,
        dtypes=dtypes,
        unstored=[plan.dtypes[layer].name for layer in layers],
        luts=luts,
        keeps_all=np.asarray(keeps_all, dtype=bool),
        monotonic=np.asarray(monotonic, dtype=bool),
        presence=presence,
        zero_fill=zero_fill,
    )


def output_dtype(table: GroupTable, layer: int = 0) -> np.dtype:
    """Layer ``layer``'s stored dtype when every group storing it stores the same one (e.g. uint32 counts),
    else the dtype that holds every stored value exactly (numpy's promotion: float64 for uint32 counts and
    float32 values, which float32 would round above 2**24); when no group stores it, the dtype
    ``to_anndata()`` gives such a layer (:func:`lancell.query.plan.plan_reconstruction`)."""
    if not table.layers:
        return np.dtype(np.float32)
    dtypes = [np.dtype(d) for d, m in zip(table.dtypes[layer], table.stores[layer], strict=True) if m]
    return np.result_type(*dtypes) if dtypes else np.dtype(table.unstored[layer])
