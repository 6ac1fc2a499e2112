"""What a query reconstructs of its cells: one feature space, its layers, which features and how the datasets'
features join, and what becomes of cells that did not measure a layer.

:class:`~lancell.query.atlas_query.AtlasQuery` holds one :class:`FeatureSelection` next to its
:class:`~lancell.query.cell_selection.CellSelection` (which rows). Both are replaced, never changed in
place, so every builder call returns a new query and leaves the one it was called on as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from lancell.errors import LancellWarning, QueryError, caller_outside_lancell
from lancell.query.feature_names import registry_columns, resolve_features
from lancell.query.plan import Join, PlannedCells, ReconstructionPlan, plan_reconstruction
from lancell.query.unmeasured import OnUnmeasured, measured_groups
from lancell.tables.registry import sql_literal
from lancell.tables.registry_view import registry_view
from lancell.tables.stored_fields import pointer_fields_from_arrow

if TYPE_CHECKING:
    import pyarrow as pa

    from lancell.core import AtlasCore

__all__ = ["FeatureSelection"]


@dataclass(frozen=True)
class FeatureSelection:
    """The feature space, layers and features a query reconstructs, and its unmeasured-cell policy.

    Attributes
    ----------
    feature_space
        The feature space reconstructed; None: not chosen (the first pointer field of the cell schema).
    chosen_by
        The builder call that chose ``feature_space`` (named when a later call asks for another space).
    layers
        The layers read; None: the one layer the selected datasets store.
    join
        ``"union"`` or ``"intersection"``; None: not chosen (``"union"``).
    features
        Feature names or uids (``features()``), ``"registry"`` for every registry feature
        (``all_features()``), or None: the features the selected datasets measured.
    case_sensitive
        How ``features`` names are matched.
    on_unmeasured
        What readers do with selected cells that did not measure a reconstructed layer.
    """

    feature_space: str | None = None
    chosen_by: str | None = None
    layers: list[str] | None = None
    join: Join | None = None
    features: list[str] | Literal["registry"] | None = None
    case_sensitive: bool = True
    on_unmeasured: OnUnmeasured = "error"

    def __post_init__(self) -> None:
        """Refuse every registry feature (column ``j`` is global index ``j``) joined by intersection, which
        would drop the columns some selected dataset did not measure and shift the rest."""
        if self.features == "registry" and self.join == "intersection":
            raise QueryError(
                "all_features() keeps every registry feature (column j is global index j), "
                "feature_join('intersection') would keep only those every selected dataset measured: choose "
                "one (features([...]) with feature_join('intersection') keeps the named ones all measured)"
            )

    def choose(self, feature_space: str, by: str, **changes: object) -> FeatureSelection:
        """A copy reconstructing ``feature_space`` (named by the builder call ``by``), with ``changes``.

        Raises
        ------
        QueryError
            An earlier call chose another feature space: its layers or features would be read in the wrong
            space (a query reconstructs one; ``to_mudata()`` reads several). Or an earlier call chose other
            ``layers`` or ``features``, which this one would silently replace.
        """
        if self.feature_space not in (None, feature_space):
            raise QueryError(
                f"{by} names feature space {feature_space!r} but {self.chosen_by} chose "
                f"{self.feature_space!r}: a query reconstructs one feature space; start another query "
                "from atlas.query() for it (to_mudata() reads several)"
            )
        for name in ("layers", "features"):
            chosen = getattr(self, name)
            if name in changes and chosen is not None and chosen != changes[name]:
                raise QueryError(
                    f"{by} would replace the {name} {chosen!r} an earlier call chose with {changes[name]!r}: "
                    f"give every one of them in one call, or start from a query without {name}"
                )
        return replace(self, feature_space=feature_space, chosen_by=self.chosen_by or by, **changes)

    def space(self, core: AtlasCore) -> str:
        """The feature space reconstructed: :attr:`feature_space`, else the cell schema's first pointer."""
        return self.feature_space or next(iter(pointer_fields_from_arrow(core.cell_arrow)))

    def other_space(self) -> FeatureSelection:
        """This selection for another feature space (``to_mudata()``): its join and policy, none of the
        layers or features chosen for :attr:`feature_space`."""
        return replace(self, feature_space=None, chosen_by=None, layers=None, features=None)

    def check_reading(
        self, feature_space: str, layers: list[str], features: Sequence[str] | str | None
    ) -> None:
        """Check the loader's ``feature_space``, ``layers`` and ``features`` against this selection (see
        :meth:`~lancell.query.atlas_query.AtlasQuery.reading`).

        Raises
        ------
        QueryError
            A feature space, layer, join or feature list that contradicts what the query already chose, or
            ``features`` that is neither a join, ``"registry"`` nor a list of names.
        """
        for what, chosen, given in (
            ("feature space", self.feature_space, feature_space),
            ("layer", _one_or_list(self.layers), _one_or_list(layers)),
        ):
            if chosen is not None and chosen != given:
                raise QueryError(f"the query reads {what} {chosen!r}, the loader was asked for {given!r}")
        if features is None:
            return
        if isinstance(features, str) and features in ("union", "intersection"):  # (not an array's ==)
            if self.join not in (None, features):
                raise QueryError(f"the query joins by {self.join!r}, the loader was asked for {features!r}")
            return
        if isinstance(features, str) and features != "registry":
            raise QueryError(
                f"features must be 'union', 'intersection', 'registry' or a list of names, got {features!r}"
            )
        wanted = features if isinstance(features, str) else list(features)  # "registry" or the names
        if self.features is not None and self.features != wanted:
            raise QueryError(
                f"the query selects features {self.features!r}, the loader was asked for {features!r}"
            )

    def measured_filter(self, core: AtlasCore) -> str:
        """SQL keeping the cells that may be measured in every reconstructed layer (:func:`measured_groups`),
        as a filter: under ``"drop"``, a ``limit()`` then counts the cells returned."""
        space = self.space(core)
        groups = measured_groups(core, space, self.layers)
        if not groups:
            return "FALSE"
        return f"`{space}`.zarr_group IN ({', '.join(sql_literal(group) for group in groups)})"

    def plan(self, core: AtlasCore, cells: pa.Table, feature_space: str) -> PlannedCells:
        """The read plan of ``cells`` in ``feature_space`` (see
        :func:`~lancell.query.plan.plan_reconstruction`) and the cells it keeps.

        Raises
        ------
        QueryError
            A feature name not in the registry (:func:`~lancell.query.feature_names.resolve_features`).
        UnmeasuredDataError
            Unmeasured cells under the policy ``"error"``.
        """
        if self.features is None:
            features = None
        elif self.features == "registry":
            features = registry_columns(core, feature_space)
        else:
            features = resolve_features(
                core, feature_space, self.features, case_sensitive=self.case_sensitive
            )
        join = self.join or "union"
        plan = plan_reconstruction(
            core, cells, feature_space, self.layers, join, features, self.on_unmeasured
        )
        if isinstance(self.features, list) and plan.groups:  # named (all_features() wants every column)
            _warn_unread(core, feature_space, features, plan)
        if join == "intersection" and features is None and len(plan.groups) > 1 and not plan.columns.size:
            warnings.warn(
                f"the selected datasets' {feature_space!r} panels have no feature in common: the "
                f"intersection of {len(plan.groups)} datasets has no columns (feature_join('union') reads "
                "them)",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )
        return PlannedCells(plan.select(cells), plan)


def _warn_unread(core: AtlasCore, feature_space: str, named: np.ndarray, plan: ReconstructionPlan) -> None:
    """Warn about features named in ``features()`` that the selected datasets leave unread: under a union,
    measured by none (columns of zeros, presence False); under an intersection, left out (not measured by
    every one)."""
    if plan.join == "union":
        measured = np.concatenate([g.global_index for g in plan.groups.values()])
        unread, what = (
            named[~np.isin(named, measured)],
            "are measured by none of the selected datasets: their ",
        )
        what += "columns are zeros with presence False"
    else:
        unread = named[~np.isin(named, plan.columns)]
        what = "are left out: not every selected dataset measured them (feature_join('intersection'))"
    if unread.size:
        uids = registry_view(core, feature_space).frame.reindex(np.unique(unread))["uid"].astype(str).tolist()
        more = " ..." if len(uids) > 10 else ""
        warnings.warn(
            f"features {uids[:10]}{more} {what}", LancellWarning, stacklevel=caller_outside_lancell()
        )


def _one_or_list(layers: list[str] | None) -> str | list[str] | None:
    """A layer selection as shown in messages: one name, or the list of several."""
    return layers[0] if layers is not None and len(layers) == 1 else layers
