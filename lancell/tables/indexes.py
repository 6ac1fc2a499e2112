"""Indexes on the cell table, (re)built by ``optimize()``: full-text on chosen columns, ANN on embeddings.

Vector columns get an IVF-PQ index once the table holds ``VECTOR_INDEX_MIN_ROWS`` cells; below that, search
is exact (a flat scan is both exact and fast at that size), and an index built while the table was larger
(before datasets were deleted) is dropped.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lancell.tables.stored_fields import vector_fields

if TYPE_CHECKING:
    from lancedb.table import Table

__all__ = ["VECTOR_INDEX_MIN_ROWS", "build_indexes"]

log = logging.getLogger(__name__)

VECTOR_INDEX_MIN_ROWS = 100_000


def build_indexes(
    cells: Table, fts_columns: Sequence[str], *, vector_min_rows: int = VECTOR_INDEX_MIN_ROWS
) -> list[str]:
    """Build the cell table's indexes; return the names of the indexed columns.

    A vector column's index is dropped while the table holds fewer than ``vector_min_rows`` rows: its
    searches scan every row (exact), as documented for that size.
    """
    built = []
    rows = cells.count_rows()
    if rows == 0:
        return built
    for column in fts_columns:
        with warnings.catch_warnings():  # deprecated name, but the sync API's only FTS entry point here
            warnings.simplefilter("ignore", DeprecationWarning)
            cells.create_fts_index(column, replace=True, with_position=True)  # (phrase search: "T cell")
        built.append(column)
    for column, width in vector_fields(cells.schema).items():
        if rows < vector_min_rows:
            for index in cells.list_indices():
                if list(index.columns) == [column]:  # built above the threshold, before deletions
                    cells.drop_index(index.name)
                    log.info("index %s on %s dropped: %d rows search exactly", index.name, column, rows)
            continue
        sub_vectors = next(d for d in (16, 8, 4, 2, 1) if width % d == 0)
        partitions = max(1, min(1024, rows // 4096))
        cells.create_index(
            metric="l2",
            num_partitions=partitions,
            num_sub_vectors=sub_vectors,
            vector_column_name=column,
            index_type="IVF_PQ",
            replace=True,
        )
        log.info("IVF-PQ index on %s: %d partitions, %d sub-vectors", column, partitions, sub_vectors)
        built.append(column)
    return built
