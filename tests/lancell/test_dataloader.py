"""CellDataset, CellSampler and collates on real bundled data, in one process (workers: *_workers.py)."""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from lancell.atlas import RaggedAtlas
from lancell.bundled import build_bundled_atlas
from lancell.dataloader import (
    CellDataset,
    CellSampler,
    DenseCollate,
    SparseCollate,
    batch_entropy,
    make_loader,
)
from lancell.errors import (
    FeatureSpaceError,
    LancellWarning,
    OutOfBoundsError,
    QueryError,
    UnmeasuredDataError,
)
from lancell.ingest.from_anndata import add_from_anndata
from lancell.query import reconstruct
from lancell.query.reconstruct import presence_matrix
from lancell.tables.schema import (
    DatasetRecord,
    DenseZarrPointer,
    FeatureBaseSchema,
    LancellBaseSchema,
    SparseZarrPointer,
)

SPACE = "gene_expression"


class Gene(FeatureBaseSchema):
    pass


class SplitCells(LancellBaseSchema):
    cell_type: str | None = None
    gene_expression: SparseZarrPointer | None = None
    expression_dense: DenseZarrPointer | None = None


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> RaggedAtlas:
    root = tmp_path_factory.mktemp("bundled")
    build_bundled_atlas(root)
    return RaggedAtlas.checkout_latest(str(root / "db"))


@pytest.fixture(scope="module")
def split(tmp_path_factory, mouse) -> RaggedAtlas:
    """Two datasets of the mouse data with overlapping panels (the second in a shuffled gene order), stored
    in a sparse and a dense feature space."""
    root = tmp_path_factory.mktemp("split")
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        SplitCells,
        store=str(root / "arrays"),
        registry_schemas={SPACE: Gene, "expression_dense": Gene},
    )
    genes = pd.DataFrame({"uid": mouse.var_names})
    atlas.register_features(SPACE, genes)
    atlas.register_features("expression_dense", genes)
    rng = np.random.default_rng(0)
    parts = {
        "a": mouse[:300, :600].copy(),
        "b": mouse[300:700, 400 + rng.permutation(600)].copy(),
    }
    for uid, part in parts.items():
        part.obs["cell_type"] = np.where(np.arange(part.n_obs) % 5 == 0, None, f"type_{uid}")
        for space in (SPACE, "expression_dense"):
            part.obs_names = [f"{space}-{n}" for n in part.obs_names]
            add_from_anndata(
                atlas,
                part,
                feature_space=space,
                zarr_layer="counts",
                dataset_record=DatasetRecord(uid=f"{uid}_{space}"),
                progress=False,
            )
    atlas.optimize()
    atlas.snapshot()
    return RaggedAtlas.checkout_latest(str(root / "db"))


def _in_registry_columns(adata, width: int) -> sp.csr_matrix:
    """``adata.X`` as CSR with each column moved to its registry global index."""
    x = sp.coo_matrix(adata.X)
    columns = adata.var["global_index"].to_numpy()
    return sp.csr_matrix((x.data, (x.row, columns[x.col])), shape=(adata.n_obs, width))


def _csr(batch) -> sp.csr_matrix:
    return sp.csr_matrix((batch.values, batch.indices, batch.offsets), shape=(len(batch), batch.n_features))


def _assert_same(actual: sp.csr_matrix, expected: sp.csr_matrix) -> None:
    assert actual.shape == expected.shape
    assert actual.has_sorted_indices
    expected.sort_indices()
    np.testing.assert_array_equal(actual.indptr, expected.indptr)
    np.testing.assert_array_equal(actual.indices, expected.indices)
    np.testing.assert_array_equal(actual.data, expected.data)


def _epoch_matrix(loader, n_cells: int, n_features: int) -> sp.csr_matrix:
    """Reassemble one epoch of collated sparse batches into a CSR in dataset order; every cell once."""
    rows, parts = [], []
    for out in loader:
        x = out["X"]
        parts.append(
            sp.csr_matrix(
                (x.values().numpy(), x.col_indices().numpy(), x.crow_indices().numpy()), shape=tuple(x.shape)
            )
        )
        rows.append(out["index"].numpy())
    order = np.concatenate(rows)
    assert np.array_equal(np.sort(order), np.arange(n_cells))
    stacked = sp.vstack(parts).tocsr()
    return sp.csr_matrix(stacked[np.argsort(order)], shape=(n_cells, n_features))


# ------------------------------------------------------------------------------------------------ dataset
def test_batch_in_request_order_equals_to_anndata(bundled):
    query = bundled.query().layers(SPACE, "counts").on_unmeasured("keep")
    dataset = query.to_cell_dataset(SPACE, "counts", features="registry")
    reference = query.to_anndata()
    assert list(dataset.feature_uids) == list(query.all_features(SPACE).to_anndata().var_names)
    assert len(dataset) == reference.n_obs == 11259
    assert dataset.source.snapshot_version == 0 and dataset.source.db_uri == bundled.db_uri
    order = np.random.default_rng(1).permutation(len(dataset))[:3000]
    batch = dataset.__getitems__(order)
    np.testing.assert_array_equal(batch.index, order)
    assert batch.values.dtype == reference.X.dtype
    _assert_same(_csr(batch), _in_registry_columns(reference, dataset.n_features)[order])
    # pbmc68k stores no "counts": its cells read as empty rows with an all-False presence mask
    pbmc = reference.obs["dataset_uid"].to_numpy()[order] == "pbmc68k"
    assert pbmc.any() and not np.diff(batch.offsets)[pbmc].any() and not batch.presence[pbmc].any()
    single = dataset[int(order[0])]
    np.testing.assert_array_equal(single.indices, batch.indices[: batch.offsets[1]])
    with pytest.raises(OutOfBoundsError):
        dataset.__getitems__([len(dataset)])


def test_from_atlas_reads_the_cells_of_its_where_and_limit(bundled):
    where = "dataset_uid = 'mouse_10k'"
    dataset = CellDataset.from_atlas(
        bundled, SPACE, "counts", where=where, limit=700, metadata_columns="cell_type"
    )
    expected = (
        bundled.query().where(where).limit(700).to_cell_dataset(SPACE, "counts", metadata_columns="cell_type")
    )
    assert len(dataset) == len(expected) == 700
    assert list(dataset.feature_uids) == list(expected.feature_uids)
    positions = np.arange(700)
    got, want = dataset.__getitems__(positions), expected.__getitems__(positions)
    _assert_same(_csr(got), _csr(want))
    np.testing.assert_array_equal(got.metadata["cell_type"], want.metadata["cell_type"])


def test_zero_worker_epoch_equals_to_anndata(bundled):
    query = bundled.query().where("dataset_uid != 'mouse_10k'").on_unmeasured("keep")
    dataset = query.to_cell_dataset(SPACE, "log_normalized", features="union")
    reference = query.layers(SPACE, "log_normalized").to_anndata()
    assert list(dataset.feature_uids) == list(reference.var_names)
    sampler = CellSampler(dataset, 100, mode="random", seed=0)
    actual = _epoch_matrix(make_loader(dataset, sampler), len(dataset), dataset.n_features)
    _assert_same(actual, sp.csr_matrix(reference.X))


@pytest.mark.parametrize("features", ["union", "intersection", "list"])
@pytest.mark.parametrize("space", [SPACE, "expression_dense"])
def test_fixed_feature_sets_sparse_and_dense(split, mouse, features, space):
    query = split.query().where(f"dataset_uid LIKE '%{space}'").feature_space(space).layers(space, "counts")
    if features == "list":
        uids = list(mouse.var_names[[999, 5, 450, 0, 700]])  # not in global order; 0 and 5 only in "a"
        query = query.features(uids, space)
    else:
        query = query.feature_join(features)
    dataset = query.to_cell_dataset(space, "counts")  # the query's features() and feature_join() apply
    reference = query.to_anndata()
    assert dataset.kind == ("sparse" if space == SPACE else "dense")
    assert list(dataset.feature_uids) == list(reference.var_names)
    assert dataset.n_features == {"union": 1000, "intersection": 200, "list": 5}[features]
    order = np.random.default_rng(2).permutation(len(dataset))
    batch = dataset.__getitems__(order)
    if space == SPACE:
        _assert_same(_csr(batch), sp.csr_matrix(reference.X)[order])
    else:
        np.testing.assert_array_equal(batch.dense, reference.X[order])
        assert dataset.nbytes()["pointers"] == 12 * len(dataset)
    np.testing.assert_array_equal(batch.presence, presence_matrix(reference).toarray()[order])


def test_a_loader_over_a_union_of_panels_without_presence_warns(split):
    """Batches held 0 where a dataset never measured a gene, with nothing to tell it from a measured 0."""
    query = split.query().where(f"dataset_uid LIKE '%{SPACE}'").layers(SPACE, "counts")
    union = query.to_cell_dataset(SPACE, "counts")
    sampler = CellSampler(union, 50)
    with pytest.warns(LancellWarning, match=r"800 of the 1000 features were not measured by every dataset"):
        make_loader(union, sampler)

    @dataclasses.dataclass(frozen=True)
    class OwnCollate(SparseCollate):  # a subclass reads the same zeros (it was let through without a word)
        pass

    with pytest.warns(LancellWarning, match=r"800 of the 1000 features were not measured by every dataset"):
        make_loader(union, sampler, collate_fn=OwnCollate())
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)
        make_loader(union, sampler, collate_fn=SparseCollate(presence=True))
        common = query.feature_join("intersection").to_cell_dataset(SPACE, "counts")
        make_loader(common, CellSampler(common, 50))


def test_a_loader_over_cells_kept_without_a_layer_warns(bundled):
    """on_unmeasured("keep") read a dataset's missing layer as rows of zeros: without presence nothing
    said so, and for a layer after the first the presence mask marked them measured."""
    base = bundled.query().where(dataset_uid=["pbmc68k", "celltypist_sample"]).on_unmeasured("keep")
    base = base.feature_join("intersection")
    counts = base.layers(SPACE, "counts").to_cell_dataset(SPACE, "counts")
    with pytest.warns(
        LancellWarning, match=r"datasets \['pbmc68k'\] were kept without layer 'counts'.* X in"
    ):
        make_loader(counts, CellSampler(counts, 50))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)
        make_loader(counts, CellSampler(counts, 50), collate_fn=SparseCollate(presence=True))
    both = ["log_normalized", "counts"]
    two = base.layers(SPACE, both).to_cell_dataset(SPACE, both)
    with pytest.warns(LancellWarning, match=r"\['pbmc68k'\] were kept without layer 'counts'.*covers X only"):
        make_loader(two, CellSampler(two, 50), collate_fn=SparseCollate(presence=True))


def test_an_empty_intersection_of_panels_warns(bundled, monkeypatch):
    """The intersection of a human and a mouse panel gave batches of 0 features, silently; its AnnData read
    every dataset's matrix for no column (3.9 s of 7.5 at 1,500 datasets)."""
    query = bundled.query().where(dataset_uid=["celltypist_sample", "mouse_10k"]).feature_join("intersection")
    with pytest.warns(
        LancellWarning, match="panels have no feature in common: the intersection of 2 datasets"
    ):
        assert query.to_cell_dataset(SPACE, "counts").n_features == 0
    reads = []
    for reader in ("read_element_ranges", "read_csc_features", "read_rows"):
        original = getattr(reconstruct, reader)
        monkeypatch.setattr(
            reconstruct, reader, lambda *a, _o=original, _n=reader, **k: reads.append(_n) or _o(*a, **k)
        )
    with pytest.warns(LancellWarning, match="panels have no feature in common"):
        assert query.to_anndata().shape == (559 + 10_000, 0)
    assert reads == []
    assert query.feature_join("union").limit(3).to_anndata().X.nnz > 0 and reads  # (the spies count reads)


def test_loader_honours_query_features_by_symbol_and_uid(bundled):
    genes = ["LYZ", "CD3D", "MS4A1"]
    query = bundled.query().where("dataset_uid = 'pbmc68k'").features(genes, SPACE)
    dataset = query.to_cell_dataset(SPACE, "log_normalized")
    reference = query.to_anndata()
    assert reference.shape == (700, 3) and dataset.n_features == 3
    assert list(dataset.feature_uids) == genes
    _assert_same(_csr(dataset.__getitems__(np.arange(700))), sp.csr_matrix(reference.X))
    mouse = bundled.query().where("dataset_uid = 'mouse_10k'")
    by_symbol = mouse.to_cell_dataset(SPACE, "counts", features=["Rp1"])  # two Ensembl genes share it
    by_uid = mouse.to_cell_dataset(SPACE, "counts", features=by_symbol.feature_uids)  # an array, as given
    assert by_symbol.n_features == 2 and list(by_uid.feature_uids) == list(by_symbol.feature_uids)
    assert list(by_symbol.feature_uids) == list(mouse.features(["Rp1"], SPACE).to_anndata().var_names)
    assert query.to_cell_dataset(SPACE, "log_normalized", features=genes).n_features == 3  # same: fine
    for named in (np.array(genes), pd.Index(genes)):  # (the truth value of an array was asked)
        assert query.to_cell_dataset(SPACE, "log_normalized", features=named).n_features == 3
    with pytest.raises(QueryError, match="the query selects features"):
        query.to_cell_dataset(SPACE, "log_normalized", features=["CD3D"])
    with pytest.raises(QueryError, match="the query joins by 'intersection'"):
        bundled.query().feature_join("intersection").to_cell_dataset(SPACE, "counts", features="union")
    with pytest.raises(QueryError, match="the query reads layer 'counts'"):
        bundled.query().layers(SPACE, "counts").to_cell_dataset(SPACE, "log_normalized")


def test_loader_columns_and_values_equal_to_anndata(bundled):
    query = bundled.query().where("dataset_uid != 'pbmc68k'").layers(SPACE, "counts")
    reference = query.to_anndata()
    dataset = query.to_cell_dataset(SPACE, "counts")
    assert dataset.n_features == reference.n_vars == 32786 + 1000  # the union of both panels
    assert list(dataset.feature_uids) == list(reference.var_names)
    np.testing.assert_array_equal(dataset.feature_index, reference.var["global_index"].to_numpy())
    rows = np.array([10558, 0, 100, 558, 559, 5000])
    np.testing.assert_array_equal(_csr(dataset.__getitems__(rows)).toarray(), reference.X[rows].toarray())


def test_loader_unmeasured_policies(bundled):
    query = bundled.query().where("organism = 'Homo sapiens'").layers(SPACE, "counts")
    message = "700 of the 1259 selected cells did not measure layer 'counts' of 'gene_expression': "
    message += "dataset 'pbmc68k': 700 cells (their group has no layer 'counts')"
    with pytest.raises(UnmeasuredDataError, match=re.escape(message)):
        query.to_cell_dataset(SPACE, "counts")
    dropping = query.on_unmeasured("drop")
    dropped = dropping.to_cell_dataset(SPACE, "counts", metadata_columns=["dataset_uid"])
    assert len(dropped) == 559 and dropped.unmeasured == {"pbmc68k": 700}
    assert dropped.categories["dataset_uid"] == ["celltypist_sample"]
    assert dropped.groups.dataset_uids == ["celltypist_sample"]
    _assert_same(_csr(dropped.__getitems__(np.arange(559))), sp.csr_matrix(dropping.to_anndata().X))
    keeping = query.on_unmeasured("keep")
    kept = keeping.to_cell_dataset(SPACE, "counts")
    assert len(kept) == 1259 and kept.on_unmeasured == "keep" and kept.unmeasured == {"pbmc68k": 700}
    pbmc = keeping.to_pandas()["dataset_uid"].to_numpy() == "pbmc68k"
    batch = kept.__getitems__(np.arange(1259))
    assert pbmc.sum() == 700 and not np.diff(batch.offsets)[pbmc].any()
    assert not batch.presence[pbmc].any() and batch.presence[~pbmc].all()
    _assert_same(_csr(batch), sp.csr_matrix(keeping.to_anndata().X))


def test_dense_collate_normalizes_like_scanpy(split):
    query = split.query().where(f"dataset_uid LIKE '%{SPACE}'").layers(SPACE, "counts")
    reference = query.feature_join("union").to_anndata()
    counts = reference.X.toarray().astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    expected = np.log1p(np.divide(1e4 * counts, totals, out=np.zeros_like(counts), where=totals > 0))
    for space in (SPACE, "expression_dense"):
        dataset = (
            split.query()
            .where(f"dataset_uid LIKE '%{space}'")
            .to_cell_dataset(space, "counts", features="union")
        )
        rows = np.arange(len(dataset))[::-1]
        out = DenseCollate(normalize=True, presence=True)(dataset.__getitems__(rows))
        assert out["X"].dtype == torch.float32 and out["presence"].dtype == torch.bool
        np.testing.assert_allclose(out["X"].numpy(), expected[rows], rtol=1e-5, atol=1e-6)
        raw = DenseCollate()(dataset.__getitems__(rows))["X"].numpy()
        np.testing.assert_array_equal(raw, counts[rows].astype(np.float32))


def test_metadata_codes_and_categories(bundled):
    query = bundled.query().on_unmeasured("keep")
    dataset = query.to_cell_dataset(
        SPACE, "counts", metadata_columns=["cell_type", "n_counts", "dataset_uid"]
    )
    obs = query.to_pandas()
    rows = np.arange(0, len(dataset), 7)
    out = SparseCollate()(dataset.__getitems__(rows))
    assert out["X"].layout == torch.sparse_csr and out["cell_type"].dtype == torch.int64
    labels = np.asarray(dataset.categories["cell_type"] + [None], dtype=object)
    assert list(labels[out["cell_type"].numpy()]) == list(obs["cell_type"].iloc[rows])
    np.testing.assert_array_equal(out["n_counts"].numpy(), obs["n_counts"].to_numpy()[rows])
    datasets = np.asarray(dataset.categories["dataset_uid"])
    assert list(datasets[out["dataset_uid"].numpy()]) == list(obs["dataset_uid"].iloc[rows])
    assert dataset.metadata.bytes_per_cell == 1 + 8 + 1  # int8 codes, float64, int8 codes
    with pytest.raises(QueryError):
        query.to_cell_dataset(SPACE, "counts", metadata_columns=["no_such_column"])
    with pytest.raises(QueryError):
        query.to_cell_dataset(SPACE, "counts", features=["NOT_A_GENE"])
    with pytest.raises(FeatureSpaceError):
        query.to_cell_dataset(SPACE, "raw_spliced")


def test_fixed_categories_give_a_label_one_code_in_every_dataset(bundled):
    """A validation set without one of the training set's labels numbered the others differently (codes are
    a set's own labels, sorted): ``categories=`` fixes them."""
    query = bundled.query().on_unmeasured("keep")
    train = query.to_cell_dataset(SPACE, "counts", metadata_columns=["cell_type"])
    labels = train.categories["cell_type"]
    first = labels[0]
    held_out = query.where(f"cell_type IS NULL OR cell_type != '{first}'")
    alone = held_out.to_cell_dataset(SPACE, "counts", metadata_columns=["cell_type"])
    assert alone.categories["cell_type"] == labels[1:]  # its own codes: shifted by one
    fixed = held_out.to_cell_dataset(
        SPACE, "counts", metadata_columns="cell_type", categories=train.categories
    )
    assert fixed.categories["cell_type"] == labels
    obs = held_out.to_pandas()
    decoded = np.asarray([*labels, None], dtype=object)[fixed.metadata.values["cell_type"]]
    assert decoded.tolist() == obs["cell_type"].tolist()
    with pytest.raises(
        QueryError, match=r"labels \[.*\] of the selected cells are not among the 2 categories"
    ):
        query.to_cell_dataset(
            SPACE, "counts", metadata_columns=["cell_type"], categories={"cell_type": labels[:2]}
        )
    with pytest.raises(QueryError, match="categories given for 'n_counts', which is not a string column"):
        query.to_cell_dataset(SPACE, "counts", metadata_columns=["n_counts"], categories={"n_counts": ["1"]})
    with pytest.raises(QueryError, match=r"categories\['cell_type'\] repeats labels"):
        query.to_cell_dataset(
            SPACE, "counts", metadata_columns=["cell_type"], categories={"cell_type": ["a", "a"]}
        )


def test_pickle_holds_no_handles_and_16_bytes_per_cell(bundled):
    small = bundled.query().on_unmeasured("keep").limit(2000).to_cell_dataset(SPACE, "counts")
    large = bundled.query().on_unmeasured("keep").to_cell_dataset(SPACE, "counts")
    assert len(large.groups.names) == len(small.groups.names) == 3
    sizes = large.nbytes()
    assert sizes["pointers"] / len(large) == 16 and sizes["metadata"] == 0
    before = large.__getitems__(np.arange(0, len(large), 11))
    blob = pickle.dumps(large)
    assert large._root is not None and large._store is not None
    marginal = (len(blob) - len(pickle.dumps(small))) / (len(large) - len(small))
    assert marginal <= 16.01
    clone = pickle.loads(blob)
    assert clone._root is None and clone._store is None and clone._arrays == {}
    after = clone.__getitems__(np.arange(0, len(large), 11))
    _assert_same(_csr(after), _csr(before))


def test_nbytes_counts_the_labels_of_string_metadata(bundled):
    """A metadata column of one label per cell (the cell names) holds its labels in every worker: nbytes()
    said 2 bytes a cell (the codes), where the 1M labels of a 1M-cell dataset took 72 MiB per worker."""
    query = bundled.query().where(dataset_uid="mouse_10k")
    dataset = query.to_cell_dataset(SPACE, "counts", metadata_columns=["obs_name"])
    labels = dataset.metadata.categories["obs_name"]
    assert len(labels) == len(dataset) == 10_000
    assert dataset.nbytes()["metadata"] > 2 * len(dataset) + sum(len(label) for label in labels)


def test_live_atlas_records_no_snapshot(atlas, celltypist):
    record = DatasetRecord(uid="ct")
    part = celltypist[:50]
    add_from_anndata(
        atlas, part, feature_space=SPACE, zarr_layer="counts", dataset_record=record, progress=False
    )
    dataset = atlas.query().to_cell_dataset(SPACE, "counts")
    assert dataset.source.snapshot_version is None and len(dataset) == 50
    assert dataset.source.cell_table_version == atlas.core.tables.cells.version
    expected = sp.csr_matrix(atlas.query().to_anndata().X)
    _assert_same(_csr(pickle.loads(pickle.dumps(dataset)).__getitems__(np.arange(50))), expected)


# ------------------------------------------------------------------------------------------------ sampler
def _flatten(sampler) -> np.ndarray:
    return np.concatenate([np.asarray(b) for b in sampler])


@pytest.mark.parametrize("mode", ["random", "locality"])
def test_sampler_seeded_epochs_cover_every_cell_once(bundled, mode):
    dataset = bundled.query().on_unmeasured("keep").to_cell_dataset(SPACE, "counts")
    sampler = CellSampler(dataset, 256, mode=mode, seed=7)
    first = list(sampler)
    assert len(first) == len(sampler) == -(-len(dataset) // 256)
    assert all(len(b) == 256 for b in first[:-1])
    assert np.array_equal(np.sort(_flatten(first)), np.arange(len(dataset)))
    assert list(CellSampler(dataset, 256, mode=mode, seed=7)) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and np.array_equal(np.sort(_flatten(second)), np.arange(len(dataset)))
    assert list(CellSampler(dataset, 256, mode=mode, seed=8)) != first
    dropped = CellSampler(dataset, 256, mode=mode, seed=7, drop_last=True)
    assert len(dropped) == len(dataset) // 256 and all(len(b) == 256 for b in dropped)


def test_locality_batches_are_few_contiguous_blocks_that_mix(bundled):
    dataset = bundled.query().on_unmeasured("keep").to_cell_dataset(SPACE, "counts")
    locality = CellSampler(dataset, 256, mode="locality", seed=0)
    random = CellSampler(dataset, 256, mode="random", seed=0)
    rank_in_storage = np.empty(len(dataset), dtype=np.int64)
    rank_in_storage[dataset.locality_order()] = np.arange(len(dataset))
    runs = [np.count_nonzero(np.diff(np.sort(rank_in_storage[b])) != 1) + 1 for b in locality]
    assert locality.block_size == 32 and np.mean(runs) <= 256 // 32 + 1 and max(runs) <= 256 // 32 + 4
    assert np.median([len(np.unique(dataset.cell_groups[b])) for b in locality]) >= 2
    groups = dataset.cell_groups
    p = np.bincount(groups) / groups.size
    overall = float(-(p * np.log2(p)).sum())
    e_random, e_locality = batch_entropy(dataset, random), batch_entropy(dataset, locality)
    assert 0.8 * overall < e_random <= overall + 0.05
    assert 0.1 < e_locality < e_random
    first = {tuple(sorted(b)) for b in locality}
    locality.set_epoch(1)
    assert len(first & {tuple(sorted(b)) for b in locality}) <= 1  # blocks are re-drawn into new batches


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("mode", ["random", "locality"])
def test_sampler_shards_equal_disjoint_complete(bundled, mode, drop_last):
    dataset = bundled.query().on_unmeasured("keep").limit(1000).to_cell_dataset(SPACE, "counts")
    world = 3
    shares = [
        list(CellSampler(dataset, 64, mode=mode, seed=5, drop_last=drop_last, num_replicas=world, rank=r))
        for r in range(world)
    ]
    assert len({len(s) for s in shares}) == 1
    assert len({tuple(len(b) for b in s) for s in shares}) == 1
    cells = np.concatenate([_flatten(s) for s in shares])
    if drop_last:
        assert cells.size == 1000 // (world * 64) * world * 64 and np.unique(cells).size == cells.size
    else:
        assert cells.size == -(-1000 // world) * world  # padded by repeating, like DistributedSampler
        assert np.array_equal(np.unique(cells), np.arange(1000))
    with pytest.raises(ValueError):
        CellSampler(dataset, 64, num_replicas=2, rank=2)


def test_replicas_reading_the_live_atlas_are_warned(bundled):
    """Ranks that built their datasets on the live atlas at different moments split different cell lists
    (cells on two ranks or none, unequal batch counts): each rank is warned; a snapshot's dataset is not."""
    import warnings

    live_atlas = RaggedAtlas.open(bundled.db_uri, read_only=True)
    live = live_atlas.query().on_unmeasured("keep").limit(100).to_cell_dataset(SPACE, "counts")
    with pytest.warns(LancellWarning, match="rank 1 of 2 reads a dataset built on the live atlas"):
        CellSampler(live, 16, num_replicas=2, rank=1)
    pinned = bundled.query().on_unmeasured("keep").limit(100).to_cell_dataset(SPACE, "counts")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CellSampler(pinned, 16, num_replicas=2, rank=1)
        CellSampler(live, 16)  # one replica: nothing to split
