"""Cells that measured nothing of what a query reads: which they are, why, and what the policy does.

A cell is unmeasured in a layer when it has no data in the feature space (a null pointer), when its
dataset does not store that layer, or when its group has no dataset record (an attachment that never
committed); :mod:`lancell.query.plan` applies the policy (``on_unmeasured``) to each requested layer:
``"error"`` raises :class:`~lancell.errors.UnmeasuredDataError` naming the datasets, their cell counts and
the layer; ``"drop"`` leaves the cells out; ``"keep"`` returns them as empty rows.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import LancellWarning, QueryError, UnmeasuredDataError, caller_outside_lancell
from lancell.tables.atlas_tables import read_columns

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = [
    "ON_UNMEASURED",
    "OnUnmeasured",
    "carrying",
    "check_policy",
    "measured_groups",
    "unmeasured_cells",
    "warn_all_dropped",
    "warn_none_measured",
]

OnUnmeasured = Literal["error", "drop", "keep"]
ON_UNMEASURED = ("error", "drop", "keep")


def measured_groups(core: AtlasCore, feature_space: str, layers: list[str] | None) -> list[str]:
    """The groups of ``feature_space`` that may hold cells measured in every one of ``layers``, from the
    dataset records alone (no group is read): those whose record lists them all; with ``layers`` None, or
    for a record written before layers were recorded, every group with a record (the plan judges those).
    Cells outside these groups are unmeasured under ``"drop"`` (a null pointer, or a group without a
    record, or one lacking a layer)."""
    columns = ["zarr_group", "feature_space", *(["layers"] if "layers" in core.dataset_arrow.names else [])]
    groups = []
    for row in read_columns(core.tables.datasets, columns).to_pylist():
        listed = row.get("layers") or []
        if row["feature_space"] == feature_space and (not layers or not listed or set(layers) <= set(listed)):
            groups.append(row["zarr_group"])
    return sorted(groups)


def carrying(core: AtlasCore, cells: pa.Table, feature_space: str) -> pa.ChunkedArray | pa.Array:
    """bool per cell of ``cells``: it carries ``feature_space``, a pointer into a group with a dataset record
    (a pointer into one without is an attachment that has not committed, or a deletion that stopped half-way:
    no data of the cell's yet, as a null pointer)."""
    pointer = cells.column(feature_space)
    recorded = pa.array(measured_groups(core, feature_space, None), pa.string())
    known = pc.is_in(pc.struct_field(pointer, "zarr_group"), value_set=recorded)
    return pc.and_(pc.is_valid(pointer), known.fill_null(False))


def unmeasured_cells(
    cells: pa.Table, feature_space: str, layer: str | None, stored_in: list[str]
) -> dict[str, tuple[int, str]]:
    """``dataset uid -> (unmeasured cells, why)`` among ``cells`` for ``layer``, stored by the groups
    ``stored_in``."""
    pointer = cells.column(feature_space)
    valid = pc.is_valid(pointer).to_numpy(zero_copy_only=False)
    names = pc.struct_field(pointer, "zarr_group")
    in_plan = pc.is_in(names, value_set=pa.array(stored_in, pa.string())).fill_null(False)
    measured = valid & in_plan.to_numpy(zero_copy_only=False)
    if measured.all():
        return {}
    lacking = ~measured  # (grouped in one pass: a comparison per dataset took minutes at 10k datasets)
    uids = cells.column("dataset_uid").filter(pa.array(lacking))
    if pa.types.is_dictionary(uids.type):  # (its dictionary also lists the datasets filtered out)
        uids = uids.cast(uids.type.value_type)
    uids = uids.combine_chunks().dictionary_encode()
    codes, names = uids.indices.to_numpy(zero_copy_only=False), uids.dictionary.to_pylist()
    n_lacking = np.bincount(codes, minlength=len(names))
    n_no_data = np.bincount(codes, weights=~valid[lacking], minlength=len(names)).astype(np.int64)
    # (no layer asked for: the groups of no dataset record, an attachment that never committed)
    lacks = (
        f"their group has no layer {layer!r}" if layer is not None else "their group has no dataset record"
    )
    out = {}
    for k in sorted(range(len(names)), key=lambda k: str(names[k])):
        kinds = {
            f"no {feature_space!r} data": int(n_no_data[k]),
            lacks: int(n_lacking[k] - n_no_data[k]),
        }
        kinds = {why: n for why, n in kinds.items() if n}
        why = next(iter(kinds)) if len(kinds) == 1 else ", ".join(f"{n} {why}" for why, n in kinds.items())
        out[str(names[k])] = (int(n_lacking[k]), why)
    return out


def check_policy(
    unmeasured: dict[str | None, dict[str, tuple[int, str]]], n_cells: int, space: str, policy: str
) -> None:
    """Raise under ``"error"`` when any layer (``unmeasured``: layer -> :func:`unmeasured_cells`) has any."""
    if policy not in ON_UNMEASURED:
        raise QueryError(f"on_unmeasured must be 'error', 'drop' or 'keep', got {policy!r}")
    if not any(unmeasured.values()) or policy != "error":
        return
    parts = []
    for layer, missing in unmeasured.items():
        if not missing:
            continue
        total = sum(n for n, _ in missing.values())
        listed = "; ".join(f"dataset {uid!r}: {n} cells ({why})" for uid, (n, why) in missing.items())
        wanted = f"layer {layer!r}" if layer is not None else "any layer"
        parts.append(
            f"{total} of the {n_cells} selected cells did not measure {wanted} of {space!r}: {listed}"
        )
    raise UnmeasuredDataError(
        ". ".join(parts) + ". "
        "Choose .on_unmeasured('drop') to leave them out, or .on_unmeasured('keep') to return them as "
        "empty rows with presence False (or select the measured datasets with .where())"
    )


def warn_all_dropped(
    unmeasured: dict[str | None, dict[str, tuple[int, str]]], n_cells: int, space: str
) -> None:
    """Warn that ``"drop"`` left out every one of the ``n_cells`` selected cells (``unmeasured``: layer ->
    :func:`unmeasured_cells`): an empty answer that is mostly a mistyped layer name or a wrong selection."""
    said = []
    for layer, missing in unmeasured.items():
        wanted = f"layer {layer!r}" if layer is not None else "any layer"
        listed = "; ".join(
            f"dataset {uid!r}: {n} cells ({why})" for uid, (n, why) in list(missing.items())[:5]
        )
        more = f"; and {len(missing) - 5} more datasets" if len(missing) > 5 else ""
        if missing:
            said.append(f"{wanted}: {listed}{more}")
    warnings.warn(
        f"on_unmeasured('drop') left out all {n_cells} selected cells, none measured in every requested "
        f"layer of {space!r} ({'. '.join(said)}); list_datasets() shows each dataset's layers",
        LancellWarning,
        stacklevel=caller_outside_lancell(),
    )


def warn_none_measured(core: AtlasCore, cells: pa.Table, space: str, layers: list[str] | None) -> None:
    """:func:`warn_all_dropped` for ``cells`` (at least ``dataset_uid`` and the ``space`` pointers of the
    matching rows), of which ``"drop"`` returned none, judged from the dataset records as the filter that
    left them out (:func:`measured_groups`); nothing where no row matched."""
    if cells.num_rows:
        per_layer = {
            layer: unmeasured_cells(cells, space, layer, measured_groups(core, space, layer and [layer]))
            for layer in layers or [None]
        }
        warn_all_dropped(per_layer, cells.num_rows, space)
