"""Feature spaces, persisted in the ``_feature_spaces`` table so an atlas opens with no registration calls."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from lancell.errors import FeatureSpaceError, SchemaError
from lancell.storage.groups import PointerKind
from lancell.tables.table_schemas import FEATURE_SPACES_SCHEMA

__all__ = ["DEFAULT_LAYERS", "FeatureSpace", "feature_spaces_from_table", "feature_spaces_table"]

# a layer is stored as a zarr array of that name (csr/layers/<name>): one path segment
_LAYER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_ZARR_NAMES = {"zarr.json"}  # a zarr group's own metadata object: no array can be stored under its name

DEFAULT_LAYERS: dict[PointerKind, tuple[str, ...]] = {
    "sparse": ("counts", "normalized", "log_normalized", "scaled"),
    "dense": ("values", "counts", "normalized", "log_normalized", "scaled"),
}


@dataclass(frozen=True)
class FeatureSpace:
    """A named feature space: the pointer field of the same name, its kind, allowed layers, registry."""

    name: str
    kind: PointerKind
    layers: tuple[str, ...]

    @property
    def registry_table(self) -> str:
        return f"{self.name}_registry"

    def check_layer(self, layer: str) -> None:
        """Raise :class:`FeatureSpaceError` unless ``layer`` is allowed in this feature space."""
        if layer not in self.layers:
            raise FeatureSpaceError(
                f"layer {layer!r} is not allowed in feature space {self.name!r}; allowed: {list(self.layers)}"
            )


def build_feature_spaces(
    pointers: Mapping[str, PointerKind],
    registry_names: Sequence[str],
    layers: Mapping[str, Sequence[str]] | None,
) -> dict[str, FeatureSpace]:
    """Feature spaces for a new atlas, checked against the registry schemas and layer overrides."""
    if not pointers:
        raise SchemaError("the cell schema declares no SparseZarrPointer/DenseZarrPointer field")
    unknown = sorted(set(registry_names) - set(pointers))
    if unknown:
        raise SchemaError(
            f"registry_schemas names feature spaces {unknown} that have no pointer field in the cell schema "
            f"(pointer fields: {sorted(pointers)})"
        )
    missing = sorted(set(pointers) - set(registry_names))
    if missing:
        raise SchemaError(f"pointer fields {missing} have no registry schema in registry_schemas")
    layers = dict(layers or {})
    unknown = sorted(set(layers) - set(pointers))
    if unknown:
        raise SchemaError(
            f"layers names feature spaces {unknown} that have no pointer field in the cell schema (pointer "
            f"fields: {sorted(pointers)})"
        )
    spaces = {}
    for name, kind in pointers.items():
        allowed = tuple(layers.get(name, DEFAULT_LAYERS[kind]))
        if not allowed or not all(isinstance(x, str) and _LAYER_NAME.fullmatch(x) for x in allowed):
            raise SchemaError(
                f"feature space {name!r}: layers must be names of letters, digits, '_', '.' and '-' (not "
                f"starting with '.' or '-'), got {allowed!r}"
            )
        if reserved := sorted(_ZARR_NAMES.intersection(allowed)):
            raise SchemaError(
                f"feature space {name!r}: layer names {reserved} are zarr's own (a group's metadata object)"
            )
        if len(set(allowed)) < len(allowed):
            raise SchemaError(f"feature space {name!r}: layers {allowed!r} name a layer more than once")
        spaces[name] = FeatureSpace(name, kind, allowed)
    return spaces


def feature_spaces_table(spaces: Mapping[str, FeatureSpace]) -> pa.Table:
    """The rows persisted for ``spaces``."""
    return pa.Table.from_pylist(
        [
            {"name": s.name, "kind": s.kind, "layers": list(s.layers), "registry_table": s.registry_table}
            for s in spaces.values()
        ],
        schema=FEATURE_SPACES_SCHEMA,
    )


def feature_spaces_from_table(table: pa.Table) -> dict[str, FeatureSpace]:
    """Feature spaces read back from the persisted rows."""
    return {
        row["name"]: FeatureSpace(row["name"], row["kind"], tuple(row["layers"])) for row in table.to_pylist()
    }


def resolve_feature_space(spaces: Mapping[str, FeatureSpace], name: str) -> FeatureSpace:
    """Look ``name`` up, raising a :class:`FeatureSpaceError` that lists the known spaces."""
    if not isinstance(name, str):  # (a list here: the arguments given the other way round)
        raise FeatureSpaceError(
            f"a feature space is named by a str (one of {sorted(spaces)}), got {type(name).__name__} {name!r}"
        )
    try:
        return spaces[name]
    except KeyError:
        raise FeatureSpaceError(f"unknown feature space {name!r}; this atlas has {sorted(spaces)}") from None
