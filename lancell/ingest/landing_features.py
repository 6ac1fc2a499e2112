"""The feature registry rows a landing file registers before it is ingested (:func:`registry_rows`), and
their registration (:func:`register_for_ingestion`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lancell.errors import (
    DuplicateFeaturesError,
    FeatureConflictWarning,
    IngestError,
    LancellWarning,
    caller_outside_lancell,
)
from lancell.ingest.landing_spec import is_tenx_output
from lancell.tables.atlas_tables import read_columns

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.ingest.landing_spec import LandingSpec
    from lancell.tables.registry import OnConflict

__all__ = ["register_for_ingestion", "registry_rows", "updated"]


def register_for_ingestion(
    atlas: RaggedAtlas, feature_space: str, features: pd.DataFrame, on_conflict: OnConflict
) -> Callable[[], None] | None:
    """Register ``features`` before the dataset that measured them is ingested: the new ones added (a
    failed ingestion leaves them: another may already use them, and a ``global_index`` is never reused), and
    with ``on_conflict="update"`` a callable that writes the given values of registered features that differ,
    to be called once the dataset is committed (a failed or skipped ingestion leaves the registry's values as
    they were, as other datasets read them); else None.

    Raises
    ------
    FeatureConflictError
        ``on_conflict="error"`` and registered features differ (nothing registered).
    """
    if on_conflict != "update":
        atlas.register_features(feature_space, features, on_conflict)
        return None
    with warnings.catch_warnings():  # the differing values are kept until the update below
        warnings.simplefilter("ignore", FeatureConflictWarning)
        atlas.register_features(feature_space, features, "keep")
    return lambda: atlas.register_features(feature_space, features, "update")


def updated(spec: LandingSpec, stored_uid: str, updates: list[Callable[[], None] | None]) -> None:
    """Run the registry's ``updates`` (:func:`register_for_ingestion`) once landing ``spec`` committed its
    dataset; where its content was another dataset's (``stored_uid``: nothing ingested), warn that the
    registered values were left as they were."""
    updates = [update for update in updates if update is not None]
    if stored_uid == spec.uid:
        for update in updates:
            update()
    elif updates:
        warnings.warn(
            f"{spec.path}: the registered features' values were not updated (on_conflict='update'): its "
            f"content is stored as dataset {stored_uid!r}, and nothing was ingested",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def registry_rows(atlas: RaggedAtlas, spec: LandingSpec, var: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``spec.feature_space``'s registry that ``var`` describes, one per feature: ``uid`` from
    ``spec.var_uid_column`` (or the var index), ``gene_symbol`` from ``spec.symbol_column`` (or var's
    ``gene_symbol``, or the var index) where the registry has it, ``organism`` from the spec, and the other
    registry columns var has.

    Raises
    ------
    DuplicateFeaturesError
        Two var entries with one uid.
    IngestError
        A named column var lacks, or var entries without a uid (the message names the file).
    """
    for key in ("var_uid_column", "symbol_column"):
        column = getattr(spec, key)
        if column is not None and column not in var.columns:
            raise IngestError(f"{spec.path}: {key} {column!r} is not a column of var ({list(var.columns)})")
    uids = pd.Series(_column(var, spec.var_uid_column), index=var.index)
    if uids.isna().any():  # as text they became the feature "nan"
        missing = uids.index[uids.isna().to_numpy()].tolist()
        raise IngestError(
            f"{spec.path}: {len(missing)} var entries have no feature uid "
            f"({spec.var_uid_column or 'the var index'}), e.g. {missing[:5]}"
        )
    frame = pd.DataFrame({"uid": uids.astype(str).to_numpy()})
    if frame["uid"].duplicated().any():  # refused before anything is registered
        repeated = frame["uid"][frame["uid"].duplicated()].unique().tolist()
        column = spec.var_uid_column or "the var index"
        if is_tenx_output(spec.path):
            unique = " (gene_ids does)"
        else:  # var columns naming each feature once, which a user may mean (not anndata's made-up -1 names)
            named = [name for name in var.columns if name != spec.var_uid_column and _names_once(var[name])]
            option = "--var-uid-column (the sidecar's var_uid_column)"
            unique = f"; of var's columns, {named[:3]} do: pass one as {option}" if named else ""
        raise DuplicateFeaturesError(spec.uid, repeated, f"{column} must name each feature once{unique}")
    table = atlas.core.tables.registry(spec.feature_space)
    schema = table.schema
    if "gene_symbol" in schema.names:
        symbol_column = spec.symbol_column or "gene_symbol"
        symbol_column = symbol_column if symbol_column in var.columns else None  # else the var index
        symbols = pd.Series(_column(var, symbol_column), index=var.index)
        registered = read_columns(table, ["uid", "gene_symbol"]).to_pandas().set_index("uid")["gene_symbol"]
        nullable = schema.field("gene_symbol").nullable
        frame["gene_symbol"] = _symbols(spec, symbols, frame["uid"], nullable, registered)
    if "organism" in schema.names and spec.organism is not None:
        frame["organism"] = spec.organism
    for name in set(schema.names) & set(var.columns) - set(frame.columns) - {"global_index"}:
        frame[name] = var[name].to_numpy()
    if "global_index" in var.columns:  # (as lancell query writes it): this atlas numbers its own features
        warnings.warn(
            f"{spec.path}: var column 'global_index' (another atlas's numbering of its features, as "
            "`lancell query` writes it) is not registered: this atlas numbers its features itself",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    return frame


def _names_once(column: pd.Series) -> bool:
    """Whether a var column holds text naming each feature once (none missing)."""
    if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
        if not isinstance(column.dtype, pd.CategoricalDtype):
            return False
    return bool(column.notna().all() and column.is_unique)


def _column(var: pd.DataFrame, name: str | None) -> np.ndarray:
    """The values of var column ``name``, or of the var index (None)."""
    return (var.index if name is None else var[name]).to_numpy()


def _symbols(
    spec: LandingSpec, symbols: pd.Series, uids: pd.Series, nullable: bool, registered: pd.Series
) -> np.ndarray:
    """The registry's ``gene_symbol`` values: missing ones stay missing where the registry allows it, else
    are the registered symbol of a registered feature and the uid of a new one (warned); as text they were
    the symbol "nan"."""
    missing = symbols.isna().to_numpy()
    values = np.where(missing, None, symbols.astype(str).to_numpy()).astype(object)
    if missing.any() and not nullable:  # (a missing value given is no conflict: a registered one is kept)
        known = registered.reindex(uids.to_numpy()).to_numpy(dtype=object)
        values[missing] = known[missing]
        missing &= pd.isna(known)
    if missing.any() and not nullable:
        values[missing] = uids.to_numpy()[missing]
        warnings.warn(
            f"{spec.path}: {int(missing.sum())} var entries have no gene symbol, e.g. "
            f"{symbols.index[missing][:5].tolist()}; the registry requires one: their uid is registered as "
            "their symbol",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    return values
