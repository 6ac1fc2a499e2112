"""Cell rows tallied for :func:`lancell.validation.find_problems`: cells per dataset and per zarr group, and
whether cell uids are unique, streamed in bounded memory (uid hashes sorted in buckets spilled to disk)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lancell.tables.pinned_table import lance_sql
from lancell.tables.visibility import visible_cells_filter

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["BUCKET_CELLS", "HashBuckets", "cell_tallies", "value_counts"]

_BATCH = 65_536
BUCKET_CELLS = 1 << 22  # uid hashes sorted at once (32 MiB); more cells spill to buckets on disk


def value_counts(column: pa.Array | pa.ChunkedArray) -> dict[object, int]:
    values, counts = pc.value_counts(column).flatten()
    return dict(zip(values.to_pylist(), counts.to_pylist(), strict=True))


def _uid_hashes(uids: pa.Array) -> np.ndarray:
    """64-bit hashes of cell uids (polars' hash, seed 0)."""
    import polars as pl  # hashing only; not needed on import

    return pl.from_arrow(uids).hash(seed=0).to_numpy()


class HashBuckets:
    """Uid hashes split by value into buckets spilled to disk, so that finding repeated hashes sorts one
    bucket at a time: memory is bounded by the bucket size (``BUCKET_CELLS`` hashes when uniform), not by
    the number of cells. With one bucket the hashes stay in memory."""

    def __init__(self, n_cells: int, folder: str) -> None:
        self.n_buckets = max(1, -(-n_cells // BUCKET_CELLS))
        self.paths = [os.path.join(folder, f"bucket{b}.u64") for b in range(self.n_buckets)]
        self.held: list[np.ndarray] = []

    def add(self, hashes: np.ndarray) -> None:
        if self.n_buckets == 1:
            self.held.append(hashes)
            return
        bucket = hashes % np.uint64(self.n_buckets)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.n_buckets + 1))
        for b, path in enumerate(self.paths):
            if bounds[b + 1] > bounds[b]:
                with open(path, "ab") as f:
                    hashes[order[bounds[b] : bounds[b + 1]]].tofile(f)

    def repeated(self) -> np.ndarray:
        """The hash values seen more than once."""
        found = [np.zeros(0, np.uint64)]
        for path in self.paths:
            if self.n_buckets == 1:
                values = np.concatenate([np.zeros(0, np.uint64), *self.held])
            elif os.path.exists(path):
                values = np.fromfile(path, dtype=np.uint64)
            else:
                continue
            values.sort()
            found.append(np.unique(values[1:][values[1:] == values[:-1]]))
            del values
        return np.concatenate(found)


def cell_tallies(core: AtlasCore, where: str | None = None) -> tuple[Counter, Counter, bool]:
    """Cells per dataset, cells per zarr group, and whether cell uids are unique, in bounded memory.

    The visible cell rows are streamed in batches; uniqueness is checked on 64-bit hashes of the uids, split
    into buckets of at most about ``BUCKET_CELLS`` hashes (spilled to a temporary folder when there are
    several) and sorted one bucket at a time; only a repeated hash triggers an exact check of the uids that
    carry it (a second streamed pass). ``where`` limits the tally to the cell rows it selects.
    """
    hidden = visible_cells_filter(core)  # rows of an interrupted ingestion are debris, not a problem
    hidden = " AND ".join(f"({f})" for f in (hidden, where) if f) or None
    cells = core.tables.cells

    def scan(columns: list[str]) -> Iterator[pa.RecordBatch]:  # pylance: a checkout never loads lancedb
        where = lance_sql(hidden) if hidden else None
        return cells.to_lance().to_batches(columns=columns, filter=where, batch_size=_BATCH)

    per_dataset: Counter = Counter()
    per_group: Counter = Counter()
    with tempfile.TemporaryDirectory(prefix="lancell-validate-") as folder:
        buckets = HashBuckets(cells.count_rows(hidden), folder)
        for batch in scan(["uid", "dataset_uid", *core.feature_spaces]):
            per_dataset.update(value_counts(batch.column("dataset_uid")))
            for space in core.feature_spaces:
                pointer = batch.column(space)
                per_group.update(
                    value_counts(pc.struct_field(pointer.filter(pointer.is_valid()), "zarr_group"))
                )
            buckets.add(_uid_hashes(batch.column("uid")))
        colliding = buckets.repeated()
    if not colliding.size:
        return per_dataset, per_group, True
    suspects = [
        batch.column("uid").filter(pa.array(np.isin(_uid_hashes(batch.column("uid")), colliding)))
        for batch in scan(["uid"])
    ]
    suspects = pa.chunked_array(suspects, pa.string())
    return per_dataset, per_group, pc.count_distinct(suspects).as_py() == len(suspects)
