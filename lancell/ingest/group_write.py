"""Write a dataset's arrays into its new zarr group: the second step of a
:class:`~lancell.ingest.write_transaction.WriteTransaction`.

Sparse layers stream block by block on one shared pattern (:mod:`lancell.ingest.layer_blocks`) into a
:class:`~lancell.storage.groups.SparseGroupWriter`, each block also recorded for the CSC copy and fed to the
content hashers; dense layers are checked block by block into a
:class:`~lancell.storage.groups.DenseGroupWriter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from lancell.errors import IngestError
from lancell.ingest.blocks import checked_values, dense_place
from lancell.ingest.layer_blocks import layer_blocks
from lancell.ingest.sources import stored_dtype
from lancell.storage.groups import DenseGroupWriter, SparseGroupWriter

if TYPE_CHECKING:
    from lancell.core import AtlasCore
    from lancell.ingest.fingerprint import ContentHasher
    from lancell.ingest.plan import IngestPlan
    from lancell.ingest.sources import MatrixSource
    from lancell.storage.csc_blocks import CsrBlocks
    from lancell.tables.feature_spaces import FeatureSpace

__all__ = ["write_group"]


def write_group(
    core: AtlasCore,
    plan: IngestPlan,
    space: FeatureSpace,
    zarr_group: str,
    layers: Mapping[str, MatrixSource],
    progress: bool,
    written: CsrBlocks | None = None,
    hashers: Mapping[str, ContentHasher] | None = None,
    guard: Callable[[], None] | None = None,
) -> np.ndarray:
    """Stream ``layers`` (stored layer name -> source) into a new zarr group; return the per-cell element
    offsets (indptr). Sparse layers share one pattern (:mod:`lancell.ingest.layer_blocks`). Sparse blocks are
    also recorded in ``written`` (for the CSC copy) and each layer's stored blocks fed to its hasher in
    ``hashers`` when given. ``guard`` is called before each shard is stored (the dataset's lease checked).

    Raises
    ------
    IngestError
        A bad value (``DataValueError``), or fewer or more values than planned.
    """
    n_features = len(plan.feature_uids)
    hashers = hashers or {}
    bar = tqdm(
        total=plan.n_cells, desc=f"ingest {plan.dataset}", unit="cell", disable=not progress, leave=False
    )
    dtypes = {name: stored_dtype(source) for name, source in layers.items()}
    common = {
        "n_cells": plan.n_cells,
        "n_features": n_features,
        "layers": dtypes,
        "atlas_id": core.group_claims.atlas_id,
        "guard": guard,
    }
    with bar:
        if space.kind == "sparse":
            with SparseGroupWriter(core.zarr_root, zarr_group, nnz=plan.nnz, **common) as writer:
                for row0, indptr, indices, values, _ in layer_blocks(layers, plan.stored_column):
                    writer.append(indptr, indices, values)
                    for name, hasher in hashers.items():
                        hasher.add_csr(indptr, indices, values[name])
                    if written is not None:
                        written.add(row0, indptr, indices, values)
                    bar.update(indptr.size - 1)
                indptr = writer.close({**_group_attrs(plan, space), "zero_fill": plan.zero_fill})
        else:
            with DenseGroupWriter(core.zarr_root, zarr_group, **common) as writer:
                streams = [source.dense_blocks() for source in layers.values()]  # same rows: same shape
                for blocks in zip(*streams, strict=True):
                    row0, shape = blocks[0][0], blocks[0][1].shape
                    rows = {}
                    for name, (_, block) in zip(layers, blocks, strict=True):
                        place = dense_place(row0, shape[1])
                        values = checked_values(plan.dataset, name, block.ravel(), row0, place).reshape(shape)
                        rows[name] = (
                            values
                            if plan.stored_column is None
                            else values[:, np.argsort(plan.stored_column)]
                        )
                        if name in hashers:
                            hashers[name].add_dense(rows[name])
                    writer.append(rows)
                    bar.update(shape[0])
                writer.close(_group_attrs(plan, space))
            indptr = np.arange(plan.n_cells + 1, dtype=np.int64) * n_features
    if int(indptr[-1]) != plan.nnz:
        raise IngestError(f"dataset {plan.dataset!r}: wrote {int(indptr[-1])} values, expected {plan.nnz}")
    return indptr


def _group_attrs(plan: IngestPlan, space: FeatureSpace) -> dict[str, object]:
    return {
        "feature_space": space.name,
        "layout_uid": plan.layout_uid,
        "n_features": len(plan.feature_uids),
        "dataset_uid": plan.dataset,
        # the input listed its features in another order than stored (increasing global index): a layer
        # added later as a plain matrix in the input's order would put values under other features
        "var_reordered": plan.stored_column is not None,
    }
