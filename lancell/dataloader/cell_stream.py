"""A query's cells read for the loader in record batches, each reduced at once to compact per-cell arrays.

Only ``dataset_uid``, the feature space's pointer column and the requested metadata columns are read (never
``uid``), a batch of rows at a time; every batch becomes an int32 code of its (dataset, zarr group) pair, an
int64 element start (sparse) or row (dense), an int32 stored-value count and the metadata codes, so the peak
during construction is one batch plus these arrays (docs/architecture.md, "Training data loading"). The
query's plan is computed from the pair codes as dictionary-encoded Arrow columns (``AtlasQuery.plan_for``):
the same plan, policy and messages as ``to_anndata()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lancell.dataloader.metadata import EncodedMetadata, LabelCodes, MetadataEncoder, lookup_codes
from lancell.errors import QueryError, UnmeasuredDataError

if TYPE_CHECKING:
    from lancell.query.cell_selection import CellSelection
    from lancell.query.plan import PlannedCells, ReconstructionPlan

    PlanFor = Callable[[pa.Table], PlannedCells]  # a query's AtlasQuery.plan_for

__all__ = ["BATCH_ROWS", "StreamedCells", "stream_cells"]

BATCH_ROWS = 65_536  # rows per record batch read: ~5 MB of pointer structs and dataset uids


@dataclass
class StreamedCells:
    """A query's cells as compact arrays, after its plan and unmeasured-cell policy.

    Attributes
    ----------
    plan
        The query's :class:`~lancell.query.plan.ReconstructionPlan`.
    group
        int32 (n_cells,): index into :attr:`group_names` (``-1``: no data in the feature space).
    group_names
        Zarr group of each group code, in order of first appearance among the cells.
    position
        int64 (n_cells,): element start (sparse) or row (dense) in the group.
    nnz
        int32 (n_cells,): stored values of each cell (sparse; 0 where the pointer is null), None when dense.
    metadata
        The metadata columns of the cells.
    """

    plan: ReconstructionPlan
    group: np.ndarray
    group_names: list[str]
    position: np.ndarray
    nnz: np.ndarray | None
    metadata: EncodedMetadata


def _read_rows(selection: CellSelection, columns: list[str]) -> tuple[int, Iterator[pa.RecordBatch]]:
    """How many rows the selection has and its rows' ``columns`` in record batches: a pylance scan of one
    table version (counted on the same version first), or a search's ranked rows."""
    if selection.search is not None:  # a ranked search returns its (limited) rows at once
        table = selection.read(columns)
        return table.num_rows, iter(table.to_batches(BATCH_ROWS))
    return selection.scan_batches(columns, BATCH_ROWS)


class _PairCodes:
    """Codes of the (dataset uid, zarr group) pairs of the cells, in order of first appearance."""

    def __init__(self) -> None:
        self.datasets, self.groups = LabelCodes(), LabelCodes()
        self.pairs: dict[int, int] = {}  # dataset code << 32 | (group code + 1) -> pair code

    def encode(self, dataset_uid: pa.Array, zarr_group: pa.Array) -> np.ndarray:
        key = self.datasets.encode(dataset_uid).astype(np.int64) << 32
        key |= self.groups.encode(zarr_group).astype(np.int64) + 1
        unique, inverse = np.unique(key, return_inverse=True)
        codes = np.asarray([self.pairs.setdefault(int(k), len(self.pairs)) for k in unique], dtype=np.int32)
        return codes[inverse.reshape(-1)]

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """int64 dataset code, group code (``-1``: null pointer) and dataset uid of each pair code."""
        keys = np.fromiter(self.pairs, dtype=np.int64, count=len(self.pairs))
        dataset = keys >> 32
        return dataset, (keys & 0xFFFFFFFF) - 1, np.asarray(self.datasets.names(), dtype=object)[dataset]


def _planned_table(pair: np.ndarray, codes: _PairCodes, feature_space: str) -> pa.Table:
    """``dataset_uid`` and the pointer's ``zarr_group`` of the rows ``pair`` (pair codes) as dictionary
    columns over the pairs (a view of ``pair`` shared by both, plus a validity bitmap)."""
    _, group, uids = codes.columns()
    names = np.asarray([*codes.groups.names(), ""], dtype=object)[group]  # "": a null pointer's, never read
    indices = pa.array(pair)
    zarr_group = pa.DictionaryArray.from_arrays(indices, pa.array(names.tolist(), pa.string()))
    pointer = pa.StructArray.from_arrays([zarr_group], names=["zarr_group"], mask=pa.array(group[pair] < 0))
    dataset_uid = pa.DictionaryArray.from_arrays(indices, pa.array(uids.tolist(), pa.string()))
    return pa.table({"dataset_uid": dataset_uid, feature_space: pointer})


def _plan(
    plan_for: PlanFor, pair: np.ndarray, codes: _PairCodes, feature_space: str
) -> tuple[ReconstructionPlan, np.ndarray]:
    """The query's plan of the cells ``pair``, and whether each pair code is measured.

    Planned from one row per pair: the same plan as from every cell when no cell is unmeasured. Otherwise
    the counts (``unmeasured``, the error's message) need every cell: planned again from all of them (Arrow
    decodes the dictionary column then, ~40 B per cell while it plans).
    """
    pairs = _planned_table(np.arange(len(codes.pairs), dtype=np.int32), codes, feature_space)
    try:
        plan = plan_for(pairs).plan
    except UnmeasuredDataError:
        plan = None
    if plan is None or plan.unmeasured:
        plan = plan_for(_planned_table(pair, codes, feature_space)).plan
    return plan, plan.measured(pairs.column(feature_space))


def stream_cells(
    selection: CellSelection, plan_for: PlanFor, feature_space: str, kind: str, metadata: MetadataEncoder
) -> StreamedCells:
    """Read the cells of ``selection`` in record batches and plan them with ``plan_for`` (the
    ``AtlasQuery.plan_for`` of the query reading ``feature_space``).

    ``kind`` is the feature space's (``"sparse"`` reads ``start``/``end``, ``"dense"`` ``position``);
    ``metadata`` encodes its columns batch by batch and is finished here on the planned cells.

    Raises
    ------
    QueryError
        A bad filter, or a cell of more than 2**31 stored values; what ``plan_for`` raises
        (``UnmeasuredDataError``, ``GroupNotFoundError``).
    """
    columns = list(dict.fromkeys(["dataset_uid", feature_space, *metadata.names]))
    n, batches = _read_rows(selection, columns)
    codes = _PairCodes()
    pair, position = np.empty(n, np.int32), np.empty(n, np.int64)
    nnz = np.empty(n, np.int32) if kind == "sparse" else None
    metadata.allocate(n)
    at = 0
    for batch in batches:
        stop = at + batch.num_rows
        if stop > n:
            raise QueryError(f"the cell table returned more than the {n} rows it counted for this query")
        pointer = batch.column(feature_space)
        pair[at:stop] = codes.encode(batch.column("dataset_uid"), pc.struct_field(pointer, "zarr_group"))
        if nnz is not None:
            start = pc.struct_field(pointer, "start").fill_null(0).to_numpy(zero_copy_only=False)
            end = pc.struct_field(pointer, "end").fill_null(0).to_numpy(zero_copy_only=False)
            length = end.astype(np.int64) - start
            if length.size and int(length.max()) > np.iinfo(np.int32).max:
                raise QueryError("a cell has more than 2**31 stored values")
            nnz[at:stop] = length
        else:
            start = pc.struct_field(pointer, "position").fill_null(0).to_numpy(zero_copy_only=False)
        position[at:stop] = start
        metadata.add(batch, at)
        at = stop
    if at != n:
        raise QueryError(f"the cell table returned {at} of the {n} rows it counted for this query")
    plan, measured = _plan(plan_for, pair, codes, feature_space)
    keep = measured[pair] if plan.on_unmeasured == "drop" else None
    if keep is not None:
        pair, position = pair[keep], position[keep]
        nnz = None if nnz is None else nnz[keep]
    encoded = metadata.finish(keep)
    group, names = _group_codes(pair, codes, None if keep is None else measured)
    return StreamedCells(plan, group, names, position, nnz, encoded)


def _group_codes(
    pair: np.ndarray, codes: _PairCodes, kept: np.ndarray | None
) -> tuple[np.ndarray, list[str]]:
    """Each cell's group code among the groups of the pairs ``kept`` (bool per pair code; None: all), in
    order of first appearance, written over ``pair``; ``-1`` for a null pointer."""
    _, group, _ = codes.columns()
    used = np.zeros(len(codes.groups.names()) + 1, dtype=bool)
    used[group if kept is None else group[kept]] = True  # a null pointer marks the trailing slot, dropped
    used = used[:-1]
    renumber = np.full(used.size + 1, -1, dtype=np.int32)
    renumber[np.flatnonzero(used)] = np.arange(int(used.sum()), dtype=np.int32)
    lookup_codes(pair, renumber[group], out=pair)
    return pair, [name for name, u in zip(codes.groups.names(), used, strict=True) if u]
