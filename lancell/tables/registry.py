"""Feature registries and deduplicated feature layouts.

Each feature space has a registry table (one row per feature, ``uid`` stable, ``global_index`` assigned once
as max + 1 under a cross-process lock). A dataset's ordered panel of features is a *layout*, stored once in
``_feature_layouts`` under a content hash, however many datasets share it.

Registering a uid again with the same attributes changes nothing; with different attributes (a mouse ``C3``
given where a human ``C3`` is registered) it is a conflict, which :func:`register_prepared` reports, keeps or
writes as the caller chose (``on_conflict``); a ``global_index`` never changes.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import (
    ArgumentError,
    FeatureConflictError,
    FeatureConflictWarning,
    FeatureRegistryError,
    ObsConversionError,
    caller_outside_lancell,
)
from lancell.storage.bounded_cache import BoundedCache
from lancell.tables.atlas_tables import read_columns
from lancell.tables.names import names_as_text, not_utf8, with_nul
from lancell.tables.obs import as_text, nul_flags, obs_to_arrow, schema_kind
from lancell.tables.registry_view import atlas_identity
from lancell.tables.table_schemas import LAYOUTS_SCHEMA, LAYOUTS_TABLE

if TYPE_CHECKING:
    from lancedb.pydantic import LanceModel
    from lancedb.table import Table

    from lancell.core import AtlasCore

__all__ = [
    "OnConflict",
    "layout_uid_for",
    "prepare_features",
    "read_global_indices",
    "register_prepared",
    "registered_symbols",
    "registry_index",
]

OnConflict = Literal["error", "keep", "update"]
_SHOWN_CONFLICTS = 5


def prepare_features(
    feature_space: str, features: Sequence[LanceModel] | pd.DataFrame | pa.Table, schema: pa.Schema
) -> tuple[pa.Table, list[str]]:
    """Convert user-given features to an Arrow table of the registry schema, checking uids; return it and
    the names of the attribute columns the caller gave (not ``uid``, not ``global_index``).

    Raises
    ------
    FeatureRegistryError
        Missing/empty/duplicate uids or ones with white space at either end, columns the registry does not
        have, values of the wrong type, or ``global_index`` values (the atlas assigns them).
    """
    if isinstance(features, pa.Table):
        frame = features.to_pandas()
    elif isinstance(features, pd.DataFrame):
        frame = features.reset_index(drop="uid" in features.columns) if features.index.name else features
    elif isinstance(features, (str, bytes)) or not isinstance(features, Iterable):
        raise ArgumentError(
            f"{feature_space}: features must be a DataFrame, an Arrow table or a list of schema objects, got "
            f"{type(features).__name__}"
        )
    else:
        from lancedb.pydantic import LanceModel  # given schema objects, the caller has imported lancedb

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
    if "global_index" in frame.columns and frame["global_index"].notna().any():
        raise FeatureRegistryError(
            f"{feature_space}: features carry global_index values; the atlas assigns them (once, never "
            "changed), so given ones would be ignored: drop the column"
        )
    uids = frame["uid"]
    text = names_as_text(uids, f"{feature_space}: feature uids", FeatureRegistryError)  # 1 and "1": one uid
    empty = uids.isna() | (text.str.len() == 0)
    if empty.any():
        raise FeatureRegistryError(f"{feature_space}: {int(empty.sum())} features have an empty uid")
    nul = with_nul(text)
    if nul.size:
        raise FeatureRegistryError(
            f"{feature_space}: {nul.size} feature uids hold a NUL character, e.g. {text.iloc[nul[0]]!r}"
        )
    unwritable = not_utf8(text)
    if unwritable.size:
        raise FeatureRegistryError(
            f"{feature_space}: {unwritable.size} feature uids hold characters UTF-8 cannot write, e.g. "
            f"{text.iloc[unwritable[0]]!r}"
        )
    padded = text[text != text.str.strip()]
    if len(padded):  # a uid is matched exactly: " CD3E" never matched CD3E (lancell query strips names)
        raise FeatureRegistryError(
            f"{feature_space}: {len(padded)} feature uids begin or end with white space, e.g. "
            f"{padded.iloc[0]!r}: strip them first (a uid is matched exactly)"
        )
    duplicated = text[text.duplicated()].unique().tolist()
    if duplicated:
        raise FeatureRegistryError(f"{feature_space}: duplicate feature uids {duplicated[:5]}")
    columns = {}
    for field in schema:
        if field.name == "global_index":
            columns[field.name] = pa.nulls(len(frame), pa.int64())
        elif field.name in frame.columns:
            try:
                if schema_kind(field.type) not in ("integer", "floating", "boolean"):
                    columns[field.name] = pa.array(frame[field.name], type=field.type, from_pandas=True)
                else:  # the obs checks: Arrow stored 1.7 as 1 in an int column, 2 as True in a bool one
                    column = frame[[field.name]].set_axis(pd.Index(frame["uid"], name="uid"))  # rows by uid
                    checked = obs_to_arrow(feature_space, column, [field])
                    columns[field.name] = checked[field.name]
            except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError) as exc:  # (text not UTF-8)
                raise FeatureRegistryError(f"{feature_space}: column {field.name!r}: {exc}") from exc
            except ObsConversionError as exc:
                raise FeatureRegistryError(f"{feature_space}: column {field.name!r}: {exc.reason}") from exc
            if schema_kind(field.type) == "text":  # (h5py cannot write it: no result holding it could be)
                nul = nul_flags(columns[field.name])
                if nul.any():
                    first = int(np.flatnonzero(nul)[0])
                    raise FeatureRegistryError(
                        f"{feature_space}: column {field.name!r}: a value holds a NUL character, at uid "
                        f"{text.iloc[first]!r} ({frame[field.name].iloc[first]!r})"
                    )
        elif field.nullable:
            columns[field.name] = pa.nulls(len(frame), field.type)
        else:
            raise FeatureRegistryError(f"{feature_space}: required column {field.name!r} is missing")
    given = [name for name in schema.names if name in frame.columns and name not in ("uid", "global_index")]
    return pa.table(columns, schema=schema.remove_metadata()), given


def register_prepared(
    table: Table,
    feature_space: str,
    prepared: pa.Table,
    given: Sequence[str],
    on_conflict: OnConflict,
    held: Callable[[], None],
) -> int:
    """Add the new features of ``prepared`` and deal with registered ones whose ``given`` columns differ.

    The caller holds the registry lock; ``held`` confirms it (a lease's check) just before each write.
    ``on_conflict``: ``"error"`` raises, ``"keep"`` keeps the registered
    values and warns, ``"update"`` writes the given values (``global_index`` stays). A registered value that
    is null (not recorded) is filled in with a given one whatever ``on_conflict`` says: that is no conflict;
    nor is a given value that is missing (null, NaN), which never overwrites a registered one.
    Returns the number of features added.

    Raises
    ------
    FeatureConflictError
        ``on_conflict="error"`` and a registered uid has another value in a given column (nothing written).
    FeatureRegistryError
        ``on_conflict`` is not one of the three choices.
    """
    if on_conflict not in ("error", "keep", "update"):
        raise FeatureRegistryError(
            f"{feature_space}: on_conflict must be 'error', 'keep' or 'update', got {on_conflict!r}"
        )
    registered, differences = _conflicts(table, prepared, given)
    # a registered value that is null was not recorded: a value given for it fills it in, not a conflict
    fills = {(uid, column) for uid, column, old, _ in differences if old is None}
    conflicts = [c for c in differences if c[2] is not None]
    if conflicts:
        listed = "; ".join(
            f"uid {uid!r} column {column!r}: registered {old!r}, given {new!r}"
            for uid, column, old, new in conflicts[:_SHOWN_CONFLICTS]
        )
        more = f" ... ({len(conflicts)} conflicts in all)" if len(conflicts) > _SHOWN_CONFLICTS else ""
        if on_conflict == "error":
            raise FeatureConflictError(
                f"{feature_space}: registered features differ from the given ones: {listed}{more}; pass "
                "on_conflict='keep' to keep the registered values or on_conflict='update' to overwrite them",
                conflicts=conflicts,
            )
        if on_conflict == "keep":
            warnings.warn(
                f"{feature_space}: kept the registered values of features that differ from the given ones: "
                f"{listed}{more}",
                FeatureConflictWarning,
                stacklevel=caller_outside_lancell(),
            )
        else:
            fills |= {(uid, column) for uid, column, *_ in conflicts}
    if fills:
        held()
        _update(table, registered, prepared, fills)
    return assign_new_features(table, prepared, held)


def _conflicts(
    table: Table, prepared: pa.Table, given: Sequence[str]
) -> tuple[pa.Table, list[tuple[str, str, object, object]]]:
    """The registered rows of ``prepared``'s uids, and ``(uid, column, registered, given)`` for every
    given column whose given value is not missing (null, NaN: not recorded) and differs."""
    if not given:
        return prepared.slice(0, 0), []
    everything = table.to_arrow()
    uids = prepared.column("uid")
    registered = everything.filter(pc.is_in(everything.column("uid"), value_set=uids))
    if registered.num_rows == 0:
        return prepared.slice(0, 0), []
    position = {uid: i for i, uid in enumerate(uids.to_pylist())}
    rows = [position[uid] for uid in registered.column("uid").to_pylist()]
    conflicts = []
    for column in given:
        old_values = registered.column(column).to_pylist()
        new_values = prepared.column(column).take(rows).to_pylist()
        registered_uids = registered.column("uid").to_pylist()
        for uid, old, new in zip(registered_uids, old_values, new_values, strict=True):
            if new is not None and new == new and old != new:  # (NaN != NaN)
                conflicts.append((uid, column, old, new))
    conflicts.sort(key=lambda c: (str(c[0]), c[1]))
    return registered, conflicts


def _update(table: Table, registered: pa.Table, prepared: pa.Table, cells: set[tuple[str, str]]) -> None:
    """Overwrite the registered values of the ``(uid, column)`` ``cells`` with the prepared ones (every other
    value and ``global_index`` kept)."""
    wanted = pa.array(sorted({uid for uid, _ in cells}), pa.string())
    old = registered.filter(pc.is_in(registered.column("uid"), value_set=wanted)).sort_by("uid")
    new = prepared.filter(pc.is_in(prepared.column("uid"), value_set=wanted)).sort_by("uid")
    uids = old.column("uid").to_pylist()
    for column in sorted({column for _, column in cells}):
        position = old.schema.get_field_index(column)
        chosen = pa.array([(uid, column) in cells for uid in uids], pa.bool_())
        values = pc.if_else(chosen, new.column(column), old.column(column))
        old = old.set_column(position, old.schema.field(position), values)
    table.merge_insert("uid").when_matched_update_all().execute(old)


def registry_index(table: Table) -> pd.Series:
    """``uid -> global_index`` of every registered feature."""
    columns = read_columns(table, ["uid", "global_index"])  # (not every registered column: 15 -> 7 ms at 30k)
    return pd.Series(
        columns.column("global_index").to_pandas().to_numpy(),
        index=pd.Index(columns.column("uid").to_pandas(), name="uid"),
    )


def _next_index(index: pd.Series) -> int:
    """The global index the next new feature gets: one above the largest given (indices are never
    reused), 0 in an empty registry."""
    numbered = index.dropna()
    return int(numbered.max()) + 1 if len(numbered) else 0


def assign_new_features(table: Table, prepared: pa.Table, held: Callable[[], None]) -> int:
    """Append the rows of ``prepared`` whose uid is new, numbering them max + 1 onwards.

    The caller holds the registry lock; ``held`` confirms it just before the write (a process that lost it,
    paused past its lease, would number features another process numbered meanwhile). Returns the number
    of features added.
    """
    existing = registry_index(table)
    uids = prepared.column("uid").to_pylist()
    keep = np.array([u not in existing.index for u in uids], dtype=bool)
    if not keep.any():
        return 0
    new = prepared.filter(pa.array(keep))
    start = _next_index(existing)
    position = new.schema.get_field_index("global_index")
    numbered = new.set_column(
        position, new.schema.field(position), pa.array(np.arange(start, start + new.num_rows), pa.int64())
    )
    held()
    table.add(numbered)
    return new.num_rows


def number_unindexed(table: Table, held: Callable[[], None]) -> int:
    """Give a global index to rows added without one (e.g. by hand); the caller holds the registry lock
    (``held`` confirms it before the writes).

    Raises
    ------
    FeatureRegistryError
        The registry holds a uid more than once (a row added by hand repeating a registered uid): nothing is
        numbered (numbering by uid would renumber the registered feature that datasets' layouts point to).
    """
    frame = registry_index(table)
    missing = frame[frame.isna()].index.tolist()
    if not missing:
        return 0
    if frame.index.has_duplicates:
        repeated = frame.index[frame.index.duplicated()].unique().tolist()
        raise FeatureRegistryError(
            f"registry {table.name!r} holds uids {repeated[:5]} more than once: remove the rows added by "
            "hand that repeat a registered uid (nothing was numbered)"
        )
    start = _next_index(frame)
    for offset, uid in enumerate(missing):
        held()  # (one commit per row: each one confirmed)
        where = f"uid = {sql_literal(uid)} AND global_index IS NULL"
        table.update(where=where, values={"global_index": start + offset})
    return len(missing)


def sql_literal(value: str) -> str:
    """Quote a string for a Lance SQL filter (an ``Enum`` member: its value, not ``Color.red``)."""
    return "'" + as_text(value).replace("'", "''") + "'"


def registered_symbols(table: Table, names: Sequence[str]) -> dict[str, str]:
    """``{name: uid}`` for the ``names`` that are a registered feature's ``gene_symbol`` (the first such
    feature's uid), empty for a registry without symbols."""
    registry = table.to_arrow()
    if "gene_symbol" not in registry.column_names:
        return {}
    symbols = registry.select(["gene_symbol", "uid"]).to_pandas().dropna().drop_duplicates("gene_symbol")
    uid_of = symbols.set_index("gene_symbol")["uid"]
    return {name: str(uid_of[name]) for name in names if name in uid_of.index}


def layout_uid_for(feature_uids: Sequence[str], global_index: np.ndarray) -> str:
    """Content hash of an ordered feature panel and the global index of each feature: equal panels of one
    feature space share one layout. (The uids alone were hashed: a panel of two feature spaces whose
    registries number its features otherwise took the first one's layout, and read one gene's values under
    another's name.)"""
    digest = hashlib.sha256("\x1f".join(feature_uids).encode())
    digest.update(b"\x1e" + np.ascontiguousarray(global_index, dtype="<i8").tobytes())
    return digest.hexdigest()[:24]


def ensure_layout(
    table: Table, layout_uid: str, feature_uids: Sequence[str], global_index: np.ndarray
) -> bool:
    """Store the layout unless it exists; the caller holds the layouts lock. True if it was written."""
    if table.count_rows(f"layout_uid = {sql_literal(layout_uid)}") > 0:
        return False
    table.add(
        pa.table(
            {
                "layout_uid": pa.repeat(pa.scalar(layout_uid, pa.string()), len(feature_uids)),
                "feature_uid": pa.array(list(feature_uids), pa.string()),
                "local_index": pa.array(np.arange(len(feature_uids)), pa.int64()),
                "global_index": pa.array(np.asarray(global_index, dtype=np.int64)),
            },
            schema=LAYOUTS_SCHEMA,
        )
    )
    return True


# layouts; ~160 KB each for a 20k-gene panel. A query may read more layouts than it holds (an atlas of a
# thousand datasets): what a call reads it returns itself, the cache only spares later calls the scan
_GLOBAL_INDICES: BoundedCache[tuple[str, str], np.ndarray] = BoundedCache(256)


def read_global_indices(core: AtlasCore, layout_uids: Sequence[str]) -> dict[str, np.ndarray]:
    """The global index (read-only int64, by local index) of every feature of each layout, in one scan.

    A stored layout never changes (its uid is a content hash and global indices are assigned once), so
    results are kept in a per-process LRU cache keyed by the atlas's location and creation time (an atlas
    re-created at the same location gets new entries). Only layouts not cached are read.
    """
    atlas_key = atlas_identity(core)
    found: dict[str, np.ndarray] = {}
    missing = []
    for uid in dict.fromkeys(layout_uids):
        cached = _GLOBAL_INDICES.get((atlas_key, uid))
        if cached is None:
            missing.append(uid)
        else:
            found[uid] = cached
    if missing:
        rows = (
            core.tables.layouts.to_lance()  # one pylance scan: a snapshot's query path never imports lancedb
            .to_table(
                columns=["layout_uid", "local_index", "global_index"],
                filter=f"layout_uid IN ({', '.join(sql_literal(uid) for uid in missing)})",
            )
            .sort_by([("layout_uid", "ascending"), ("local_index", "ascending")])
        )
        uids = rows.column("layout_uid").to_numpy(zero_copy_only=False)
        index = rows.column("global_index").to_numpy().astype(np.int64)
        starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]]) if uids.size else np.zeros(0, int)
        for start, stop in zip(starts, [*starts[1:], uids.size], strict=True):
            layout = index[start:stop].copy()
            layout.flags.writeable = False
            found[str(uids[start])] = layout
            _GLOBAL_INDICES.put((atlas_key, str(uids[start])), layout)
        absent = [uid for uid in missing if uid not in found]
        if absent:
            raise FeatureRegistryError(f"layouts {absent[:5]} are not stored in {LAYOUTS_TABLE!r}")
    return found
