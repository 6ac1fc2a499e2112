"""CsrBlocks: a dataset's CSR blocks sorted by feature bucket, kept in memory or spilled to a file."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from lancell.storage.csc import CsrBlocks


def _matrix() -> sp.csr_matrix:
    matrix = sp.random(300, 1_500, density=0.03, format="csr", random_state=7, dtype=np.float64)
    matrix.data = np.ceil(matrix.data * 50)
    matrix.sort_indices()
    return matrix


@pytest.mark.parametrize("spill", [False, True])
def test_buckets_hold_every_block_in_row_order(spill: bool) -> None:
    matrix = _matrix()
    blocks = CsrBlocks(1_500, {"counts": np.dtype(np.uint32), "norm": np.dtype(np.float32)}, spill=spill)
    for row0, stop in [(0, 1), (1, 120), (120, 120), (120, 300)]:
        part = matrix[row0:stop]
        values = {"counts": part.data.astype(np.uint32), "norm": (part.data / 7).astype(np.float32)}
        blocks.add(row0, part.indptr.astype(np.int64), part.indices.astype(np.uint32), values)
    assert blocks.nnz == matrix.nnz
    np.testing.assert_array_equal(blocks.counts, np.diff(matrix.tocsc().indptr))
    assert blocks.bounds.tolist() == [0, 500, 1_000, 1_500]  # 512 features a bucket at most
    coo = matrix.tocoo()
    for bucket in range(3):
        segments = list(blocks.segments(bucket))
        rows = np.concatenate([s[0] for s in segments])
        features = np.concatenate([s[1] for s in segments])
        counts = np.concatenate([s[2]["counts"] for s in segments])
        norm = np.concatenate([s[2]["norm"] for s in segments])
        mine = (coo.col >= 500 * bucket) & (coo.col < 500 * (bucket + 1))  # coo: row-major, like the blocks
        np.testing.assert_array_equal(rows, coo.row[mine])
        np.testing.assert_array_equal(features, coo.col[mine])
        np.testing.assert_array_equal(counts, coo.data[mine].astype(np.uint32))
        np.testing.assert_array_equal(norm, (coo.data[mine] / 7).astype(np.float32))
    blocks.close()
