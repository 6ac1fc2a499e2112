"""A per-process, version-keyed in-memory view of a feature registry for the read path.

Queries and loaders resolve feature names and build ``var`` from the registry on every call; reading the
table each time costs two LanceDB scans per query. A Lance table version never changes once written, so
the view is cached under (atlas identity, feature space, table version): a write makes a new version and
therefore a new view, and a checked-out snapshot keeps its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lancell.storage.bounded_cache import BoundedCache

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["RegistryView", "atlas_identity", "registry_view"]

_VIEWS: BoundedCache[tuple[str, str, int], RegistryView] = BoundedCache(8)


@dataclass(frozen=True)
class RegistryView:
    """The numbered features of one registry version.

    Attributes
    ----------
    frame
        Registry rows indexed by ``global_index`` (every column but ``global_index``).
    by_uid
        ``uid -> global_index``.
    unnumbered
        The uids of registered features without a ``global_index`` yet (rows added by hand), which no query
        reads until ``optimize()`` or ``assign_global_indices()`` numbers them.
    """

    frame: pd.DataFrame
    by_uid: pd.Series
    unnumbered: frozenset[str]

    @cached_property
    def by_symbol(self) -> dict[str, list[int]]:
        """``gene_symbol -> global indices`` (sorted), empty when the registry has no ``gene_symbol``; built
        on first use (features named by symbol), not by every first query (~0.2 s at 33k symbols)."""
        if "gene_symbol" not in self.frame.columns:
            return {}
        symbols = self.frame["gene_symbol"].dropna().astype(str)
        # one sort instead of groupby().groups (an Index per symbol: 0.85 s of a first query at 33k)
        codes, uniques = pd.factorize(symbols.to_numpy(), sort=True)
        order = np.argsort(codes, kind="stable")  # the frame is sorted: indices stay increasing
        index = symbols.index.to_numpy()[order].tolist()
        edges = np.searchsorted(codes[order], np.arange(len(uniques) + 1)).tolist()
        return {s: index[a:b] for s, a, b in zip(uniques.tolist(), edges[:-1], edges[1:], strict=True)}

    @cached_property
    def shadowed(self) -> dict[str, list[int]]:
        """``uid -> global indices of the other features whose gene_symbol is that uid``: a registry keyed by
        symbols for one dataset and by Ensembl ids for another (``CD3E`` and ``ENSG00000198851``, symbol
        ``CD3E``), or a symbol-keyed registry's made-unique names (``TBCE-1``, symbol ``TBCE``); ~5 ms at
        33k features."""
        if "gene_symbol" not in self.frame.columns:
            return {}
        symbols = self.frame["gene_symbol"]
        clash = symbols.isin(self.by_uid.index) & (symbols != self.frame["uid"])
        shadowed: dict[str, list[int]] = {}
        for index, symbol in symbols[clash].items():
            shadowed.setdefault(str(symbol), []).append(int(index))
        return shadowed


def atlas_identity(core: AtlasCore) -> str:
    """The atlas's location and creation time: differs for an atlas re-created at the same location."""
    return f"{core.db_uri}@{core.meta.get('created_at')}"


def registry_view(core: AtlasCore, feature_space: str) -> RegistryView:
    """The (cached) view of ``feature_space``'s registry at the version the atlas handle reads."""
    table = core.tables.registry(feature_space)
    version = core.pinned(f"registry_version/{feature_space}", lambda: int(table.version))
    key = (atlas_identity(core), feature_space, version)
    view = _VIEWS.get(key)
    if view is None:
        frame = table.to_arrow().to_pandas()
        numbered = frame["global_index"].notna()
        unnumbered = frozenset(frame.loc[~numbered, "uid"].astype(str))
        frame = frame[numbered]
        frame = frame.set_index(frame.pop("global_index").astype(np.int64)).sort_index()
        frame.index.name = None
        by_uid = pd.Series(frame.index.to_numpy(), index=pd.Index(frame["uid"].astype(str)))
        view = RegistryView(frame, by_uid, unnumbered)
        _VIEWS.put(key, view)
    return view
