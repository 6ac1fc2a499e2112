"""The loader's arguments are checked where they are given: a typed error naming the argument, or a
LancellWarning for an option that has no effect; never a silent truncation, wrap-around or partial epoch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lancell.atlas import RaggedAtlas
from lancell.dataloader import (
    CellBatch,
    CellSampler,
    DenseCollate,
    SparseCollate,
    ThreadedLoader,
    make_loader,
)
from lancell.errors import ArgumentError, LancellWarning, OutOfBoundsError, QueryError
from lancell.training import train_cell_type_classifier

SPACE = "gene_expression"


@pytest.fixture(scope="module")
def snapshot(bundled_root) -> RaggedAtlas:
    return RaggedAtlas.checkout_latest(str(bundled_root / "db"))


@pytest.fixture(scope="module")
def small(snapshot):
    """The 559 celltypist cells, with their cell types."""
    query = snapshot.query().where("dataset_uid = 'celltypist_sample'")
    return query.to_cell_dataset(SPACE, "counts", metadata_columns=["cell_type"])


# ------------------------------------------------------------------------------------------------ finding 1
def test_a_sampler_of_another_dataset_is_refused(snapshot, small):
    """A sampler built for 559 cells read 559 of a 10000-cell dataset, every epoch, without a word."""
    big = snapshot.query().where("dataset_uid = 'mouse_10k'").to_cell_dataset(SPACE, "counts")
    sampler = CellSampler(small, 64, seed=0)
    message = "the sampler was built for a dataset of 559 cells, not this one of 10000"
    for readers in ({"num_workers": 0}, {"threads": 2}):
        with pytest.raises(QueryError, match=message):
            make_loader(big, sampler, **readers)
    with pytest.raises(QueryError, match=message):
        ThreadedLoader(big, sampler, SparseCollate(), threads=1)


def test_a_sampler_that_is_no_sampler_is_refused(small):
    """sampler=None was taken: torch then read one cell per batch in stored order (no workers), or failed
    at the first batch with a bare TypeError (workers)."""
    for readers in ({"num_workers": 0}, {"num_workers": 2}):
        with pytest.raises(ArgumentError, match=r"sampler must be a CellSampler .* got None"):
            make_loader(small, None, **readers)


# ------------------------------------------------------------------------------------------------ finding 2
def test_a_sampler_built_before_init_process_group_is_refused(small, monkeypatch):
    """Built before the process group existed, the sampler kept 1 replica: every rank read every cell."""
    stale = CellSampler(small, 64, seed=0)
    explicit = CellSampler(small, 64, seed=0, num_replicas=2, rank=1)
    single = CellSampler(small, 64, seed=0, num_replicas=1, rank=0)
    rank_defaulted = CellSampler(small, 64, seed=0, num_replicas=2)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    message = "took num_replicas=1, rank=0 from the defaults .* world size 2 and this process is rank 1"
    with pytest.raises(QueryError, match=message):
        stale.set_epoch(1)
    with pytest.raises(QueryError, match=message):
        next(iter(make_loader(small, stale)))
    with pytest.raises(QueryError, match="took num_replicas=2, rank=0"):
        list(rank_defaulted)
    # given explicitly, num_replicas and rank are honoured, whatever the process group says
    half = -(-len(small) // 2)  # padded to a multiple of 2 replicas
    assert sum(len(b) for b in explicit) == half
    assert sum(len(b) for b in single) == len(small)
    assert len(CellSampler(small, 64, seed=0)) == -(-half // 64)  # built now: the process group's share


# ---------------------------------------------------------------------------------------------- findings 3, 4
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_workers": 1, "prefetch_factor": 0}, "prefetch_factor must be >= 1, got 0"),
        ({"num_workers": 1, "prefetch_factor": 2.5}, "prefetch_factor must be an integer"),
        ({"num_workers": 1.5}, "num_workers must be an integer, got 1.5"),
        ({"num_workers": True}, "num_workers must be an integer"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"threads": 2.0}, "threads must be an integer"),
        ({"num_workers": 1, "timeout": -1}, "timeout must be >= 0"),
        ({"num_workers": 1, "timeout": math.nan}, "timeout must be finite"),
        ({"num_workers": 1, "timeout": "20"}, "timeout must be a number"),
        ({"num_workers": 1, "multiprocessing_context": "fork"}, "must be 'forkserver' or 'spawn'"),
        ({"num_workers": 1, "threads": 1}, "not both"),
        ({"prefetch_factor": 4}, "prefetch_factor applies to worker processes only, not to num_workers=0"),
        ({"multiprocessing_context": "spawn"}, "multiprocessing_context applies to worker processes only"),
        ({"threads": 2, "prefetch_factor": 16}, "not to threads=2"),
        (
            {"prefetch_factor": 2, "multiprocessing_context": "spawn"},
            "prefetch_factor and multiprocessing_context apply to worker processes only",
        ),
    ],
)
def test_worker_settings_are_checked_before_the_first_epoch(small, options, message):
    """prefetch_factor=0 or num_workers=1.5 failed only at the second epoch (the first is read here), with
    torch's AssertionError or TypeError; worker-only options without workers were dropped."""
    with pytest.raises(QueryError, match=message):
        make_loader(small, CellSampler(small, 64), **options)


@pytest.mark.parametrize("readers", [{"num_workers": 0}, {"threads": 2}])
def test_a_timeout_without_workers_is_ignored_with_a_warning(small, readers):
    with pytest.warns(LancellWarning, match="timeout=5 is ignored: it applies to worker processes only"):
        loader = make_loader(small, CellSampler(small, 256), timeout=5, **readers)
    assert sum(len(batch["index"]) for batch in loader) == len(small)


def test_options_without_effect_warn(small):
    with pytest.warns(LancellWarning, match="block_size=4 is ignored: random mode") as told:
        random = CellSampler(small, 64, mode="random", seed=0, block_size=4)
    assert told[0].filename == __file__
    assert list(random) == list(CellSampler(small, 64, mode="random", seed=0))
    with pytest.warns(LancellWarning, match="target_sum=7 and log1p=False ignored") as told:
        DenseCollate(target_sum=7, log1p=False)
    assert told[0].filename == __file__  # (raised in a dataclass's __post_init__: it said "<string>")


# ------------------------------------------------------------------------------------------------ finding 5
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 2.7}, "batch_size must be an integer, got 2.7"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"seed": 1.9}, "seed must be an integer, got 1.9"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"block_size": 2.5}, "block_size must be an integer"),
        ({"num_replicas": 2.0, "rank": 0}, "num_replicas must be an integer"),
        ({"num_replicas": 2, "rank": 0.5}, "rank must be an integer"),
        ({"num_replicas": 2, "rank": 2}, r"rank 2 is not in \[0, 2\)"),
    ],
)
def test_sampler_arguments_must_be_integers(small, options, message):
    """batch_size=2.7 became 2 and seed=1.9 became 1; seed=-1 failed at the first batch with numpy's
    'expected non-negative integer'."""
    options = {"batch_size": 64, **options}
    with pytest.raises(QueryError, match=message):
        CellSampler(small, **options)


def test_flags_must_be_bools(small):
    """drop_last="False" dropped 31 of 131 cells each epoch (a non-empty string is true), without a word."""
    for false in ("False", "no", 2, None, 0.0):
        with pytest.raises(QueryError, match=f"drop_last must be True or False, got {false!r}"):
            CellSampler(small, 50, drop_last=false)
    assert CellSampler(small, 50, drop_last=np.bool_(False)).drop_last is False
    assert CellSampler(small, 50, drop_last=1).drop_last is True  # 0 and 1 stay accepted
    with pytest.raises(QueryError, match="pin_memory must be True or False, got 'False'"):
        make_loader(small, CellSampler(small, 50), pin_memory="False")
    with pytest.raises(QueryError, match="presence must be True or False, got 'yes'"):
        SparseCollate(presence="yes")
    for name in ("normalize", "log1p", "presence"):
        with pytest.raises(QueryError, match=f"{name} must be True or False, got 'False'"):
            DenseCollate(**{name: "False"})


def test_set_epoch_takes_a_non_negative_integer(small):
    sampler = CellSampler(small, 64)
    for epoch, message in ((-1, "epoch must be >= 0, got -1"), (1.5, "epoch must be an integer, got 1.5")):
        with pytest.raises(QueryError, match=message):
            sampler.set_epoch(epoch)
    sampler.set_epoch(np.int64(3))
    assert sampler.epoch == 3 and type(sampler.epoch) is int


def test_dataset_positions_must_be_integers(small):
    """A boolean mask was read as positions 0 and 1 of every cell, float positions were truncated."""
    mask = np.zeros(len(small), dtype=bool)
    mask[[5, 9]] = True
    with pytest.raises(QueryError, match=r"positions must be integers, got bool values; .* np\.flatnonzero"):
        small.__getitems__(mask)
    with pytest.raises(QueryError, match="positions must be integers, got float64"):
        small.__getitems__([1.7, 2.2])
    with pytest.raises(QueryError, match="positions must be integers"):
        small[3.9]
    with pytest.raises(OutOfBoundsError):
        small.__getitems__([len(small)])
    assert small.__getitems__(np.flatnonzero(mask)).index.tolist() == [5, 9]
    assert small.__getitems__(torch.tensor([2, -1])).index.tolist() == [2, len(small) - 1]
    assert small[np.uint8(4)].index.tolist() == [4] and len(small.__getitems__([])) == 0


# ------------------------------------------------------------------------------------------------ finding 6
@pytest.mark.parametrize(
    "dtype", [torch.int8, torch.uint8, torch.int16, torch.float16, torch.bfloat16, "float32"]
)
def test_sparse_collate_refuses_dtypes_that_change_counts(dtype):
    """int8/uint8 wrapped counts around, float16/bfloat16 rounded them; the string failed at the first batch
    with torch's 'Invalid device string'."""
    with pytest.raises(QueryError, match="dtype must be None or one of"):
        SparseCollate(dtype=dtype)


def _batch(values: np.ndarray) -> CellBatch:
    """A sparse batch of one cell holding ``values`` in its first columns."""
    return CellBatch(
        kind="sparse",
        index=np.zeros(1, dtype=np.int64),
        group=np.zeros(1, dtype=np.int32),
        n_features=values.size,
        presence_table=np.ones((2, values.size), dtype=bool),
        offsets=np.array([0, values.size], dtype=np.int64),
        indices=np.arange(values.size, dtype=np.int32),
        values=values,
    )


def _dense_batch(values: np.ndarray) -> CellBatch:
    """A dense batch of the rows of ``values`` (2-D)."""
    n, width = values.shape
    return CellBatch(
        kind="dense",
        index=np.arange(n, dtype=np.int64),
        group=np.zeros(n, dtype=np.int32),
        n_features=width,
        presence_table=np.ones((1, width), dtype=bool),
        dense=values,
    )


def test_a_dense_batch_of_float64_values_float32_rounds_is_refused_naming_the_value():
    """The value was looked up at its flat position in the 2-D batch: IndexError (or TypeError)."""
    values = np.array([[1, 2, 3], [4, 2**24 + 1, 6], [0.5, 1.5, 2.5]], dtype=np.float64)
    with pytest.raises(QueryError, match=r"X holds the value 16777217, which torch\.float32 does not hold"):
        DenseCollate()(_dense_batch(values))


def test_normalize_refuses_negative_values():
    """A row with a value below -1 came back with NaN (log1p), one with a negative total as zeros."""
    for batch in (
        _dense_batch(np.array([[-5.0, 10.0, 0.0], [1.0, 2.0, 0.5]], dtype=np.float32)),
        _batch(np.array([-1.0, -2.0, 0.5], dtype=np.float32)),
    ):
        with pytest.raises(QueryError, match=r"X holds the negative value -\d, and normalize=True scales"):
            DenseCollate(normalize=True)(batch)
        assert not torch.isnan(DenseCollate()(batch)["X"]).any()  # as stored: accepted


@pytest.mark.parametrize("dtype", [np.uint32, np.float32])
def test_normalize_keeps_a_batch_with_no_stored_value_as_zeros(dtype):
    """Every cell all zero (or a dataset of no stored value): numpy's UFuncTypeError (the totals of no
    weights came back as int64, which the scale's division could not write)."""
    empty = CellBatch(
        kind="sparse",
        index=np.arange(2, dtype=np.int64),
        group=np.zeros(2, dtype=np.int32),
        n_features=3,
        presence_table=np.ones((2, 3), dtype=bool),
        offsets=np.zeros(3, dtype=np.int64),
        indices=np.zeros(0, dtype=np.int32),
        values=np.zeros(0, dtype=dtype),
    )
    assert DenseCollate(normalize=True)(empty)["X"].tolist() == [[0.0] * 3] * 2


def test_collates_refuse_values_their_dtype_does_not_hold_exactly():
    """float32 rounded counts above 2**24 (to_anndata gives them exactly); int dtypes truncated floats."""
    exact = _batch(np.array([3, 2**24], dtype=np.uint32))
    assert SparseCollate()(exact)["X"].values().tolist() == [3, 2**24]
    assert DenseCollate()(exact)["X"].tolist() == [[3, 2**24]]
    for collate in (SparseCollate(), DenseCollate()):
        with pytest.raises(
            QueryError, match=r"X holds the value 16777217, which torch\.float32 does not hold"
        ):
            collate(_batch(np.array([3, 2**24 + 1], dtype=np.uint32)))
        with pytest.raises(  # a layer of integer and float datasets reads as float64: its counts too
            QueryError, match=r"X holds the value 16777217, which torch\.float32 does not hold"
        ):
            collate(_batch(np.array([0.5, 2**24 + 1], dtype=np.float64)))
    float32_values = np.array([0.1, 3e9, -(2**30), np.nan], dtype=np.float32).astype(np.float64)  # exact
    got = SparseCollate()(_batch(float32_values))["X"].values().numpy()
    np.testing.assert_array_equal(got, float32_values.astype(np.float32))
    beyond = _batch(np.array([3, 2**31], dtype=np.uint32))
    with pytest.raises(QueryError, match=r"X holds the value 2147483648, which torch\.int32 does not hold"):
        SparseCollate(dtype=torch.int32)(beyond)
    assert SparseCollate(dtype=torch.float64)(beyond)["X"].values().tolist() == [3, 2**31]
    assert SparseCollate(dtype=None)(beyond)["X"].values().tolist() == [3, 2**31]
    assert DenseCollate(normalize=True)(beyond)["X"].shape == (1, 2)  # normalized: rounding is expected
    with pytest.raises(QueryError, match=r"X holds float32 values, which torch\.int64 would truncate"):
        SparseCollate(dtype=torch.int64)(_batch(np.array([0.5, 2.25], dtype=np.float32)))


# ------------------------------------------------------------------------------------------------ finding 7
def test_an_epoch_of_no_batches_warns(small):
    with pytest.warns(LancellWarning, match="no batches: drop_last drops all 559 cells, fewer than .* 1000"):
        sampler = CellSampler(small, 1000, drop_last=True)
    assert list(make_loader(small, sampler)) == []


def test_a_query_selecting_no_cell_warns_when_its_dataset_is_built(snapshot):
    """A filter with a typo gave an empty dataset: only CellSampler said so; others ran no batch, silently."""
    query = snapshot.query().where(dataset_uid="celltypist_sample", cell_type="no such type")
    with pytest.warns(LancellWarning, match="the query selects no cell: the dataset is empty") as warned:
        empty = query.to_cell_dataset(SPACE, "counts")
    assert len(empty) == 0 and warned[0].filename == __file__


# ------------------------------------------------------------------------------------------------ finding 8
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"test_fraction": 0.0}, r"test_fraction must lie in \(0, 1\), got 0.0"),
        ({"test_fraction": 1.0}, r"test_fraction must lie in \(0, 1\)"),
        ({"test_fraction": -0.5}, r"test_fraction must lie in \(0, 1\)"),
        ({"test_fraction": 2.0}, r"test_fraction must lie in \(0, 1\)"),
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"epochs": -3}, "epochs must be >= 1"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"label_column": "n_counts"}, "label column 'n_counts' holds float64 numbers, not labels"),
    ],
)
def test_training_options_are_checked(snapshot, options, message):
    """test_fraction 0 or 1 and epochs <= 0 ran and reported an accuracy; a numeric label was a KeyError."""
    with pytest.raises(QueryError, match=message):
        train_cell_type_classifier(snapshot, **options)


def test_training_without_held_out_cells_reports_nan_accuracy(snapshot):
    """No cell held out (a tiny fraction of 700 cells) reported an accuracy of 0.0."""
    report = train_cell_type_classifier(snapshot, epochs=1, test_fraction=1e-9)
    assert report.n_test == 0 and math.isnan(report.test_accuracy)


# ------------------------------------------------------------------------------------------------ finding 9
@pytest.mark.parametrize("target_sum", [0, -1, math.nan, math.inf])
def test_normalize_needs_a_positive_target_sum(target_sum):
    with pytest.raises(QueryError, match="target_sum must be"):
        DenseCollate(normalize=True, target_sum=target_sum)


def test_one_metadata_column_by_name(snapshot, small):
    """metadata_columns="cell_type" was read as the columns 'c', 'e', 'l', ..."""
    query = snapshot.query().where("dataset_uid = 'celltypist_sample'")
    dataset = query.to_cell_dataset(SPACE, "counts", metadata_columns="cell_type")
    assert dataset.categories == small.categories and list(dataset.categories) == ["cell_type"]
    assert dataset.__getitems__([0, 1]).metadata.keys() == {"cell_type"}


def test_features_given_as_a_generator_are_read_once(snapshot):
    """The loader's check read the generator, then the query got none: 'needs a non-empty list of names'."""
    query = snapshot.query().where("dataset_uid = 'celltypist_sample'")
    names = ["CD3E", "LYZ", "MS4A1"]
    dataset = query.to_cell_dataset(SPACE, "counts", features=(name for name in names))
    assert list(dataset.feature_uids) == list(
        query.to_cell_dataset(SPACE, "counts", features=names).feature_uids
    )
    assert len(dataset.feature_uids) == 3
    with pytest.raises(QueryError, match="a set has no order"):  # (its order differed from run to run)
        query.to_cell_dataset(SPACE, "counts", features=set(names))
