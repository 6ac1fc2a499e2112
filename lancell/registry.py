"""Feature registries and deduplicated feature layouts.

Each feature space has a registry table (one row per feature, ``uid`` stable, ``global_index`` assigned once
as max + 1 under a cross-process lock). A dataset's ordered panel of features is a *layout*, stored once in
``_feature_layouts`` under a content hash, however many datasets share it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
from lancedb.pydantic import LanceModel
from lancedb.table import Table

from lancell.errors import FeatureRegistryError
from lancell.registry_view import atlas_identity

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["layout_uid_for", "prepare_features", "read_global_indices", "registry_index"]

LAYOUTS_TABLE = "_feature_layouts"

LAYOUTS_SCHEMA = pa.schema(
    [
        pa.field("layout_uid", pa.string(), nullable=False),
        pa.field("feature_uid", pa.string(), nullable=False),
        pa.field("local_index", pa.int64(), nullable=False),
        pa.field("global_index", pa.int64(), nullable=False),
    ]
)


def prepare_features(
    feature_space: str, features: Sequence[LanceModel] | pd.DataFrame | pa.Table, schema: pa.Schema
) -> pa.Table:
    """Convert user-given features to an Arrow table of the registry schema, checking uids.

    Raises
    ------
    FeatureRegistryError
        Missing/empty/duplicate uids, columns the registry does not have, or values of the wrong type.
    """
    if isinstance(features, pa.Table):
        frame = features.to_pandas()
    elif isinstance(features, pd.DataFrame):
        frame = features.reset_index(drop="uid" in features.columns) if features.index.name else features
    else:
        rows = []
        for f in features:
            if not isinstance(f, LanceModel):
                raise FeatureRegistryError(
                    f"{feature_space}: features must be schema objects or a DataFrame, got {type(f).__name__}"
                )
            rows.append(f.model_dump())
        frame = pd.DataFrame(rows)
    if "uid" not in frame.columns:
        raise FeatureRegistryError(f"{feature_space}: features have no 'uid' column")
    unknown = sorted(set(frame.columns) - set(schema.names))
    if unknown:
        raise FeatureRegistryError(
            f"{feature_space}: columns {unknown} are not in the registry schema {schema.names}"
        )
    uids = frame["uid"]
    if uids.isna().any() or (uids.astype(str).str.len() == 0).any():
        raise FeatureRegistryError(f"{feature_space}: {int(uids.isna().sum())} features have an empty uid")
    duplicated = uids[uids.duplicated()].unique().tolist()
    if duplicated:
        raise FeatureRegistryError(f"{feature_space}: duplicate feature uids {duplicated[:5]}")
    columns = {}
    for field in schema:
        if field.name == "global_index":
            columns[field.name] = pa.nulls(len(frame), pa.int64())
        elif field.name in frame.columns:
            try:
                columns[field.name] = pa.array(frame[field.name], type=field.type, from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise FeatureRegistryError(f"{feature_space}: column {field.name!r}: {exc}") from exc
        elif field.nullable:
            columns[field.name] = pa.nulls(len(frame), field.type)
        else:
            raise FeatureRegistryError(f"{feature_space}: required column {field.name!r} is missing")
    return pa.table(columns, schema=schema.remove_metadata())


def registry_index(table: Table) -> pd.Series:
    """``uid -> global_index`` of every registered feature."""
    frame = table.to_arrow().select(["uid", "global_index"]).to_pandas()
    return pd.Series(frame["global_index"].to_numpy(), index=pd.Index(frame["uid"], name="uid"))


def assign_new_features(table: Table, prepared: pa.Table) -> int:
    """Append the rows of ``prepared`` whose uid is new, numbering them max + 1 onwards.

    The caller holds the registry lock. Returns the number of features added.
    """
    existing = registry_index(table)
    uids = prepared.column("uid").to_pylist()
    keep = np.array([u not in existing.index for u in uids], dtype=bool)
    if not keep.any():
        return 0
    new = prepared.filter(pa.array(keep))
    indices = existing.dropna()
    start = int(indices.max()) + 1 if len(indices) else 0
    position = new.schema.get_field_index("global_index")
    numbered = new.set_column(
        position, new.schema.field(position), pa.array(np.arange(start, start + new.num_rows), pa.int64())
    )
    table.add(numbered)
    return new.num_rows


def number_unindexed(table: Table) -> int:
    """Give a global index to rows added without one (e.g. by hand); the caller holds the registry lock."""
    frame = registry_index(table)
    missing = frame[frame.isna()].index.tolist()
    if not missing:
        return 0
    start = int(frame.dropna().max()) + 1 if frame.notna().any() else 0
    for offset, uid in enumerate(missing):
        table.update(where=f"uid = {sql_literal(uid)}", values={"global_index": start + offset})
    return len(missing)


def sql_literal(value: str) -> str:
    """Quote a string for a Lance SQL filter."""
    return "'" + str(value).replace("'", "''") + "'"


def layout_uid_for(feature_uids: Sequence[str]) -> str:
    """Content hash of an ordered feature panel: equal panels share one layout."""
    digest = hashlib.sha256("\x1f".join(feature_uids).encode()).hexdigest()
    return digest[:24]


def ensure_layout(
    table: Table, layout_uid: str, feature_uids: Sequence[str], global_index: np.ndarray
) -> bool:
    """Store the layout unless it exists; the caller holds the layouts lock. True if it was written."""
    if table.count_rows(f"layout_uid = {sql_literal(layout_uid)}") > 0:
        return False
    table.add(
        pa.table(
            {
                "layout_uid": pa.array([layout_uid] * len(feature_uids), pa.string()),
                "feature_uid": pa.array(list(feature_uids), pa.string()),
                "local_index": pa.array(np.arange(len(feature_uids)), pa.int64()),
                "global_index": pa.array(np.asarray(global_index, dtype=np.int64)),
            },
            schema=LAYOUTS_SCHEMA,
        )
    )
    return True


_GLOBAL_INDEX_CACHE: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_GLOBAL_INDEX_CACHE_SIZE = 256  # layouts; ~160 KB each for a 20k-gene panel


def read_global_indices(atlas: RaggedAtlas, layout_uids: Sequence[str]) -> dict[str, np.ndarray]:
    """The global index (read-only int64, by local index) of every feature of each layout, in one scan.

    A stored layout never changes (its uid is a content hash and global indices are assigned once), so
    results are kept in a per-process LRU cache keyed by the atlas's location and creation time (an atlas
    re-created at the same location gets new entries). Only layouts not cached are read.
    """
    atlas_key = atlas_identity(atlas)
    table = atlas._tables.layouts
    wanted = list(dict.fromkeys(layout_uids))
    missing = [uid for uid in wanted if (atlas_key, uid) not in _GLOBAL_INDEX_CACHE]
    if missing:
        rows = (
            table.search()
            .where(f"layout_uid IN ({', '.join(sql_literal(uid) for uid in missing)})")
            .select(["layout_uid", "local_index", "global_index"])
            .to_arrow()
            .sort_by([("layout_uid", "ascending"), ("local_index", "ascending")])
        )
        uids = rows.column("layout_uid").to_numpy(zero_copy_only=False)
        index = rows.column("global_index").to_numpy().astype(np.int64)
        starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]]) if uids.size else np.zeros(0, int)
        for start, stop in zip(starts, [*starts[1:], uids.size], strict=True):
            layout = index[start:stop].copy()
            layout.flags.writeable = False
            _GLOBAL_INDEX_CACHE[(atlas_key, str(uids[start]))] = layout
        while len(_GLOBAL_INDEX_CACHE) > _GLOBAL_INDEX_CACHE_SIZE:
            _GLOBAL_INDEX_CACHE.popitem(last=False)
    found = {}
    for uid in wanted:
        cached = _GLOBAL_INDEX_CACHE.get((atlas_key, uid))
        if cached is None:
            raise FeatureRegistryError(f"layout {uid!r} is not stored in {LAYOUTS_TABLE!r}")
        _GLOBAL_INDEX_CACHE.move_to_end((atlas_key, uid))
        found[uid] = cached
    return found
