"""Registering features in an atlas (:meth:`lancell.atlas.RaggedAtlas.register_features`): the registry's own
rules (:mod:`lancell.tables.registry`) under its lock, and what standardization knows beyond them: a registry
keyed two ways (gene ids beside symbols) and a conflict that is two names of one organism."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import FeatureConflictError, LancellWarning, UnknownOrganismError, caller_outside_lancell
from lancell.standardize.genes import GENE_ID_PATTERN, canonical_organism
from lancell.tables.atlas_tables import read_columns
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.registry import OnConflict, prepare_features, register_prepared

if TYPE_CHECKING:
    import pandas as pd
    from lancedb.pydantic import LanceModel
    from lancedb.table import Table

    from lancell.core import AtlasCore

__all__ = ["mixed_keys", "register_features", "same_organism_hint", "warn_mixed_keys"]


def register_features(
    core: AtlasCore,
    feature_space: str,
    features: Sequence[LanceModel] | pd.DataFrame | pa.Table,
    on_conflict: OnConflict,
) -> int:
    """Add ``features`` to the registry of ``feature_space``; return how many were new (the rules are
    :meth:`lancell.atlas.RaggedAtlas.register_features`'s)."""
    core.require_writable()
    space = resolve_feature_space(core.feature_spaces, feature_space)
    table = core.tables.registry(space.name)
    prepared, given = prepare_features(space.name, features, table.schema)
    with core.lock(f"registry-{space.name}") as lease:
        mixed = mixed_keys(table, prepared)
        try:
            added = register_prepared(table, space.name, prepared, given, on_conflict, lease.check)
        except FeatureConflictError as exc:
            exc.args = (str(exc) + same_organism_hint(exc.conflicts),)
            raise
    warn_mixed_keys(space.name, mixed)
    return added


def same_organism_hint(conflicts: Sequence[tuple[str, str, object, object]]) -> str:
    """For organism conflicts that are two names of one organism (``human``, ``Homo sapiens``): say so, and
    which spelling the atlas holds ("" when there are none)."""
    for _, column, old, new in conflicts:
        if column == "organism" and isinstance(old, str) and isinstance(new, str):
            try:
                same = canonical_organism(old) == canonical_organism(new)
            except UnknownOrganismError:
                continue
            if not same:
                continue
            standardized = (
                f"; standardization records the scientific name whatever is given, so a standardized file "
                f"needs on_conflict='keep' (its features keep {old!r}, its cells say {new!r})"
                if canonical_organism(new) == new
                else ""
            )
            return (
                f" ({old!r} and {new!r} name one organism: give the atlas's spelling, {old!r}, so that one "
                f"filter finds every cell{standardized})"
            )
    return ""


def mixed_keys(table: Table, prepared: pa.Table) -> list[tuple[str, str]]:
    """``(uid, symbol)`` of the features that would make the registry keyed two ways once ``prepared`` is
    registered: a gene id (``ENSG...``) whose symbol is the uid of a feature keyed by its symbol, either one
    new (genes keyed by symbols for one dataset and by Ensembl ids for another, which no dataset then
    shares; not a symbol-keyed registry's made-unique names, ``TBCE-1`` with symbol ``TBCE``). Read before
    the registration."""
    if "gene_symbol" not in prepared.column_names:
        return []
    registered = read_columns(table, ["uid", "gene_symbol"])
    new = prepared.select(["uid", "gene_symbol"])
    new = new.filter(pc.invert(pc.is_in(new.column("uid"), value_set=registered.column("uid"))))
    if new.num_rows == 0:
        return []

    def by_id(rows: pa.Table) -> pa.ChunkedArray:
        return pc.fill_null(pc.match_substring_regex(rows.column("uid"), GENE_ID_PATTERN), False)

    new_id, registered_id = by_id(new), by_id(registered)
    symbol_keyed = pa.concat_arrays(
        [
            pc.filter(registered.column("uid"), pc.invert(registered_id)).combine_chunks(),
            pc.filter(new.column("uid"), pc.invert(new_id)).combine_chunks(),
        ]
    )
    new_symbol_keyed = pc.filter(new.column("uid"), pc.invert(new_id))
    clashes = [
        new.filter(pc.and_(new_id, pc.is_in(new.column("gene_symbol"), value_set=symbol_keyed))),
        registered.filter(
            pc.and_(registered_id, pc.is_in(registered.column("gene_symbol"), value_set=new_symbol_keyed))
        ),
    ]
    return [pair for rows in clashes for pair in zip(*rows.to_pydict().values(), strict=True)]


def warn_mixed_keys(feature_space: str, pairs: Sequence[tuple[str, str]]) -> None:
    """Warn about the features :func:`mixed_keys` found (nothing when there are none)."""
    if pairs:
        shown = ", ".join(f"{uid!r} has symbol {symbol!r}" for uid, symbol in pairs[:3])
        warnings.warn(
            f"{feature_space}: {len(pairs)} features have a symbol that is another feature's uid ({shown}): "
            "the registry now holds genes keyed by symbols and by other ids, which no dataset shares; a "
            "query naming such a gene reads the feature of that uid (docs/standardization.md: standardized "
            "files go into an atlas of their own)",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
