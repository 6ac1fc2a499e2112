"""The blocks ingestion stores: backed reads into reused buffers, renumbering, rows given out of order."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from lancell.errors import DataValueError, IngestError, LancellWarning
from lancell.ingest.blocks import checked_values, dense_place, stored_csr_blocks
from lancell.ingest.plan import check_size
from lancell.ingest.sources import MatrixSource, matrix_source


def _matrix(seed: int = 0, n_rows: int = 400, n_cols: int = 700) -> sp.csr_matrix:
    matrix = sp.random(n_rows, n_cols, density=0.03, format="csr", random_state=seed, dtype=np.float64)
    matrix.data = np.ceil(matrix.data * 50).astype(np.int32)
    return sp.csr_matrix(matrix, dtype=np.int32)


def _stored(matrix: sp.csr_matrix, stored_column: np.ndarray | None) -> sp.csr_matrix:
    """The reference: columns renumbered to stored order and sorted, values as uint32."""
    mapped = matrix.tocoo()
    columns = mapped.col if stored_column is None else stored_column[mapped.col]
    out = sp.csr_matrix((mapped.data.astype(np.uint32), (mapped.row, columns)), shape=matrix.shape)
    out.sort_indices()
    return out


def _collect(source: MatrixSource, stored_column: np.ndarray | None) -> sp.csr_matrix:
    blocks = [  # copied: a block's buffers are reused two blocks later
        (row0, indptr.copy(), indices.copy(), values.copy())
        for row0, indptr, indices, values in stored_csr_blocks(source, "counts", stored_column)
    ]
    assert all(b[2].dtype == np.uint32 and b[3].dtype == np.uint32 for b in blocks)
    indptr = np.concatenate([[0]] + [block[1][1:] + offset for block, offset in _offsets(blocks)])
    return sp.csr_matrix(
        (np.concatenate([b[3] for b in blocks]), np.concatenate([b[2] for b in blocks]), indptr),
        shape=source.shape,
    )


def _offsets(blocks: list) -> list:
    offsets, total = [], 0
    for block in blocks:
        offsets.append((block, total))
        total += int(block[1][-1])
    return offsets


@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("shuffled", [False, True])
def test_blocks_equal_the_reference(tmp_path: Path, monkeypatch, backed: bool, shuffled: bool) -> None:
    monkeypatch.setattr(MatrixSource.csr_blocks, "__defaults__", (1_000,))  # about 10 blocks
    matrix = _matrix()
    stored_column = np.random.default_rng(1).permutation(matrix.shape[1]) if shuffled else None
    if backed:
        ad.AnnData(X=matrix).write_h5ad(tmp_path / "x.h5ad")
        source = matrix_source("d", ad.read_h5ad(tmp_path / "x.h5ad", backed="r").X)
    else:
        source = matrix_source("d", matrix)
    result = _collect(source, stored_column)
    expected = _stored(matrix, stored_column)
    np.testing.assert_array_equal(result.indptr, expected.indptr)
    np.testing.assert_array_equal(result.indices, expected.indices)
    np.testing.assert_array_equal(result.data, expected.data)


def test_rows_out_of_order_are_sorted_and_repeats_refused() -> None:
    matrix = _matrix(2)
    unsorted = matrix.copy()
    for row in range(0, unsorted.shape[0], 3):  # reverse every third row
        lo, hi = unsorted.indptr[row], unsorted.indptr[row + 1]
        unsorted.indices[lo:hi] = unsorted.indices[lo:hi][::-1].copy()
        unsorted.data[lo:hi] = unsorted.data[lo:hi][::-1].copy()
    unsorted.has_sorted_indices = False
    result = _collect(matrix_source("d", unsorted), None)
    np.testing.assert_array_equal(result.indices, matrix.indices)
    np.testing.assert_array_equal(result.data, matrix.data)
    row = int(np.flatnonzero(np.diff(matrix.indptr) >= 2)[0])
    lo = matrix.indptr[row]
    repeated = matrix.copy()
    repeated.indices[lo + 1] = repeated.indices[lo]
    with pytest.raises(DataValueError, match=f"of row {row} is repeated within its row"):
        _collect(matrix_source("d", repeated), None)


@pytest.mark.parametrize("stored_column", [None, np.array([1, 0])])
def test_nonzero_values_float32_cannot_hold_are_warned_about(stored_column: np.ndarray | None) -> None:
    # 1e-50 became a measured 0.0 without a word, while 1e39 is refused
    matrix = sp.csr_matrix(np.array([[1e-50, 1.0], [0.5, 0.0]]))
    source = matrix_source("tiny", matrix)
    message = r"dataset 'tiny', layer 'log_normalized': nonzero values smaller"
    with pytest.warns(LancellWarning, match=message):
        blocks = list(stored_csr_blocks(source, "log_normalized", stored_column))
    assert sorted(np.concatenate([b[3] for b in blocks]).tolist()) == [0.0, 0.5, 1.0]
    with pytest.warns(LancellWarning, match="nonzero values smaller"):  # the numpy path (dense blocks)
        assert checked_values("tiny", "log_normalized", np.array([1e-320, 2.0]), 0).tolist() == [0.0, 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checked_values("tiny", "log_normalized", np.array([0.0, 1e-30, 2.0]), 0)  # float32 holds 1e-30
        list(stored_csr_blocks(matrix_source("ok", sp.csr_matrix(np.array([[1e-30, 0.0]]))), "x", None))


def test_negative_integers_under_any_layer_say_how_to_store_them() -> None:
    """The message said counts must be in [0, 2**32) for a layer that was not counts."""
    with pytest.raises(DataValueError, match=r"layer 'scaled': negative integer value -2 .* as floats"):
        checked_values("d", "scaled", np.array([3, -2, 1], dtype=np.int16), 0)


@pytest.mark.parametrize(
    ("layer", "bad", "said"),
    [
        ("log_normalized", np.nan, "non-finite value nan at row 9000, column 3"),
        ("log_normalized", -5e38, "value -5e+38 at row 9000, column 3 does not fit float32"),  # (was 5e+38)
        ("counts", -3.0, "negative value -3.0 at row 9000, column 3"),  # (was said without a place)
        ("counts", 2.5, "non-integer value 2.5 at row 9000, column 3"),
    ],
)
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_a_bad_value_is_named_by_its_row_and_column(layer: str, bad: float, said: str, kind: str) -> None:
    """Value errors named the block's first row ("in the rows from 0", ~2M values wide) and no column."""
    x = np.ones((10_000, 5), dtype=np.float64)
    x[9000, 3] = bad
    source = matrix_source("d", sp.csr_matrix(x) if kind == "sparse" else x)
    blocks = source.dense_blocks() if kind == "dense" else stored_csr_blocks(source, layer, None)
    with pytest.raises(DataValueError, match=f"dataset 'd', layer '{layer}': {said}".replace("+", r"\+")):
        for block in blocks:
            if kind == "dense":
                row0, values = block
                checked_values("d", layer, values.ravel(), row0, dense_place(row0, values.shape[1]))


def test_places_count_from_the_blocks_first_row() -> None:
    from lancell.ingest.blocks import sparse_place

    indptr, indices = np.array([0, 2, 2, 5]), np.array([1, 4, 0, 2, 3])  # row 101 holds nothing
    assert [sparse_place(100, indptr, indices)(i) for i in (1, 2, 4)] == [
        "row 100, column 4",
        "row 102, column 0",
        "row 102, column 3",
    ]
    assert dense_place(500, 3)(7) == "row 502, column 1"


def _as_given(matrix: sp.csr_matrix, indices: np.ndarray, indptr: np.ndarray) -> sp.csr_matrix:
    """``matrix`` with ``indices`` and ``indptr`` in their own dtypes (as anndata reads a file's; scipy's
    constructor would cast them)."""
    out = sp.csr_matrix(matrix.shape, dtype=matrix.dtype)
    out.data, out.indices, out.indptr = matrix.data, indices, indptr
    return out


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32])
def test_row_offsets_of_any_integer_width_are_cut_into_blocks(dtype: type) -> None:
    """An int16 or uint8 ``indptr`` failed with NumPy's OverflowError (its first offset plus the block's
    2,000,000 values); an int32 one near 2**31 wrapped negative and cut one row per block."""
    matrix = _matrix(3, n_rows=40, n_cols=30)
    narrow = _as_given(matrix, matrix.indices, matrix.indptr.astype(dtype))
    assert narrow.indptr.dtype == dtype
    result = _collect(matrix_source("d", narrow), None)
    np.testing.assert_array_equal(result.toarray(), matrix.toarray())
    per_row = 2_000
    n_rows = (2**31 - 1) // per_row  # 2,147,482,000 values: int32 offsets still hold them
    near = MatrixSource(
        None, (n_rows, 30_000), np.dtype(np.uint32), True, np.arange(n_rows + 1) * per_row, "d"
    )
    wide = list(near.row_ranges())
    near.indptr = near.indptr.astype(np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(near.row_ranges()) == wide and len(wide) < 1_100


@pytest.mark.parametrize("stored_column", [None, np.arange(30)[::-1].copy()])
@pytest.mark.parametrize("at", ["first", "last"])
def test_uint64_column_indices_from_2_63_on_are_refused_by_their_value(
    stored_column: np.ndarray | None, at: str
) -> None:
    """A uint64 column index from 2**63 on is negative as int64: at a row's end it passed the range check
    (only ``last >= n_features`` was asked) and was stored as its low 32 bits, under another gene, or
    looked up outside the renumbering (a crash); the message named it negative."""
    matrix = _matrix(4, n_rows=20, n_cols=30)
    indices = matrix.indices.astype(np.uint64)
    row = int(np.flatnonzero(np.diff(matrix.indptr) >= 2)[0])
    position = matrix.indptr[row] if at == "first" else matrix.indptr[row + 1] - 1
    indices[position] = 2**63 + 7
    bad = _as_given(matrix, indices, matrix.indptr)
    assert bad.indices.dtype == np.uint64
    with pytest.raises(DataValueError, match=rf"column index {2**63 + 7} of row {row} is outside \[0, 30\)"):
        _collect(matrix_source("d", bad), stored_column)


@pytest.mark.parametrize(
    ("n_obs", "n_vars", "what"), [(2**32, 10, "4,294,967,296 cells"), (5, 2**32, "4,294,967,296 features")]
)
def test_a_dataset_beyond_32_bit_cell_or_feature_numbers_is_refused_before_it_is_read(
    n_obs: int, n_vars: int, what: str
) -> None:
    """A CSC copy numbers a dataset's cells in 32 bits: row 2**32 was recorded as row 0, silently."""
    with pytest.raises(IngestError, match=f"dataset 'd' has {what}, more than a dataset holds"):
        check_size("d", n_obs, n_vars)
