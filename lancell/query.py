"""``AtlasQuery``: a lazy, chainable query over the cell table, reconstructed into AnnData on demand.

``where()`` calls combine with AND (``q.where("a").where("b")`` means ``(a) AND (b)``). Rows come back in
the order the cell table returns them for the filter (scan order), never regrouped by dataset.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import QueryError
from lancell.feature_spaces import resolve_feature_space
from lancell.reconstruct import Join, ReconstructionPlan, plan_reconstruction, reconstruct
from lancell.registry_view import registry_view
from lancell.schema import pointer_fields_from_arrow, vector_fields
from lancell.visibility import visible_cells_filter

if TYPE_CHECKING:
    import polars as pl
    from lancedb.query import LanceQueryBuilder
    from mudata import MuData

    from lancell.atlas import RaggedAtlas
    from lancell.dataloader import CellDataset
    from lancell.dataloader.features import FeatureSelection

__all__ = ["AtlasQuery"]


def _unbalanced(sql: str) -> str | None:
    """Why ``sql`` cannot be wrapped in parentheses and ANDed with other filters, or None if it can."""
    depth, quote = 0, ""
    for char in sql:
        if quote:
            quote = "" if char == quote else quote  # a doubled quote closes and reopens: still balanced
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return "a ')' closes a parenthesis it did not open"
    if quote:
        return f"an unclosed {quote}"
    return "an unclosed '('" if depth else None


class AtlasQuery:
    """Builder returned by :meth:`RaggedAtlas.query`; every method returns the same builder."""

    def __init__(self, atlas: RaggedAtlas) -> None:
        self._atlas = atlas
        self._filters: list[str] = []
        self._limit: int | None = None
        self._columns: list[str] | None = None
        self._feature_space: str | None = None
        self._layer: str | None = None
        self._join: Join = "union"
        self._features: tuple[str, list[str]] | None = None
        self._search: dict[str, object] | None = None

    def where(self, sql: str) -> AtlasQuery:
        """Add a SQL filter on cell columns (ANDed with earlier filters), checked against the cell table now.

        Raises
        ------
        QueryError
            ``sql`` is empty, does not parse as one whole expression (Lance would silently drop a trailing
            ``") OR (..."`` or ``"; ..."``), or names a column the cell table lacks.
        """
        if not isinstance(sql, str) or not sql.strip():
            raise QueryError(f"where() needs a non-empty SQL string, got {sql!r}")
        problem = _unbalanced(sql)
        if problem is not None:
            raise QueryError(f"where({sql!r}) is not one SQL expression: {problem}")
        cells = self._atlas._tables.cells
        try:  # plans without reading rows; inside parentheses, trailing tokens are an error, not ignored
            cells.search().where(f"({sql})").explain_plan()
        except (ValueError, RuntimeError, OSError) as exc:
            raise QueryError(
                f"where({sql!r}) is not a valid filter on the cell table {cells.name!r}: {exc}"
            ) from exc
        self._filters.append(sql)
        return self

    def search(
        self,
        query: str | Sequence[float] | np.ndarray | tuple[Sequence[float] | np.ndarray, str],
        *,
        vector_column_name: str | None = None,
        query_type: Literal["auto", "vector", "fts", "hybrid"] = "auto",
        fts_columns: str | Sequence[str] | None = None,
    ) -> AtlasQuery:
        """Rank cells by vector similarity (an embedding), full-text relevance (a string), or both.

        Rows come back in rank order, with a ``distance`` (vector) or ``score`` (text, hybrid) column.
        Hybrid search takes ``(embedding, text)`` and fuses both rankings (reciprocal rank fusion). Vector
        and hybrid search need an explicit ``limit()`` (nothing is silently capped); text search returns
        every match unless limited. ``where()`` filters are applied before ranking.
        """
        vectors = vector_fields(self._atlas._cell_arrow)
        if query_type == "auto":
            query_type = "fts" if isinstance(query, str) else "vector"
        if query_type not in ("vector", "fts", "hybrid"):
            raise QueryError(f"query_type must be auto, vector, fts or hybrid, got {query_type!r}")
        if query_type in ("vector", "hybrid"):
            if vector_column_name is None:
                if len(vectors) != 1:
                    raise QueryError(f"name the vector column to search (vector columns: {sorted(vectors)})")
                vector_column_name = next(iter(vectors))
            if vector_column_name not in vectors:
                raise QueryError(
                    f"{vector_column_name!r} is not a vector column (vector columns: {sorted(vectors)})"
                )
        if query_type == "vector" and isinstance(query, str):
            raise QueryError("vector search needs an embedding, got a string (use query_type='fts')")
        if query_type == "hybrid" and not (
            isinstance(query, tuple) and len(query) == 2 and isinstance(query[1], str)
        ):
            raise QueryError("hybrid search needs (embedding, text), e.g. search((vector, 'monocyte'), ...)")
        self._search = {
            "query": query,
            "query_type": query_type,
            "vector_column_name": vector_column_name,
            "fts_columns": fts_columns,
        }
        return self

    def limit(self, n: int) -> AtlasQuery:
        """Return at most ``n`` cells."""
        if not isinstance(n, int) or n < 0:
            raise QueryError(f"limit must be a non-negative integer, got {n!r}")
        self._limit = n
        return self

    def select(self, columns: Sequence[str]) -> AtlasQuery:
        """Keep only these obs columns (``uid``, ``dataset_uid`` and pointers are always kept)."""
        unknown = sorted(set(columns) - set(self._atlas._cell_arrow.names))
        if unknown:
            raise QueryError(
                f"unknown cell columns {unknown}; the cell table has {self._atlas._cell_arrow.names}"
            )
        self._columns = list(columns)
        return self

    def feature_spaces(self, feature_space: str) -> AtlasQuery:
        """Reconstruct this feature space (default: the first pointer field of the schema)."""
        resolve_feature_space(self._atlas.feature_spaces, feature_space)
        self._feature_space = feature_space
        return self

    def layers(self, feature_space: str, layer: str) -> AtlasQuery:
        """Reconstruct ``layer`` of ``feature_space``."""
        resolve_feature_space(self._atlas.feature_spaces, feature_space).check_layer(layer)
        self._feature_space, self._layer = feature_space, layer
        return self

    def features(self, names_or_uids: Sequence[str], feature_space: str) -> AtlasQuery:
        """Only these features, as columns in the order given (registry uids, or symbols where not a uid).

        A symbol shared by several registry features (e.g. a duplicated mouse symbol) yields all of them.
        Combined with ``feature_join("intersection")``, features not measured by every dataset are dropped.
        """
        if isinstance(names_or_uids, str) or not len(names_or_uids):
            raise QueryError(f"features() needs a non-empty list of names, got {names_or_uids!r}")
        resolve_feature_space(self._atlas.feature_spaces, feature_space)
        self._features = (feature_space, list(names_or_uids))
        self._feature_space = feature_space
        return self

    def feature_join(self, join: Join) -> AtlasQuery:
        """``"union"`` (every feature any selected dataset measured) or ``"intersection"`` (shared by all)."""
        if join not in ("union", "intersection"):
            raise QueryError(f"feature_join must be 'union' or 'intersection', got {join!r}")
        self._join = join
        return self

    # ------------------------------------------------------------------------------ terminals
    def _filter(self) -> str | None:
        """The user's filters, ANDed, plus the one hiding uncommitted cell rows when there are any."""
        filters = [*self._filters, visible_cells_filter(self._atlas)]
        return " AND ".join(f"({f})" for f in filters if f is not None) or None

    def _builder(self) -> LanceQueryBuilder:
        cells = self._atlas._tables.cells
        limit = self._limit
        if self._search is None:
            builder = cells.search()
        else:
            kind = self._search["query_type"]
            if kind != "fts" and limit is None:
                raise QueryError(
                    f"{kind} search needs an explicit .limit(n): results are never capped silently"
                )
            query = self._search["query"]
            options = {
                "vector_column_name": self._search["vector_column_name"],
                "fts_columns": self._search["fts_columns"],
            }
            if kind == "hybrid":
                vector, text = query
                builder = cells.search(query_type="hybrid", **options)
                builder = builder.vector(np.asarray(vector, dtype=np.float32)).text(text)
            else:
                if kind == "vector":
                    query = np.asarray(query, dtype=np.float32)
                builder = cells.search(query, query_type=kind, **options)
            if limit is None:  # text search: every match, not lancedb's default of 10
                limit = max(cells.count_rows(), 1)
        where = self._filter()
        if where is not None:
            builder = builder.where(where, prefilter=True) if self._search else builder.where(where)
        if self._columns is not None:
            builder = builder.select(self._selected_columns())
        if limit is not None:
            builder = builder.limit(limit)
        return builder

    def _selected_columns(self) -> list[str] | None:
        """The cell columns :meth:`select` keeps (identity and pointers always), None for all."""
        if self._columns is None:
            return None
        schema = self._atlas._cell_arrow
        keep = {"uid", "dataset_uid", *pointer_fields_from_arrow(schema), *self._columns}
        return [n for n in schema.names if n in keep]

    def _scan(self, columns: list[str] | None, where: str | None) -> pa.Table:
        """The rows of the cell table matching ``where`` (:meth:`_filter`), read by pylance in one pass.

        lancedb's query path costs ~5 ms per call and a round trip per 1,024-row batch; the Lance dataset
        underneath (opened once per snapshot-pinned handle) answers the same filter directly.
        """
        cells = self._atlas._pinned("cells_dataset", self._atlas._tables.cells.to_lance)
        return cells.to_table(columns=columns, filter=where, limit=self._limit)

    def _rows(self, columns: list[str] | None = None) -> pa.Table:
        """The matching rows (``columns``, else those of :meth:`select`): a search in rank order, or scan."""
        columns = self._selected_columns() if columns is None else columns
        if self._search is None:
            return self._scan(columns, self._filter())
        builder = self._builder()
        return (builder if columns is None else builder.select(columns)).to_arrow()

    def to_arrow(self) -> pa.Table:
        """The matching cell rows (metadata and pointers), in query (or search-rank) order."""
        try:
            table = self._rows()
        except (ValueError, RuntimeError, OSError) as exc:
            raise QueryError(f"query failed for filter {self._filter()!r}: {exc}") from exc
        renames = {"_distance": "distance", "_score": "score", "_relevance_score": "score"}
        return table.rename_columns([renames.get(n, n) for n in table.column_names])

    def to_pandas(self) -> pd.DataFrame:
        """The matching cell rows as a pandas frame."""
        return self.to_arrow().to_pandas()

    def to_polars(self) -> pl.DataFrame:
        """The matching cell rows as a polars frame."""
        import polars as pl

        return pl.from_arrow(self.to_arrow())

    def count(self, group_by: str | None = None) -> int | pd.Series:
        """Number of matching cells, or cells per value of ``group_by``.

        Without ``group_by`` this is LanceDB's ``count_rows`` (no column is read); with it only the grouping
        column is read.
        """
        where = self._filter()
        if group_by is None:
            try:
                n = self._atlas._tables.cells.count_rows(where)
            except (ValueError, RuntimeError, OSError) as exc:
                raise QueryError(f"count failed for filter {where!r}: {exc}") from exc
            return min(n, self._limit) if self._limit is not None else n
        if group_by not in self._atlas._cell_arrow.names:
            raise QueryError(f"cannot group by unknown column {group_by!r}")
        try:
            column = self._scan([group_by], where).column(group_by)
        except (ValueError, RuntimeError, OSError) as exc:
            raise QueryError(f"count failed for filter {where!r}: {exc}") from exc
        counts = pc.value_counts(column).flatten()
        series = pd.Series(
            counts[1].to_numpy(), index=pd.Index(counts[0].to_pylist(), name=group_by), name="cells"
        )
        return series.sort_values(ascending=False)

    def _space(self) -> str:
        return self._feature_space or next(iter(pointer_fields_from_arrow(self._atlas._cell_arrow)))

    def _feature_indices(self, feature_space: str) -> np.ndarray | None:
        if self._features is None:
            return None
        space, names = self._features
        if space != feature_space:
            raise QueryError(f"features() were given for {space!r} but {feature_space!r} is reconstructed")
        view = registry_view(self._atlas, space)
        indices, unknown = [], []
        for name in names:
            if name in view.by_uid.index:
                indices.append(int(view.by_uid[name]))
            elif name in view.by_symbol:
                indices.extend(view.by_symbol[name])
            else:
                unknown.append(name)
        if unknown:
            raise QueryError(f"{len(unknown)} features are not in the {space!r} registry: {unknown[:10]}")
        return np.asarray(list(dict.fromkeys(indices)), dtype=np.int64)

    def _plan(self, pointers: pa.Array) -> ReconstructionPlan:
        space = self._space()
        return plan_reconstruction(
            self._atlas, pointers, space, self._layer, self._join, self._feature_indices(space)
        )

    def to_anndata(self) -> ad.AnnData:
        """Reconstruct the matching cells as one AnnData (rows in query order).

        ``X`` is CSR for sparse feature spaces and dense for dense ones; ``var`` comes from the registry;
        ``varm["presence"]`` says which features each dataset measured.
        """
        cells = self.to_arrow()
        return reconstruct(self._atlas, cells, self._plan(cells.column(self._space())))

    def to_mudata(self, feature_spaces: Sequence[str] | None = None) -> MuData:
        """One AnnData per feature space (every pointer field by default), cells aligned by uid.

        Each modality holds the matching cells that carry that modality; ``mdata.obsm[<space>]`` (a MuData
        convention) says which cells have it. Layers per space come from ``layers()`` or are inferred.
        """
        from mudata import MuData

        spaces = list(feature_spaces or pointer_fields_from_arrow(self._atlas._cell_arrow))
        cells = self.to_arrow()
        modalities = {}
        for space in spaces:
            resolve_feature_space(self._atlas.feature_spaces, space)
            has = cells.filter(pc.is_valid(cells.column(space)))
            layer = self._layer if space == self._feature_space else None
            features = self._feature_indices(space) if self._features and self._features[0] == space else None
            plan = plan_reconstruction(self._atlas, has.column(space), space, layer, self._join, features)
            modalities[space] = reconstruct(self._atlas, has, plan)
        return MuData(modalities)

    def to_batches(self, batch_size: int = 10_000) -> Iterator[ad.AnnData]:
        """Stream the result as AnnData batches of at most ``batch_size`` cells, all with the same ``var``.

        Only the pointer column is read up front (to plan the columns, registry and layouts read once);
        metadata and matrix values are read batch by batch, so memory is bounded by the batch.
        """
        if batch_size < 1:
            raise QueryError(f"batch_size must be positive, got {batch_size}")
        space = self._space()
        pointers = copy.copy(self)
        pointers._columns = []  # the same rows (search and limit included), pointer columns only
        plan = self._plan(pointers.to_arrow().column(space))
        pending: list[pa.RecordBatch] = []
        buffered = 0
        for batch in self._builder().to_batches(batch_size):
            pending.append(batch)
            buffered += batch.num_rows
            while buffered >= batch_size:
                table = pa.Table.from_batches(pending)
                yield reconstruct(self._atlas, table.slice(0, batch_size), plan)
                rest = table.slice(batch_size)
                pending, buffered = rest.to_batches(), rest.num_rows
        if buffered:
            yield reconstruct(self._atlas, pa.Table.from_batches(pending), plan)

    def to_cell_dataset(
        self,
        feature_space: str,
        layer: str,
        metadata_columns: Sequence[str] = (),
        features: FeatureSelection = None,
    ) -> CellDataset:
        """A map-style PyTorch dataset of the matching cells (positions follow the query or search order).

        ``features`` fixes the output columns: ``None`` (registry global index space), ``"union"``,
        ``"intersection"`` or a list of registry uids. See :class:`lancell.dataloader.CellDataset`.
        """
        from lancell.dataloader import CellDataset  # torch is an optional dependency

        return CellDataset.from_query(
            self, feature_space, layer, metadata_columns=metadata_columns, features=features
        )
