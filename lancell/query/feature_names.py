"""Feature names to registry columns: the global indices a query's ``features()`` (or every registered
feature) reads, in the order named."""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lancell.errors import LancellWarning, QueryError, caller_outside_lancell
from lancell.tables.registry_view import RegistryView, registry_view

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["registry_columns", "resolve_features"]


def resolve_features(
    core: AtlasCore, feature_space: str, names_or_uids: Sequence[str], *, case_sensitive: bool = True
) -> np.ndarray:
    """Global indices of ``names_or_uids`` (registry uids, or symbols where not a uid), in the order given.

    A symbol shared by several registry features yields all of them. A uid that is
    also the symbol of other features (a registry keyed by symbols for one dataset and by Ensembl ids for
    another) yields the uid's feature, with a :class:`~lancell.errors.LancellWarning` naming the others
    (except made-unique names: ``TBCE-1`` or ``TBCE.1``, symbol ``TBCE``, beside the uid ``TBCE``). With
    ``case_sensitive=False`` a name matches every feature whose uid or symbol equals it ignoring case
    (``"sox17"`` is human ``SOX17`` and mouse ``Sox17`` in a two-organism registry).

    Raises
    ------
    QueryError
        Names that are neither a uid nor a symbol of the registry, or a feature two names select (a name
        given twice, or a uid and a symbol of one feature): each feature is one column, so every column after
        it would be one place off the names' positions.
    """
    view = registry_view(core, feature_space)
    folded = {} if case_sensitive else _folded(view)
    named_by: dict[int, str] = {}  # each selected feature's name, in the order named
    unknown, shadowed, repeated = [], {}, []
    for name in names_or_uids:
        if not case_sensitive and name.casefold() in folded:
            indices = sorted(set(folded[name.casefold()]))
        elif case_sensitive and name in view.by_uid.index:
            indices = [int(view.by_uid[name])]
            others = _keyed_by_id(view, name)
            if others:
                shadowed[name] = others
        elif case_sensitive and name in view.by_symbol:
            indices = list(view.by_symbol[name])
        else:
            unknown.append(name)
            continue
        repeated += [(name, named_by[index]) for index in indices if index in named_by]
        named_by.update((index, name) for index in indices if index not in named_by)
    if unknown:
        waiting = [name for name in unknown if name in view.unnumbered]
        absent = [name for name in unknown if name not in view.unnumbered]
        said = []
        if absent:
            said.append(f"{len(absent)} features are not in the {feature_space!r} registry: {absent[:10]}")
            said[-1] += _spelling_hint(view, absent, case_sensitive)
        if waiting:
            said.append(
                f"features {waiting[:10]} are registered without a global index yet (rows added by hand), "
                "which no query reads: optimize() or assign_global_indices() numbers them"
            )
        message = "; ".join(said)
        raise QueryError(message)
    if shadowed:
        named = "; ".join(f"{name!r}: {uids}" for name, uids in list(shadowed.items())[:5])
        warnings.warn(
            f"{feature_space}: {len(shadowed)} names are registry uids and also the symbols of other "
            f"features, which are not read ({named}); name those uids too, or pass case_sensitive=False "
            "(lancell query --ignore-case) to read every feature with the name (a registry keyed by symbols "
            "for some datasets and by other ids for others: docs/standardization.md)",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    if repeated:
        repeats = list(dict.fromkeys(repeated))
        pairs = ", ".join(f"{name!r} (as {earlier!r})" for name, earlier in repeats[:5])
        raise QueryError(
            f"features named twice (each feature is one column: name it once): {pairs}"
            + (f" and {len(repeats) - 5} more" if len(repeats) > 5 else "")
        )
    return np.asarray(list(named_by), dtype=np.int64)


def _keyed_by_id(view: RegistryView, uid: str) -> list[str]:
    """The uids of the features whose symbol is ``uid``: features the uid shadows (in a registry keyed by
    symbols and by ids, ``ENSG...``), but not a symbol-keyed registry's made-unique ``TBCE-1`` (symbol
    ``TBCE``: anndata's ``var_names_make_unique``) or ``TBCE.1`` (R's ``make.unique``, Seurat's)."""
    if uid not in view.shadowed:
        return []
    uids = view.frame["uid"].loc[view.shadowed[uid]].astype(str)
    return uids[~uids.str.fullmatch(re.escape(uid) + r"[-.][0-9]+")].tolist()


def _folded(view: RegistryView) -> dict[str, list[int]]:
    """``{casefolded uid or symbol: global indices}``."""
    folded: dict[str, list[int]] = {}
    for name, index in zip(view.by_uid.index, view.by_uid.to_numpy(), strict=True):
        folded.setdefault(name.casefold(), []).append(int(index))
    for symbol, indices in view.by_symbol.items():
        folded.setdefault(symbol.casefold(), []).extend(indices)
    return folded


def _spelling_hint(view: RegistryView, unknown: list[str], case_sensitive: bool) -> str:
    """How the unknown names would match ignoring case (when ``case_sensitive``) or Unicode form (NFKC: an
    accent composed or not, full-width letters, the Kelvin sign), "" when none would."""
    spelled: dict[str, list[str]] = {}
    for name in [*view.by_uid.index, *view.by_symbol.keys()]:
        spellings = spelled.setdefault(_loose(name), [])
        if name not in spellings:
            spellings.append(name)
    matches = [  # every spelling (C1orf220 and C1ORF220: ignoring case, one name gives both)
        (name, spelled[_loose(name)]) for name in unknown if _loose(name) in spelled
    ]
    by_form = [
        (name, spellings)
        for name, spellings in matches
        if name.casefold() not in map(str.casefold, spellings)
    ]
    by_case = [match for match in matches if match not in by_form] if case_sensitive else []
    hints = []
    if by_case:
        hints.append(
            f"ignoring case, {_spellings(by_case)}: name them so, or pass case_sensitive=False to "
            "query.features() (lancell query --ignore-case)"
        )
    if by_form:
        hints.append(
            f"{_spellings(by_form)} in another Unicode form (how the registry spells them: as text they look "
            "alike, the escapes differ): name them as registered"
        )
    return "".join(f"; {hint}" for hint in hints)


def _loose(name: str) -> str:
    """``name`` ignoring case and Unicode form."""
    return unicodedata.normalize("NFKC", name).casefold()


def _spellings(matches: list[tuple[str, list[str]]]) -> str:
    """``'a' is 'A' or ...`` for the first five ``(name, registered spellings)``, non-ASCII names with
    their escapes."""
    return ", ".join(
        f"{_shown(name)} is {' or '.join(_shown(s) for s in spellings)}" for name, spellings in matches[:5]
    )


def _shown(name: str) -> str:
    return repr(name) if name.isascii() else f"{name!r} ({name!a})"


def registry_columns(core: AtlasCore, feature_space: str) -> np.ndarray:
    """Global index of every numbered feature of the registry, in order (assigned contiguously from 0)."""
    return registry_view(core, feature_space).frame.index.to_numpy(dtype=np.int64)
