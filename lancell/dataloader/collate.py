"""Collates: a :class:`CellBatch` (already one batch: the dataset reads whole batches) -> dict of tensors.

They run inside the DataLoader workers. Each returns ``{"X": ..., "index": ..., "group": ..., <metadata>}``,
with several requested layers ``"layers": {name: tensor}`` for every layer after the first (as
``to_anndata()`` puts the first in ``X`` and the others in ``adata.layers``), and on request ``"presence"``
(bool, B x n_features). Metadata columns come as tensors: categorical codes as int64 (``-1`` for null; labels
in ``CellDataset.categories``), numbers in their own dtype. Collates are small classes so that a configured
instance pickles into spawned workers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np
import torch

from lancell.dataloader.batch import CellBatch, SparseRows
from lancell.dataloader.checks import EXACT_DTYPES, check_exact, check_normalizable, flag, real
from lancell.errors import ArgumentError, LancellWarning, QueryError, caller_outside_lancell

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


def _sparse_layers(batch: CellBatch) -> dict[str, SparseRows]:
    """Every layer of a sparse batch, the first (``X``) included, in request order."""
    return {"X": SparseRows(batch.offsets, batch.indices, batch.values), **batch.layers}


def _row_ids(rows: SparseRows) -> np.ndarray:
    return np.repeat(np.arange(rows.offsets.size - 1, dtype=np.int64), np.diff(rows.offsets))


def _scale(totals: np.ndarray, target_sum: float) -> np.ndarray:
    """Per-row factor bringing each total to ``target_sum`` (rows summing to 0 stay 0)."""
    return np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)


def _with_layers(x: torch.Tensor, layers: dict[str, torch.Tensor]) -> dict[str, object]:
    return {"X": x, "layers": layers} if layers else {"X": x}


def _outputs(batch: CellBatch) -> list[str]:
    """Where each layer of ``batch`` goes in the output, as error messages name it."""
    return ["X", *(f"layers[{name!r}]" for name in batch.layers)]


@dataclass(frozen=True)
class SparseCollate:
    """Sparse batch -> ``X`` (and each other layer) as ``torch.sparse_csr_tensor`` (B x n_features).

    Parameters
    ----------
    dtype
        Value dtype of every layer: ``torch.float32`` (default), ``torch.float64``, ``torch.int32`` or
        ``torch.int64``, or None: each layer's own kind, as ``to_anndata()`` returns it (int64 for integer
        layers, float32 for float ones, float64 for a layer some datasets store as integers and others as
        floats). A batch whose values the dtype would change raises ``QueryError``: whole numbers beyond
        its exact range (float32: 2**24, int32: 2**31 - 1) and floats to an integer dtype; float64 values
        to float32 are rounded, as floats are.
    presence
        Also return the ``presence`` mask.

    Raises
    ------
    QueryError
        ``dtype`` is none of these (int8, uint8, float16, bfloat16 wrap or round counts; a string is not a
        dtype), ``presence`` not a bool.
    ArgumentError
        At a batch: the batch is dense (a dense feature space; ``make_loader`` refuses the pair before any
        batch). A ``TypeError``, as it was.
    """

    dtype: torch.dtype | None = torch.float32
    presence: bool = False

    def __post_init__(self) -> None:
        flag("presence", self.presence)
        if self.dtype is not None and self.dtype not in EXACT_DTYPES:
            raise QueryError(
                f"SparseCollate(dtype={self.dtype!r}): dtype must be None or one of {list(EXACT_DTYPES)}, "
                "which hold counts exactly (smaller dtypes wrap them around or round them)"
            )

    def _tensor(self, rows: SparseRows, shape: tuple[int, int], output: str) -> torch.Tensor:
        values = rows.values
        dtype = self.dtype
        if dtype is None:
            dtype = torch.float64 if values.dtype == np.float64 else torch.float32
            dtype = dtype if values.dtype.kind == "f" else torch.int64
        check_exact(values, dtype, output)
        if dtype == torch.float32 and values.dtype != np.float32:
            values = values.astype(np.float32)  # one numpy pass; torch's .to() from uint32 is much slower
        elif dtype == torch.int64 and values.dtype != np.int64:
            values = values.astype(np.int64)
        small = rows.offsets[-1] <= np.iinfo(np.int32).max  # int32 indices: no copy of the column array
        offsets = rows.offsets.astype(np.int32) if small else rows.offsets
        return torch.sparse_csr_tensor(
            torch.from_numpy(offsets),
            torch.from_numpy(rows.indices if small else rows.indices.astype(np.int64)),
            torch.from_numpy(values).to(dtype),
            size=shape,
            check_invariants=False,  # built sorted and in bounds by the dataset
        )

    def __call__(self, batch: CellBatch) -> dict[str, object]:
        if batch.kind != "sparse":
            raise ArgumentError(
                "SparseCollate needs a sparse batch; use DenseCollate for dense feature spaces"
            )
        shape = (len(batch), batch.n_features)
        layers = _sparse_layers(batch).values()
        x, *others = (
            self._tensor(rows, shape, output) for rows, output in zip(layers, _outputs(batch), strict=True)
        )
        return {
            **_with_layers(x, dict(zip(batch.layers, others, strict=True))),
            **_common(batch, self.presence),
        }


@dataclass(frozen=True)
class DenseCollate:
    """Any batch -> ``X`` (and each other layer) as a dense float32 tensor (B x n_features), ``X`` optionally
    normalized on the fly.

    Parameters
    ----------
    normalize
        Scale every cell of ``X`` (the first layer) to ``target_sum`` total over the output features, then
        ``log1p`` (if ``log1p``); the other layers come as stored. A layer that comes as stored holding
        whole numbers beyond 2**24 (which float32 rounds) raises ``QueryError`` at that batch.
    target_sum
        Library size after scaling (positive; only with ``normalize``).
    log1p
        Apply ``log1p`` after scaling (only with ``normalize``).
    presence
        Also return the ``presence`` mask.

    Raises
    ------
    QueryError
        ``normalize`` with a ``target_sum`` that is not a positive finite number; ``normalize``, ``log1p`` or
        ``presence`` not a bool; at a batch, a negative value in the layer ``normalize`` scales.

    Warns
    -----
    LancellWarning
        ``target_sum`` or ``log1p`` given without ``normalize`` (they have no effect).
    """

    normalize: bool = False
    target_sum: float = 1e4
    log1p: bool = True
    presence: bool = False

    def __post_init__(self) -> None:
        for name in ("normalize", "log1p", "presence"):
            flag(name, getattr(self, name))
        if self.normalize:
            if not real("target_sum", self.target_sum) > 0:
                raise QueryError(f"target_sum must be positive, got {self.target_sum!r}")
            return
        defaults = {option.name: option.default for option in fields(self)}
        ignored = [
            f"{name}={getattr(self, name)!r}"
            for name in ("target_sum", "log1p")
            if getattr(self, name) != defaults[name]
        ]
        if ignored:
            warnings.warn(
                f"DenseCollate: {' and '.join(ignored)} ignored: they apply with normalize=True only",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )

    def _sparse(self, rows: SparseRows, n_features: int, normalize: bool, output: str) -> np.ndarray:
        n = rows.offsets.size - 1
        x = np.zeros((n, n_features), dtype=np.float32)
        row_ids = _row_ids(rows)
        if normalize:
            check_normalizable(rows.values, output)
            # (float64 also for a batch with no stored value: bincount of no weights counts, as int64)
            totals = np.bincount(row_ids, weights=rows.values, minlength=n).astype(np.float64, copy=False)
            values = (rows.values * _scale(totals, self.target_sum)[row_ids]).astype(np.float32)
            if self.log1p:
                np.log1p(values, out=values)
        else:
            check_exact(rows.values, torch.float32, output)
            values = rows.values.astype(np.float32)
        x[row_ids, rows.indices] = values
        return x

    def _dense(self, dense: np.ndarray, normalize: bool, output: str) -> np.ndarray:
        if not normalize:
            check_exact(dense, torch.float32, output)
            return dense.astype(np.float32)
        check_normalizable(dense, output)
        totals = dense.sum(axis=1, dtype=np.float64)
        x = (dense * _scale(totals, self.target_sum)[:, None]).astype(np.float32)
        if self.log1p:
            np.log1p(x, out=x)
        return x

    def __call__(self, batch: CellBatch) -> dict[str, object]:
        outputs = _outputs(batch)
        if batch.kind == "sparse":
            layers = list(_sparse_layers(batch).values())
            arrays = [
                self._sparse(rows, batch.n_features, k == 0 and self.normalize, outputs[k])
                for k, rows in enumerate(layers)
            ]
        else:
            layers = [batch.dense, *batch.layers.values()]
            arrays = [
                self._dense(dense, k == 0 and self.normalize, outputs[k]) for k, dense in enumerate(layers)
            ]
        x, *others = (torch.from_numpy(a) for a in arrays)
        return {
            **_with_layers(x, dict(zip(batch.layers, others, strict=True))),
            **_common(batch, self.presence),
        }


collate_sparse = SparseCollate()
collate_dense = DenseCollate()
