"""Row blocks of several layers of one dataset on one shared sparsity pattern (docs/architecture.md, "A
dataset's zarr group").

Every layer of a sparse dataset group is stored on one ``csr/indices`` (and ``indptr``). At ingestion the
pattern is the union of the layers' stored entries: where all layers store the same entries (raw counts and
the normalized values computed from them) each layer's values are stored as given, explicit zeros included;
where a layer lacks an entry another layer stores (a normalized layer whose zeros were eliminated, or one
with explicit zeros outside the counts' entries), that layer stores a zero there and is listed in the
group's ``zero_fill`` attribute, so readers leave its stored zeros out and return exactly its own entries
(an explicit zero *in* such a layer is not kept: it reads as absent, which is the same matrix).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from lancell.ingest.blocks import stored_csr_blocks
from lancell.ingest.sources import MatrixSource

__all__ = ["LayerBlock", "layer_blocks", "shared_pattern"]

# (first row, indptr from 0, shared uint32 indices, {layer: values on them}, layers padded with zeros)
LayerBlock = tuple[int, np.ndarray, np.ndarray, dict[str, np.ndarray], set[str]]


class _RowStream:
    """A layer's stored blocks, re-cut at any row: :meth:`take` returns the rows up to ``stop``."""

    def __init__(self, blocks: Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        self._blocks = blocks
        self._row0 = 0
        self._indptr = np.zeros(1, dtype=np.int64)
        self._indices: np.ndarray | None = None
        self._values: np.ndarray | None = None

    def take(self, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        while self._row0 + self._indptr.size - 1 < stop:
            _, indptr, indices, values = next(self._blocks)
            base = int(self._indptr[-1])
            self._indptr = np.concatenate((self._indptr, indptr[1:].astype(np.int64) + base))
            have = self._indices is not None  # copies: the stream's buffers are reused two blocks on
            self._indices = np.concatenate((self._indices, indices)) if have else indices.copy()
            self._values = np.concatenate((self._values, values)) if have else values.copy()
        n = stop - self._row0
        end = int(self._indptr[n])
        out = self._indptr[: n + 1].copy(), self._indices[:end], self._values[:end]
        self._indptr = self._indptr[n:] - end
        self._indices, self._values = self._indices[end:], self._values[end:]
        self._row0 = stop
        return out


def _union(
    n_features: int, parts: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], set[str]]:
    """The union pattern of one block's layers and each layer's values on it (zeros where it had none)."""
    keys = {}
    for name, (indptr, indices, _) in parts.items():
        rows = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
        keys[name] = rows * n_features + indices.astype(np.int64)
    union = np.unique(np.concatenate(list(keys.values())))
    n_rows = next(iter(parts.values()))[0].size - 1
    indptr = np.concatenate(([0], np.cumsum(np.bincount(union // n_features, minlength=n_rows))))
    values, padded = {}, set()
    for name, (_, _, layer_values) in parts.items():
        out = np.zeros(union.size, dtype=layer_values.dtype)
        out[np.searchsorted(union, keys[name])] = layer_values
        values[name] = out
        if keys[name].size < union.size:
            padded.add(name)
    return indptr.astype(np.int64), (union % n_features).astype(np.uint32), values, padded


def layer_blocks(
    layers: Mapping[str, MatrixSource], stored_column: np.ndarray | None
) -> Iterator[LayerBlock]:
    """The checked, stored row blocks of every layer of ``layers`` on their shared pattern, cut where the
    first layer's blocks are cut (one layer: its blocks as :func:`stored_csr_blocks` yields them).

    Raises
    ------
    DataValueError
        The first bad column index or value of any layer, naming the layer and the rows.
    """
    names = list(layers)
    first = stored_csr_blocks(layers[names[0]], names[0], stored_column)
    if len(names) == 1:
        for row0, indptr, indices, values in first:
            yield row0, indptr, indices, {names[0]: values}, set()
        return
    n_features = next(iter(layers.values())).shape[1]
    others = {name: _RowStream(stored_csr_blocks(layers[name], name, stored_column)) for name in names[1:]}
    for row0, indptr, indices, values in first:
        stop = row0 + indptr.size - 1
        parts = {names[0]: (indptr, indices, values)}
        parts.update({name: stream.take(stop) for name, stream in others.items()})
        if all(np.array_equal(p[0], indptr) and np.array_equal(p[1], indices) for p in parts.values()):
            yield row0, indptr, indices, {name: p[2] for name, p in parts.items()}, set()
        else:
            yield row0, *_union(n_features, parts)


def shared_pattern(
    layers: Mapping[str, MatrixSource], stored_column: np.ndarray | None
) -> tuple[int, list[str]]:
    """``(stored values of the shared pattern, layers stored with zero fill)``: one checking pass over every
    layer of a sparse dataset of several layers, before anything is written (the arrays are sized by it)."""
    nnz, padded = 0, set()
    for _, indptr, _, _, filled in layer_blocks(layers, stored_column):
        nnz += int(indptr[-1])
        padded |= filled
    return nnz, [name for name in layers if name in padded]
