"""Stored row blocks reuse two alternating buffer sets (4-byte integers: the source's own); callers that keep
rows across blocks copy them."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from lancell.ingest.blocks import stored_csr_blocks
from lancell.ingest.layer_blocks import layer_blocks
from lancell.ingest.sources import MatrixSource, matrix_source


def _matrix(seed: int, density: float) -> sp.csr_matrix:
    matrix = sp.random(400, 700, density=density, format="csr", random_state=seed, dtype=np.float64)
    matrix.data = np.ceil(matrix.data * 50).astype(np.int32)
    return matrix


def test_blocks_alternate_two_buffer_sets_and_layers_on_other_cuts_stay_exact(monkeypatch) -> None:
    monkeypatch.setattr(MatrixSource.csr_blocks, "__defaults__", (1_000,))  # about 10 and 25 blocks
    counts, other = _matrix(0, 0.03), _matrix(1, 0.08)  # other patterns: other row cuts, a union stored
    stored_column = np.random.default_rng(2).permutation(700)
    blocks = list(stored_csr_blocks(matrix_source("d", counts), "counts", stored_column))
    assert len(blocks) >= 4
    sizes = [b[2].size for b in blocks]
    reused = 0
    for i in range(len(blocks) - 2):  # block i's buffers hold block i + 2 unless it needs more room
        assert not np.shares_memory(blocks[i][2], blocks[i + 1][2])
        if sizes[i + 2] <= max(sizes[i % 2 : i + 1 : 2]):
            assert np.shares_memory(blocks[i][2], blocks[i + 2][2])
            assert np.shares_memory(blocks[i][3], blocks[i + 2][3])
            reused += 1
    assert reused >= len(blocks) // 2
    layers = {"counts": matrix_source("d", counts), "other": matrix_source("d", other)}
    union = (abs(counts) + abs(other)).tocsr()
    union.sort_indices()
    got = {"counts": [], "other": []}
    indices = []
    for _, indptr, block_indices, values, _ in layer_blocks(layers, None):  # used before the next block
        indices.append(
            sp.csr_matrix(
                (np.ones(block_indices.size), block_indices.copy(), indptr.copy()), (indptr.size - 1, 700)
            )
        )
        for name in got:
            got[name].append(
                sp.csr_matrix(
                    (values[name].copy(), block_indices.copy(), indptr.copy()), (indptr.size - 1, 700)
                )
            )
    np.testing.assert_array_equal(sp.vstack(indices).tocsr().indices, union.indices)
    for name, matrix in (("counts", counts), ("other", other)):
        stored = sp.vstack(got[name]).tocsr()
        np.testing.assert_array_equal(stored.toarray(), matrix.toarray().astype(np.uint32))


def test_checked_4_byte_integers_are_stored_without_a_copy_and_others_converted(monkeypatch) -> None:
    monkeypatch.setattr(MatrixSource.csr_blocks, "__defaults__", (1_000,))
    counts = _matrix(3, 0.05)  # int32 indices and values
    for _, _, indices, values in stored_csr_blocks(matrix_source("d", counts), "counts", None):
        assert indices.dtype == values.dtype == np.uint32
        assert np.shares_memory(indices, counts.indices) and np.shares_memory(values, counts.data)
    wide = counts.copy()
    wide.indices, wide.data = wide.indices.astype(np.int64), wide.data.astype(np.int64)
    kept = []
    for _, _, indices, values in stored_csr_blocks(matrix_source("d", wide), "counts", None):
        assert indices.dtype == values.dtype == np.uint32
        assert not np.shares_memory(indices, wide.indices) and not np.shares_memory(values, wide.data)
        kept.append((indices.copy(), values.copy()))  # the buffers are reused two blocks on
    np.testing.assert_array_equal(np.concatenate([k[0] for k in kept]), counts.indices)
    np.testing.assert_array_equal(np.concatenate([k[1] for k in kept]), counts.data)
