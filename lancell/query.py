"""``AtlasQuery``: a lazy, chainable query over the cell table, reconstructed into AnnData on demand.

``where()`` calls combine with AND (``q.where("a").where("b")`` means ``(a) AND (b)``). Rows come back in
the order the cell table returns them for the filter (scan order), never regrouped by dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import anndata as ad
import pyarrow as pa

from lancell.errors import QueryError
from lancell.feature_spaces import resolve_feature_space
from lancell.reconstruct import Join, reconstruct
from lancell.schema import pointer_fields_from_arrow

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["AtlasQuery"]


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

    def where(self, sql: str) -> AtlasQuery:
        """Add a SQL filter on cell columns (ANDed with earlier filters)."""
        if not isinstance(sql, str) or not sql.strip():
            raise QueryError(f"where() needs a non-empty SQL string, got {sql!r}")
        self._filters.append(sql)
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

    def feature_join(self, join: Join) -> AtlasQuery:
        """``"union"`` (every feature any selected dataset measured) or ``"intersection"`` (shared by all)."""
        if join not in ("union", "intersection"):
            raise QueryError(f"feature_join must be 'union' or 'intersection', got {join!r}")
        self._join = join
        return self

    # ------------------------------------------------------------------------------ terminals
    def _filter(self) -> str | None:
        return " AND ".join(f"({f})" for f in self._filters) if self._filters else None

    def to_arrow(self) -> pa.Table:
        """The matching cell rows (metadata and pointers), in query order."""
        builder = self._atlas._tables.cells.search()
        where = self._filter()
        if where is not None:
            builder = builder.where(where)
        if self._columns is not None:
            schema = self._atlas._cell_arrow
            keep = {"uid", "dataset_uid", *pointer_fields_from_arrow(schema), *self._columns}
            builder = builder.select([n for n in schema.names if n in keep])
        if self._limit is not None:
            builder = builder.limit(self._limit)
        try:
            return builder.to_arrow()
        except (ValueError, RuntimeError, OSError) as exc:
            raise QueryError(f"query failed for filter {where!r}: {exc}") from exc

    def to_pandas(self):
        """The matching cell rows as a pandas frame."""
        return self.to_arrow().to_pandas()

    def count(self) -> int:
        """Number of matching cells (``count_rows``; no column is read)."""
        where = self._filter()
        try:
            n = self._atlas._tables.cells.count_rows(where)
        except (ValueError, RuntimeError, OSError) as exc:
            raise QueryError(f"count failed for filter {where!r}: {exc}") from exc
        return min(n, self._limit) if self._limit is not None else n

    def to_anndata(self) -> ad.AnnData:
        """Reconstruct the matching cells as one AnnData (rows in query order).

        ``X`` is CSR for sparse feature spaces and dense for dense ones; ``var`` comes from the registry;
        ``varm["presence"]`` says which features each dataset measured.
        """
        space = self._feature_space or next(iter(pointer_fields_from_arrow(self._atlas._cell_arrow)))
        return reconstruct(self._atlas, self.to_arrow(), space, self._layer, self._join)
