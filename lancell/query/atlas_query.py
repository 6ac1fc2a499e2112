"""``AtlasQuery``: a lazy, chainable query over the cell table, reconstructed into AnnData on demand.

Builder calls return a new query (``base.where(a)`` and ``base.where(b)`` are two queries); ``where()``
calls combine with AND (``q.where("a").where("b")`` means ``(a) AND (b)``). Rows come back in the order the
cell table returns them for the filter (scan order), never regrouped by dataset.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, TypeVar

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import QueryError
from lancell.query.cell_selection import CellSelection
from lancell.query.cell_table import check_filter, keyword_filter, search_spec
from lancell.query.feature_selection import FeatureSelection
from lancell.query.plan import Join, PlannedCells
from lancell.query.reconstruct import reconstruct, reconstruct_batches
from lancell.query.unmeasured import ON_UNMEASURED, OnUnmeasured
from lancell.storage.store_failures import store_boundary
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.stored_fields import pointer_fields_from_arrow, vector_fields

if TYPE_CHECKING:
    import polars as pl
    from mudata import MuData

    from lancell.atlas import RaggedAtlas
    from lancell.dataloader import CellDataset

__all__ = ["AtlasQuery"]

T = TypeVar("T")

# the terminals are the query's boundary with the stores: a store failure is a StoreError naming them
_terminal = store_boundary(lambda query: f"the atlas at {query.atlas.db_uri!r}")


def _one_version(method: Callable[..., T]) -> Callable[..., T]:
    """A terminal that reads through :meth:`AtlasQuery.pinned`: one version of every table per call."""

    @functools.wraps(method)
    def read(query: AtlasQuery, *args: object, **kwargs: object) -> T:
        return method(query.pinned(), *args, **kwargs)

    return read


class AtlasQuery:
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

    @property
    def atlas(self) -> RaggedAtlas:
        """The atlas handle this query reads."""
        return self._atlas

    def pinned(self) -> AtlasQuery:
        """This query on its atlas's tables as they are now: a live handle's pinned at their current versions
        (:meth:`lancell.core.AtlasCore.read_view`), a checked-out one as it is. Every terminal reads through
        it, so one call sees one state of the atlas whatever other processes commit meanwhile."""
        view = self._atlas.core.read_view()
        if view is self._atlas.core:
            return self
        return AtlasQuery(type(self._atlas)(view), cells=replace(self._cells, core=view), reads=self._reads)

    @property
    def selection(self) -> CellSelection:
        """Which cell rows this query reads (filters, search, limit, kept columns); with a ``limit()`` under
        ``on_unmeasured("drop")``, only cells measured in every reconstructed layer, so that the limit counts
        the cells the readers return (without one, the readers' plan drops the others and names their
        datasets in ``uns["lancell"]["unmeasured_datasets"]``)."""
        return self._cells if self._cells.limit is None else self._returned()

    def _returned(self) -> CellSelection:
        """The rows the readers return: under ``on_unmeasured("drop")``, the measured cells only."""
        if self._reads.on_unmeasured != "drop":
            return self._cells
        measured = self._reads.measured_filter(self._atlas.core)
        return replace(self._cells, filters=(*self._cells.filters, measured))

    def _with(self, cells: CellSelection | None = None, reads: FeatureSelection | None = None) -> AtlasQuery:
        return AtlasQuery(self._atlas, cells=cells or self._cells, reads=reads or self._reads)  # both frozen

    def where(self, sql: str | None = None, /, **conditions: object) -> AtlasQuery:
        """Add a filter on cell columns (ANDed with earlier filters), checked against the cell table now.

        Either Lance SQL (``where("cell_type IN ('T cell', 'B cell') AND n_counts >= 200")``) or keyword
        conditions, or both: ``where(cell_type=["T cell", "B cell"], n_counts=(200, None))`` means
        membership for a list, an inclusive range for a ``(low, high)`` tuple (None: open end), equality
        for a value and a missing value for None; strings and column names are quoted for you.

        Raises
        ------
        QueryError
            ``sql`` is empty, does not parse as one whole expression (Lance would silently drop a trailing
            ``") OR (..."`` or ``"; ..."``), or names a column the cell table lacks; a SOMA/Census-style
            ``in [...]`` or ``"string"`` (the message shows the SQL to write); a keyword naming an unknown
            column or a value that does not fit its column's type.
        """
        filters = [] if sql is None else [sql]
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
            Text and hybrid search: the indexed text columns searched; None: all.
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
        vectors = vector_fields(self._atlas.core.cell_arrow)
        spec = search_spec(vectors, query, vector_column_name, query_type, fts_columns, exact)
        return self._with(cells=replace(self._cells, search=spec))

    def limit(self, n: int) -> AtlasQuery:
        """Return at most ``n`` cells."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:  # True is an int, not a count
            raise QueryError(f"limit must be a non-negative integer, got {n!r}")
        return self._with(cells=replace(self._cells, limit=n))

    def select(self, columns: Sequence[str]) -> AtlasQuery:
        """Keep only these obs columns (``uid``, ``dataset_uid`` and pointers are always kept)."""
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
            stacklevel=2,
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
        names = [layers] if isinstance(layers, str) else list(layers)
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
            An empty list or a bare string, or an earlier call (e.g. :meth:`layers`) chose another feature
            space.
        """
        if isinstance(names_or_uids, str) or not len(names_or_uids):
            raise QueryError(f"features() needs a non-empty list of names, got {names_or_uids!r}")
        resolve_feature_space(self._atlas.feature_spaces, feature_space)
        reads = self._reads.choose(
            feature_space, "features()", features=list(names_or_uids), case_sensitive=case_sensitive
        )
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

    # ------------------------------------------------------------------------------ terminals
    @_terminal
    @_one_version
    def to_arrow(self) -> pa.Table:
        """The matching cell rows (metadata and pointers), in query (or search-rank) order."""
        return self._returned().read()

    @_terminal
    @_one_version
    def to_pandas(self) -> pd.DataFrame:
        """The matching cell rows as a pandas frame (integers as nullable ``Int64`` etc., never floats)."""
        return self._returned().read_pandas()

    @_terminal
    def to_polars(self) -> pl.DataFrame:
        """The matching cell rows as a polars frame."""
        import polars as pl

        return pl.from_arrow(self.to_arrow())

    @_terminal
    @_one_version
    def count(self, group_by: str | None = None) -> int | pd.Series | pd.DataFrame:
        """Number of matching cells, or cells per value of ``group_by`` (most first): the rows the other
        terminals return, a :meth:`search`'s included.

        Without ``group_by`` or search this is LanceDB's ``count_rows`` (no column is read); with
        ``group_by`` only the grouping column is read. ``group_by="dataset_uid"`` gives a frame: ``cells`` and
        the ``layers`` each dataset stores (those its record lists, what readers of this handle see); any
        other column a ``cells`` series.
        """
        if group_by is None:
            return self._returned().count()
        series = self._returned().count_by(group_by)
        if group_by != "dataset_uid":
            return series
        frame = self._atlas.list_datasets()
        layers = {uid: list(lays) for uid, lays in zip(frame["uid"], frame["layers"], strict=True)}
        return series.to_frame().assign(layers=series.index.map(layers))

    @_terminal
    @_one_version
    def plan(self, columns: Sequence[str] | None = None) -> PlannedCells:
        """The matching cells and the read plan that every reader of this query executes.

        The plan fixes the output features (``features()``, ``feature_join()``), the measured datasets and
        their local -> output column maps, and applies :meth:`on_unmeasured`.

        Parameters
        ----------
        columns
            Cell columns to read besides ``uid``, ``dataset_uid`` and the reconstructed pointer column;
            None: those of :meth:`select` (every column by default).

        Raises
        ------
        UnmeasuredDataError
            Unmeasured cells under the default policy ``"error"``.
        GroupNotFoundError
            A selected dataset's zarr group is missing from the store.
        """
        space = self._reads.space(self._atlas.core)
        if columns is not None:
            columns = list(dict.fromkeys(["uid", "dataset_uid", space, *columns]))
        return self._reads.plan(self._atlas.core, self.selection.read(columns), space)

    @_terminal
    @_one_version
    def plan_for(self, cells: pa.Table) -> PlannedCells:
        """:meth:`plan` applied to ``cells``: this query's rows as the caller read them (at least
        ``dataset_uid`` and the reconstructed pointer's ``zarr_group``, dictionary-encoded columns allowed).

        The loader streams the rows into compact codes and plans from those (``CellDataset.from_query``).
        Raises what :meth:`plan` raises.
        """
        return self._reads.plan(self._atlas.core, cells, self._reads.space(self._atlas.core))

    @_terminal
    @_one_version
    def to_anndata(self) -> ad.AnnData:
        """Reconstruct the matching cells as one AnnData (rows in query order).

        ``X`` is CSR for sparse feature spaces and dense for dense ones (the first of :meth:`layers`, each
        other in ``adata.layers``); ``var`` comes from the registry; ``varm["presence"]`` says which features
        each dataset measured; ``uns["lancell"]`` records the feature space, layer, join, unmeasured-cell
        policy and the unmeasured datasets.
        """
        planned = self.plan()
        return reconstruct(self._atlas.core, planned.cells, planned.plan)

    @_terminal
    @_one_version
    def to_mudata(self, feature_spaces: Sequence[str] | None = None) -> MuData:
        """One AnnData per feature space (every pointer field by default), cells aligned by uid.

        Each modality holds the matching cells that carry that modality; ``mdata.obsm[<space>]`` (a MuData
        convention) says which cells have it. Layers per space come from ``layers()`` or are inferred; cells
        whose dataset lacks the layer follow :meth:`on_unmeasured`.
        """
        from mudata import MuData

        core = self._atlas.core
        spaces = list(feature_spaces or pointer_fields_from_arrow(core.cell_arrow))
        cells = self._cells.read()  # each space's plan applies on_unmeasured to the cells carrying it
        modalities = {}
        for space in spaces:
            resolve_feature_space(self._atlas.feature_spaces, space)
            has = cells.filter(pc.is_valid(cells.column(space)))
            reads = self._reads if space == self._reads.feature_space else self._reads.other_space()
            planned = reads.plan(core, has, space)
            modalities[space] = reconstruct(core, planned.cells, planned.plan)
        return MuData(modalities)

    @_terminal
    @_one_version
    def to_batches(self, batch_size: int = 10_000) -> Iterator[ad.AnnData]:
        """Stream the result as AnnData batches of at most ``batch_size`` cells, all with the same ``var``.

        Only the pointer columns are read up front (to plan the columns, registry and layouts read once);
        metadata and matrix values are read batch by batch, so memory is bounded by the batch. A search's
        ranked rows are read whole (without matrix values) before they are batched.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise QueryError(f"batch_size must be a positive integer, got {batch_size!r}")
        plan = self.plan(columns=[]).plan  # the same rows (search and limit included), pointers only
        rows = self.selection.batches(int(batch_size))
        yield from reconstruct_batches(self._atlas.core, rows, plan, int(batch_size))

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
        self._reads.check_reading(feature_space, given_layers, features)
        query = self.layers(feature_space, given_layers)
        if features is None:
            return query
        if features in ("union", "intersection"):
            return query.feature_join(features)
        if features == "registry":
            return query.all_features(feature_space)
        return query.features(list(features), feature_space, case_sensitive=self._reads.case_sensitive)

    def to_cell_dataset(
        self,
        feature_space: str,
        layer: str | Sequence[str],
        metadata_columns: Sequence[str] = (),
        features: Sequence[str] | str | None = None,
    ) -> CellDataset:
        """A map-style PyTorch dataset of the matching cells (positions follow the query or search order).

        Its output columns and cells are those of ``to_anndata()`` for the same query: ``features()``,
        ``feature_join()`` and ``on_unmeasured()`` apply. ``features`` adds to them as :meth:`reading` says.
        ``layer``: one name, or several (each batch carries one tensor per layer, the first as ``X``).
        See :class:`lancell.dataloader.CellDataset`.
        """
        from lancell.dataloader import CellDataset  # torch is an optional dependency

        return CellDataset.from_query(
            self, feature_space, layer, metadata_columns=metadata_columns, features=features
        )
