"""Collates: a :class:`CellBatch` (already one batch: the dataset reads whole batches) -> dict of tensors.

They run inside the DataLoader workers. Each returns ``{"X": ..., "index": ..., "group": ..., <metadata>}``
and, on request, ``"presence"`` (bool, B x n_features). Metadata columns come as tensors: categorical codes as
int64 (``-1`` for null; labels in ``CellDataset.categories``), numbers in their own dtype. Collates are small
classes so that a configured instance pickles into spawned workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lancell.dataloader.batch import CellBatch

__all__ = ["DenseCollate", "SparseCollate", "collate_dense", "collate_sparse"]


def _common(batch: CellBatch, presence: bool) -> dict[str, torch.Tensor]:
    out = {
        "index": torch.from_numpy(batch.index),
        "group": torch.from_numpy(batch.group.astype(np.int64)),
    }
    for name, values in batch.metadata.items():
        out[name] = torch.from_numpy(values.astype(np.int64) if values.dtype.kind == "i" else values)
    if presence:
        out["presence"] = torch.from_numpy(batch.presence)
    return out


def _row_ids(batch: CellBatch) -> np.ndarray:
    return np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(batch.offsets))


def _scale(totals: np.ndarray, target_sum: float) -> np.ndarray:
    """Per-row factor bringing each total to ``target_sum`` (rows summing to 0 stay 0)."""
    return np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)


@dataclass(frozen=True)
class SparseCollate:
    """Sparse batch -> ``X`` as ``torch.sparse_csr_tensor`` (B x n_features).

    Parameters
    ----------
    dtype
        Value dtype of ``X`` (default float32; counts are exact below 2**24).
    presence
        Also return the ``presence`` mask.
    """

    dtype: torch.dtype = torch.float32
    presence: bool = False

    def __call__(self, batch: CellBatch) -> dict[str, torch.Tensor]:
        if batch.kind != "sparse":
            raise TypeError("SparseCollate needs a sparse batch; use DenseCollate for dense feature spaces")
        values = batch.values
        if self.dtype == torch.float32 and values.dtype != np.float32:
            values = values.astype(np.float32)  # one numpy pass; torch's .to() from uint32 is much slower
        small = batch.offsets[-1] <= np.iinfo(np.int32).max  # int32 indices: no copy of the column array
        offsets = batch.offsets.astype(np.int32) if small else batch.offsets
        x = torch.sparse_csr_tensor(
            torch.from_numpy(offsets),
            torch.from_numpy(batch.indices if small else batch.indices.astype(np.int64)),
            torch.from_numpy(values).to(self.dtype),
            size=(len(batch), batch.n_features),
            check_invariants=False,  # built sorted and in bounds by the dataset
        )
        return {"X": x, **_common(batch, self.presence)}


@dataclass(frozen=True)
class DenseCollate:
    """Any batch -> ``X`` as a dense float32 tensor (B x n_features), optionally normalized on the fly.

    Parameters
    ----------
    normalize
        Scale every cell to ``target_sum`` total over the output features, then ``log1p`` (if ``log1p``).
    target_sum
        Library size after scaling.
    log1p
        Apply ``log1p`` after scaling (only with ``normalize``).
    presence
        Also return the ``presence`` mask.
    """

    normalize: bool = False
    target_sum: float = 1e4
    log1p: bool = True
    presence: bool = False

    def __call__(self, batch: CellBatch) -> dict[str, torch.Tensor]:
        n = len(batch)
        if batch.kind == "sparse":
            x = np.zeros((n, batch.n_features), dtype=np.float32)
            rows = _row_ids(batch)
            values = batch.values.astype(np.float32)
            if self.normalize:
                totals = np.bincount(rows, weights=batch.values, minlength=n)
                values = (batch.values * _scale(totals, self.target_sum)[rows]).astype(np.float32)
                if self.log1p:
                    np.log1p(values, out=values)
            x[rows, batch.indices] = values
        else:
            x = batch.dense.astype(np.float32)
            if self.normalize:
                totals = batch.dense.sum(axis=1, dtype=np.float64)
                x = (batch.dense * _scale(totals, self.target_sum)[:, None]).astype(np.float32)
                if self.log1p:
                    np.log1p(x, out=x)
        return {"X": torch.from_numpy(x), **_common(batch, self.presence)}


collate_sparse = SparseCollate()
collate_dense = DenseCollate()
