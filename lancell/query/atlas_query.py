"""``AtlasQuery``: a lazy, chainable query over the cell table, reconstructed into AnnData on demand.

Builder calls return a new query (``base.where(a)`` and ``base.where(b)`` are two queries); ``where()``
calls combine with AND (``q.where("a").where("b")`` means ``(a) AND (b)``). Rows come back in the order the
cell table returns them for the filter (scan order), never regrouped by dataset. The terminals that read a
query (``to_anndata()``, ``count()``, ``to_batches()``, ...) are in :mod:`lancell.query.terminals`.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from lancell.errors import LancellWarning, QueryError, caller_outside_lancell, require_text
from lancell.query.cell_selection import CellSelection
from lancell.query.cell_table import check_filter, keyword_filter, search_spec
from lancell.query.feature_selection import FeatureSelection
from lancell.query.name_lists import name_list
from lancell.query.one_version import terminal
from lancell.query.plan import Join
from lancell.query.terminals import QueryTerminals
from lancell.query.unmeasured import ON_UNMEASURED, OnUnmeasured
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.registry import sql_literal
from lancell.tables.stored_fields import vector_fields

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.core import AtlasCore

__all__ = ["AtlasQuery"]

_LARGEST_LIMIT = 2**63 - 1


class AtlasQuery(QueryTerminals):
    """Builder returned by :meth:`RaggedAtlas.query`; every builder method returns a new query and leaves
    the one it is called on unchanged.

    Parameters
    ----------
    atlas
        The atlas handle read.
    cells, reads
        Which rows and what of them a derived query reads; None: every cell, nothing chosen.
    """

    def __init__(
        self, atlas: RaggedAtlas, *, cells: CellSelection | None = None, reads: FeatureSelection | None = None
    ) -> None:
        self._atlas = atlas
        # which rows (filters, search, limit, kept columns); what of them (space, layers, features, policy)
        self._cells = CellSelection(atlas.core) if cells is None else cells
        self._reads = FeatureSelection() if reads is None else reads

    def _with(self, cells: CellSelection | None = None, reads: FeatureSelection | None = None) -> AtlasQuery:
        return AtlasQuery(self._atlas, cells=cells or self._cells, reads=reads or self._reads)  # both frozen

    @terminal  # (it reads the dataset records and checks the filter on the cell table)
    def where(self, sql: str | None = None, /, **conditions: object) -> AtlasQuery:
        """Add a filter on cell columns (ANDed with earlier filters), checked against the cell table now.

        Either Lance SQL (``where("cell_type IN ('T cell', 'B cell') AND n_counts >= 200")``) or keyword
        conditions, or both: ``where(cell_type=["T cell", "B cell"], n_counts=(200, None))`` means
        membership for a list (None among its values: a missing value too), an inclusive range of numbers
        or times for a ``(low, high)`` tuple (None: open end; refused on a text or boolean column), equality
        for a value and a missing value for None; strings and column names are quoted for you. A
        ``dataset_uid`` that names no dataset of the atlas (of this snapshot, for a checkout) is warned
        about.

        Raises
        ------
        QueryError
            ``sql`` is empty, does not parse as one whole expression (Lance would silently drop a trailing
            ``") OR (..."`` or ``"; ..."``), or names a column the cell table lacks; a SOMA/Census-style
            ``in [...]`` or ``"string"`` (the message shows the SQL to write); a keyword naming an unknown
            column or a value that does not fit its column's type; ``dataset_uid=`` naming a modality
            attached to another dataset's cells (they are that dataset's: nothing would match).
        """
        filters = [] if sql is None else [sql]
        if "dataset_uid" in conditions:
            _refuse_attached_uids(self._atlas.core, conditions["dataset_uid"])
        if conditions or sql is None:
            filters.append(keyword_filter(self._atlas.core.cell_arrow, conditions))
        for text in filters:
            check_filter(self._atlas.core.tables.cells, text)
        return self._with(cells=replace(self._cells, filters=(*self._cells.filters, *filters)))

    def search(
        self,
        query: str | Sequence[float] | np.ndarray | tuple[Sequence[float] | np.ndarray, str],
        *,
        vector_column_name: str | None = None,
        query_type: Literal["auto", "vector", "fts", "hybrid"] = "auto",
        fts_columns: str | Sequence[str] | None = None,
        exact: bool = False,
    ) -> AtlasQuery:
        """Rank cells by vector similarity (an embedding), full-text relevance (a string), or both.

        Rows come back in rank order, with a ``distance`` (vector: squared L2) or ``score`` (text, hybrid)
        column; every terminal, ``count()`` included, returns them. Hybrid search fuses both rankings
        (reciprocal rank fusion). Vector and hybrid search need an explicit ``limit()`` (nothing is silently
        capped); text search returns every match unless limited. ``where()`` filters apply before ranking.

        Once ``optimize()`` has indexed the vector column (IVF-PQ, from
        :data:`~lancell.tables.indexes.VECTOR_INDEX_MIN_ROWS` cells), neighbours are approximate: a true
        one can be missed. Candidates are re-ranked by their stored vectors, so the distances returned are
        exact; ``exact=True`` scans every row for the exact neighbours (slower).

        Parameters
        ----------
        query
            One embedding (1-D, finite, as wide as the vector column), a string, or ``(embedding, text)``.
        vector_column_name
            The vector column searched; None: the only one.
        query_type
            ``"auto"``: text for a string, hybrid for ``(embedding, text)``, vector otherwise.
        fts_columns
            Text and hybrid search: the text columns searched; None: every indexed one. Columns without the
            full-text index (before ``optimize()``) are read by a scan, with a warning (words match as
            written).
        exact
            Vector and hybrid search: bypass the ANN index.

        Raises
        ------
        QueryError
            See :func:`~lancell.query.cell_table.search_spec`: e.g. a 2-D array or a NaN embedding, a
            vector of the wrong width, or an option the kind of search does not use; a second search.
        """
        if self._cells.search is not None:
            raise QueryError(
                "the query already has a search: a second search() would replace it (give the text and "
                "the vector together, search((vector, text)), for a hybrid search)"
            )
        cells = self._atlas.core.cell_arrow
        named = [fts_columns] if isinstance(fts_columns, str) else list(fts_columns or [])
        if unknown := [column for column in named if column not in cells.names]:
            raise QueryError(f"fts_columns {unknown} are not cell columns (cell columns: {cells.names})")
        spec = search_spec(vector_fields(cells), query, vector_column_name, query_type, fts_columns, exact)
        return self._with(cells=replace(self._cells, search=spec))

    def limit(self, n: int) -> AtlasQuery:
        """Return at most ``n`` cells (``0``: none)."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:  # True is an int, not a count
            raise QueryError(f"limit must be a non-negative integer, got {n!r}")
        if n > _LARGEST_LIMIT:  # (Lance's limit is a 64-bit integer: an OverflowError when read)
            raise QueryError(f"limit must be at most {_LARGEST_LIMIT:,}, got {n!r} (no limit: leave it out)")
        return self._with(cells=replace(self._cells, limit=int(n)))

    def select(self, columns: str | Sequence[str]) -> AtlasQuery:
        """Keep only these obs columns (one name, or several, in table order; ``uid``, ``dataset_uid`` and
        pointers are always kept)."""
        columns = name_list("select()", columns, one=True, ordered=False)  # kept in table order
        names = self._atlas.core.cell_arrow.names
        if unknown := sorted(set(columns) - set(names)):
            raise QueryError(f"unknown cell columns {unknown}; the cell table has {names}")
        return self._with(cells=replace(self._cells, columns=tuple(columns)))

    def feature_space(self, feature_space: str) -> AtlasQuery:
        """Reconstruct this feature space (default: the first pointer field of the schema); raises
        :class:`~lancell.errors.QueryError` when an earlier call chose another one."""
        resolve_feature_space(self._atlas.feature_spaces, feature_space)
        return self._with(reads=self._reads.choose(feature_space, "feature_space()"))

    def feature_spaces(self, feature_space: str) -> AtlasQuery:
        """The earlier name of :meth:`feature_space` (it sets one); warns, and goes in the next release."""
        warnings.warn(
            "query().feature_spaces(name) is named feature_space(name) now; the old name goes next release",
            DeprecationWarning,
            stacklevel=caller_outside_lancell(),
        )
        return self.feature_space(feature_space)

    def layers(self, feature_space: str, layers: str | Sequence[str]) -> AtlasQuery:
        """Reconstruct ``layers`` of ``feature_space``: one name, or several read on the same cells and
        columns (``to_anndata`` puts the first in ``X`` and each other in ``adata.layers[name]``; the loader
        yields one tensor per layer). Datasets lacking a requested layer follow :meth:`on_unmeasured`, per
        layer.

        Raises
        ------
        QueryError
            No layer, a repeated one, a layer the feature space does not allow, or an earlier call chose
            another feature space.
        """
        names = name_list("layers()", layers, one=True)
        if not names or len(set(names)) != len(names):
            raise QueryError(f"layers() needs distinct layer names, got {layers!r}")
        space = resolve_feature_space(self._atlas.feature_spaces, feature_space)
        for name in names:
            space.check_layer(name)
        return self._with(reads=self._reads.choose(feature_space, "layers()", layers=names))

    def features(
        self, names_or_uids: Sequence[str], feature_space: str, *, case_sensitive: bool = True
    ) -> AtlasQuery:
        """Only these features, as columns in the order given (registry uids, or symbols where not a uid).

        A symbol shared by several registry features (e.g. a duplicated mouse symbol) yields all of them.
        Combined with ``feature_join("intersection")``, features not measured by every dataset are dropped.
        ``case_sensitive=False`` matches uids and symbols ignoring case (see
        :func:`lancell.query.feature_names.resolve_features`); the loader reads the same selection.

        Raises
        ------
        QueryError
            An empty list, a bare string or a set (:func:`~lancell.query.name_lists.name_list`), or an earlier
            call (e.g. :meth:`layers`) chose another feature space.
        """
        if isinstance(names_or_uids, str) and isinstance(feature_space, list | tuple):
            raise QueryError(
                f"features({names_or_uids!r}, {feature_space!r}): the names come first, "
                f"features({feature_space!r}, {names_or_uids!r})"
            )
        names = name_list("features()", names_or_uids)
        if not names:
            raise QueryError(f"features() needs a non-empty list of names, got {names_or_uids!r}")
        if not isinstance(case_sensitive, bool | np.bool_):  # ("no" was taken for True)
            raise QueryError(f"features(case_sensitive=...) takes True or False, got {case_sensitive!r}")
        resolve_feature_space(self._atlas.feature_spaces, feature_space)
        reads = self._reads.choose(feature_space, "features()", features=names, case_sensitive=case_sensitive)
        return self._with(reads=reads)

    def all_features(self, feature_space: str) -> AtlasQuery:
        """Every numbered registry feature as a column: column ``j`` is the feature of global index ``j``.

        The columns then do not depend on which datasets are selected (stable across snapshots, as token
        models want); features a dataset did not measure have presence False. Raises :class:`QueryError`
        when an earlier call chose another feature space.
        """
        resolve_feature_space(self._atlas.feature_spaces, feature_space)
        return self._with(reads=self._reads.choose(feature_space, "all_features()", features="registry"))

    def feature_join(self, join: Join) -> AtlasQuery:
        """``"union"`` (every feature any selected dataset measured) or ``"intersection"`` (shared by all)."""
        if join not in ("union", "intersection"):
            raise QueryError(f"feature_join must be 'union' or 'intersection', got {join!r}")
        return self._with(reads=replace(self._reads, join=join))

    def on_unmeasured(self, policy: OnUnmeasured) -> AtlasQuery:
        """What every reader does with selected cells that did not measure a reconstructed layer.

        A cell is unmeasured in a layer when its dataset lacks the layer (or has no data in the feature space
        at all). ``"error"`` (default): raise :class:`~lancell.errors.UnmeasuredDataError` naming the
        datasets and layers; ``"drop"``: leave out cells lacking any requested layer; ``"keep"``: return them
        as empty rows in each layer they lack (presence False for every feature of ``X``'s layer). Joins are
        computed over the measured datasets. ``adata.uns["lancell"]`` records the policy and the unmeasured
        datasets.
        """
        if policy not in ON_UNMEASURED:
            raise QueryError(f"on_unmeasured must be 'error', 'drop' or 'keep', got {policy!r}")
        return self._with(reads=replace(self._reads, on_unmeasured=policy))

    def reading(
        self, feature_space: str, layer: str | Sequence[str], features: Sequence[str] | str | None = None
    ) -> AtlasQuery:
        """A copy of this query reading ``layer`` (one name or several) of ``feature_space``, ``features``
        added to its selection.

        ``features``: None (the query's own selection), ``"union"`` / ``"intersection"`` (as
        :meth:`feature_join`), ``"registry"`` (as :meth:`all_features`) or names / uids (as :meth:`features`).

        Raises
        ------
        QueryError
            A feature space, layer, join or feature list that contradicts what the query already chose.
        """
        given_layers = [layer] if isinstance(layer, str) else list(layer)
        if features is not None and not isinstance(features, str):  # read once (a generator...), in order
            features = name_list("features", features)
        self._reads.check_reading(feature_space, given_layers, features)
        query = self.layers(feature_space, given_layers)
        if features is None:
            return query
        if isinstance(features, str) and features in ("union", "intersection"):  # (not an array's ==)
            return query.feature_join(features)
        if isinstance(features, str):  # "registry" (check_reading refused any other)
            return query.all_features(feature_space)
        return query.features(features, feature_space, case_sensitive=self._reads.case_sensitive)


def _refuse_attached_uids(core: AtlasCore, value: object) -> None:
    """Refuse ``dataset_uid`` values that name a modality attached to another dataset's cells; warn about
    those that name no dataset.

    Raises
    ------
    QueryError
        Naming the dataset whose cells they are and how to select those carrying the modality.
    """
    # values as keyword_filter reads them (a tuple is a range)
    listed = isinstance(value, list | set | frozenset | np.ndarray | pd.Index | pd.Series)
    named = [value] if isinstance(value, str) else list(value) if listed else []
    uids = [uid for uid in named if isinstance(uid, str)]
    if not uids:
        return
    for uid in uids:
        require_text("dataset_uid", uid, QueryError)
    listed_uids = ", ".join(sql_literal(uid) for uid in uids)
    attaching = "cells_of" in core.dataset_arrow.names
    # (through pylance: lancedb's search() made a checkout's read process import lancedb, ~1 s)
    rows = (
        core.tables.datasets.to_lance()
        .to_table(
            columns=["uid", *(["cells_of", "feature_space"] if attaching else [])],
            filter=f"uid IN ({listed_uids})",
        )
        .to_pylist()
    )
    known = {row["uid"] for row in rows}
    if unknown := [uid for uid in uids if uid not in known]:  # (a typo read as no cells, without a word)
        of = "this atlas" if core.snapshot_version is None else f"snapshot {core.snapshot_version}"
        warnings.warn(
            f"dataset_uid: {unknown} name no dataset of {of} and select no cell (list_datasets() shows the "
            "uids)",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    attached = [row for row in rows if attaching and row["cells_of"] is not None]
    if attached:
        uid, host, space = attached[0]["uid"], attached[0]["cells_of"], attached[0]["feature_space"]
        raise QueryError(
            f"dataset_uid={uid!r} names a modality attached to the cells of {host!r}, whose dataset_uid they "
            f"keep: nothing would match; select them with dataset_uid={host!r} (and where('{space} IS NOT "
            "NULL') for the cells that carry it)"
        )
