"""CsrBlocks: a dataset's CSR blocks sorted by feature bucket as runs, kept in memory or spilled to a file."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp

import lancell.storage.csc_blocks as csc_blocks_module
from lancell.storage.csc_blocks import CsrBlocks, ReadBuffer, Segment, spill_dtype

ROW0 = 2**32 - 300  # the blocks' last row is the last uint32 row number
EDGES = [0, 499, 500, 999, 1_000, 1_499]  # the first and last feature of each bucket


NARROWED = {"counts": np.uint8, "wide": np.uint16, "huge": np.uint32, "norm": np.float32}


def _matrix() -> sp.csr_matrix:
    matrix = sp.random(300, 1_500, density=0.03, format="csr", random_state=7, dtype=np.float64)
    matrix.data = np.ceil(matrix.data * 50)
    matrix = matrix.tolil()
    matrix[::7, EDGES] = 3.0  # features at the buckets' edges in every 7th row
    matrix = matrix.tocsr()
    matrix.sort_indices()
    return matrix


def _segments(blocks: CsrBlocks, bucket: int) -> list[Segment]:
    """Every part of ``bucket``, each read into new arrays."""
    return [blocks.read(part) for part in blocks.parts(bucket)]


def _layers(data: np.ndarray) -> dict[str, np.ndarray]:
    """Values narrowed to uint8 (counts), to uint16 (wide), kept uint32 (huge) and float32 (norm)."""
    return {
        "counts": data.astype(np.uint32),
        "wide": (data * 1_000).astype(np.uint32),
        "huge": (2**32 - data).astype(np.uint32),
        "norm": (data / 7).astype(np.float32),
    }


@pytest.mark.parametrize("spill", [False, True])
def test_buckets_hold_every_block_in_row_order(spill: bool) -> None:
    matrix = _matrix()
    dtypes = {name: values.dtype for name, values in _layers(matrix.data[:1]).items()}
    blocks = CsrBlocks(1_500, dtypes, spill=spill)
    for row0, stop in [(0, 1), (1, 120), (120, 120), (120, 300)]:
        part = matrix[row0:stop]
        blocks.add(
            ROW0 + row0, part.indptr.astype(np.int64), part.indices.astype(np.uint32), _layers(part.data)
        )
    indptr = matrix.indptr.astype(np.int64)  # elements 10..40, then 40..nnz: blocks that cut rows
    for lo, hi in [(10, 40), (40, matrix.nnz)]:
        blocks.add(ROW0, indptr, matrix.indices[lo:hi].astype(np.uint32), _layers(matrix.data[lo:hi]), lo)
    blocks.done()  # the helper thread's last sort
    assert blocks.nnz == matrix.nnz + matrix.nnz - 10
    coo = matrix.tocoo()  # row-major, like the blocks
    expected_counts = 2 * np.diff(matrix.tocsc().indptr) - np.bincount(matrix.indices[:10], minlength=1_500)
    np.testing.assert_array_equal(blocks.counts, expected_counts)
    assert blocks.bounds.tolist() == [0, 500, 1_000, 1_500]  # 512 features a bucket at most
    for bucket in range(3):
        segments = _segments(blocks, bucket)
        rows = np.concatenate([np.repeat(s[0], s[1]) for s in segments])
        features = np.concatenate([s[2] for s in segments]).astype(np.int64) + 500 * bucket
        mine = (coo.col >= 500 * bucket) & (coo.col < 500 * (bucket + 1))
        cut = mine & (np.arange(coo.nnz) >= 10)  # the second pass over the matrix starts at element 10
        np.testing.assert_array_equal(
            rows, np.concatenate((coo.row[mine], coo.row[cut])).astype(np.int64) + ROW0
        )
        np.testing.assert_array_equal(features, np.concatenate((coo.col[mine], coo.col[cut])))
        for name, values in _layers(np.concatenate((coo.data[mine], coo.data[cut]))).items():
            stored = np.concatenate([s[3][name] for s in segments])
            np.testing.assert_array_equal(stored.astype(values.dtype), values)
            assert {s[3][name].dtype for s in segments} == {np.dtype(NARROWED[name])}
    assert rows.max() == 2**32 - 1
    blocks.close()


def test_spill_dtype_is_the_narrowest_that_holds_the_values() -> None:
    assert spill_dtype(np.array([0, 255], np.uint32)) == np.uint8
    assert spill_dtype(np.array([0, 256], np.uint32)) == np.uint16
    assert spill_dtype(np.array([65_535], np.uint32)) == np.uint16
    assert spill_dtype(np.array([65_536], np.uint32)) == np.uint32
    assert spill_dtype(np.zeros(0, np.uint32)) == np.uint8
    assert spill_dtype(np.array([1.0], np.float32)) == np.float32  # floats as they are


@pytest.mark.parametrize("spill", [False, True])
def test_an_error_of_the_helper_threads_sort_is_raised_by_done(spill: bool) -> None:
    blocks = CsrBlocks(10, {"counts": np.dtype(np.uint32), "norm": np.dtype(np.float32)}, spill=spill)
    indptr, indices = np.array([0, 2], np.int64), np.array([1, 5], np.uint32)
    blocks.add(0, indptr, indices, {"counts": np.array([1, 2], np.uint32)})  # no "norm" values
    with pytest.raises(KeyError, match="norm"):
        blocks.done()
    blocks.done()  # raised once
    blocks.close()


def test_a_failed_spill_write_is_raised_by_the_next_add_or_done(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = _matrix()
    indptr, indices = matrix.indptr.astype(np.int64), matrix.indices.astype(np.uint32)
    values = {"counts": matrix.data.astype(np.uint32)}
    written = []

    def full_disk(fd: int, data: memoryview, position: int) -> int:
        if written:
            raise OSError(28, "No space left on device")
        written.append(position)
        return 1  # a short write: the rest is written again from there

    monkeypatch.setattr(csc_blocks_module.os, "pwrite", full_disk)
    blocks = CsrBlocks(1_500, {"counts": np.dtype(np.uint32)}, spill=True)
    blocks.add(0, indptr, indices, values)
    with pytest.raises(OSError, match="No space left"):  # the second pwrite of the first block's write
        for _ in range(3):
            blocks.add(0, indptr, indices, values)
        blocks.done()
    assert written == [0]
    blocks.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("lancell-csc")]


def test_a_spill_file_cut_short_is_an_error_not_short_segments() -> None:
    matrix = _matrix()
    blocks = CsrBlocks(1_500, {"counts": np.dtype(np.uint32)}, spill=True)
    blocks.add(0, matrix.indptr.astype(np.int64), matrix.indices.astype(np.uint32), _layers(matrix.data))
    blocks.done()
    blocks._file.truncate(blocks._spilled - 1)  # the last bucket's last value gone
    assert len(_segments(blocks, 0)) == 1
    with pytest.raises(OSError, match="ends 1 bytes early"):
        _segments(blocks, 2)
    blocks.close()


@pytest.mark.parametrize("spill", [False, True])
def test_features_of_buckets_of_at_most_256_take_one_byte(spill: bool) -> None:
    """Dense rows over 512 features: 256-feature buckets, whose last feature (255) is one byte too."""
    matrix = sp.csr_matrix(np.arange(1, 40 * 512 + 1, dtype=np.float64).reshape(40, 512) % 7)
    blocks = CsrBlocks(512, {"counts": np.dtype(np.uint32)}, spill=spill, values_per_row=matrix.nnz / 40)
    counts = {"counts": matrix.data.astype(np.uint32)}
    blocks.add(0, matrix.indptr.astype(np.int64), matrix.indices.astype(np.uint32), counts)
    assert blocks.bounds.tolist() == [0, 256, 512]
    coo = matrix.tocoo()
    for bucket in range(2):
        segments = _segments(blocks, bucket)
        features = np.concatenate([s[2] for s in segments])
        assert features.dtype == np.uint8 and features.max() == 255
        mine = coo.col // 256 == bucket
        np.testing.assert_array_equal(features.astype(np.int64) + 256 * bucket, coo.col[mine])
        rows = np.concatenate([np.repeat(s[0], s[1]) for s in segments])
        np.testing.assert_array_equal(rows, coo.row[mine])
        stored = np.concatenate([s[3]["counts"] for s in segments])
        np.testing.assert_array_equal(stored, coo.data[mine].astype(np.uint32))
    blocks.close()


@pytest.mark.parametrize("spill", [False, True])
def test_parts_join_consecutive_blocks_of_one_dtype_up_to_the_part_size(
    spill: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six blocks of 50 rows, the fourth with counts past a byte: parts of at most 2 blocks' worth of values,
    never across the change of dtype; one reused buffer reads each part as new arrays do."""
    matrix = _matrix()
    data = matrix.data.astype(np.uint32)
    data[matrix.indptr[150] : matrix.indptr[200]] += 1_000
    per_bucket = [np.bincount(matrix[r : r + 50].indices // 500, minlength=3) for r in range(0, 300, 50)]
    monkeypatch.setattr(csc_blocks_module, "_PART_VALUES", 2 * int(np.max(per_bucket)))
    blocks = CsrBlocks(1_500, {"counts": np.dtype(np.uint32)}, spill=spill)
    for r in range(0, 300, 50):
        part = matrix[r : r + 50]
        counts = data[matrix.indptr[r] : matrix.indptr[r + 50]]
        blocks.add(r, part.indptr.astype(np.int64), part.indices.astype(np.uint32), {"counts": counts})
    parts = [part for bucket in range(3) for part in blocks.parts(bucket)]
    assert all(3 not in part.blocks or part.blocks == (3,) for part in parts)  # uint16 counts alone
    assert max(len(part.blocks) for part in parts) == 2
    assert all(part.values <= csc_blocks_module._PART_VALUES for part in parts)
    buffer = ReadBuffer.for_parts(parts)
    coo = matrix.tocoo()
    for bucket in range(3):
        mine = coo.col // 500 == bucket
        rows = np.concatenate(  # each part's rows copied before the next read
            [np.repeat(*blocks.read(part, buffer)[:2]) for part in blocks.parts(bucket)]
        )
        np.testing.assert_array_equal(rows, coo.row[mine])
        for part, fresh in zip(blocks.parts(bucket), _segments(blocks, bucket), strict=True):
            reused = blocks.read(part, buffer)
            for a, b in zip(reused[:3], fresh[:3], strict=True):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(reused[3]["counts"], fresh[3]["counts"])
            assert reused[3]["counts"].dtype == (np.uint16 if part.blocks == (3,) else np.uint8)
    blocks.close()


def test_a_buffer_too_small_for_a_part_is_an_error_not_a_short_segment() -> None:
    matrix = _matrix()
    blocks = CsrBlocks(1_500, {"counts": np.dtype(np.uint32)}, spill=True)
    blocks.add(0, matrix.indptr.astype(np.int64), matrix.indices.astype(np.uint32), _layers(matrix.data))
    part = blocks.parts(0)[0]
    small = ReadBuffer(part.runs, part.values - 1, [dtype.itemsize for dtype in part.dtypes])
    with pytest.raises(ValueError, match=f"a part of {part.runs} runs and {part.values} values"):
        blocks.read(part, small)
    blocks.close()
