"""What each stored layer of a dataset holds: its dtype and the entries a read gives back.

Every layer of a sparse dataset is stored on the group's shared pattern (``nnz`` values). A layer the group
lists in ``zero_fill`` stores zeros where it had no entry, which readers leave out, so its own entries are its
nonzero stored values (docs/architecture.md, "Several layers").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lancell.core import AtlasCore
    from lancell.tables.schema import DatasetRecord

__all__ = ["layer_entries", "recorded_layers"]


def recorded_layers(listed: Sequence[str] | None, group_attrs: Mapping[str, Any]) -> list[str]:
    """A dataset's layers: those its record lists, or, for a record from before layers were recorded (none
    listed), those its zarr group's attributes ``group_attrs`` store."""
    return list(listed) if listed else list(group_attrs.get("layers", {}))


def layer_entries(core: AtlasCore, record: DatasetRecord) -> dict[str, dict[str, object]]:
    """``{layer: {"dtype": stored dtype, "nnz": entries it reads back}}`` for the layers ``record`` lists
    (its group's, for a record from before several layers): a zero-filled layer's nonzero values counted a
    shard's worth at a time."""
    attrs = core.group_attrs(record.zarr_group, listed=record.layers) or {}  # (the committed layers' nodes)
    stored, padded = attrs.get("layers", {}), set(attrs.get("zero_fill", ()))
    out: dict[str, dict[str, object]] = {}
    for name in recorded_layers(record.layers, attrs):
        nnz = record.nnz
        if name in padded:
            values = core.node(f"{record.zarr_group}/csr/layers/{name}")
            step = (values.shards or values.chunks)[0]
            nnz = sum(int(np.count_nonzero(values[i : i + step])) for i in range(0, values.shape[0], step))
        out[name] = {"dtype": stored.get(name, ""), "nnz": nnz}
    return out
