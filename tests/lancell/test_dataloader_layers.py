"""The loader with several layers per dataset: every layer of every batch equals ``to_anndata()``'s rows
(values, dtype kind, sparsity), in process, on threads and in two DataLoader workers; the unmeasured policy
per layer; and the layers per dataset shown by ``count(group_by="dataset_uid")`` and ``list_datasets()``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from lancell.atlas import RaggedAtlas
from lancell.dataloader import CellSampler, DenseCollate, SparseCollate, make_loader
from lancell.errors import ArgumentError, QueryError, UnmeasuredDataError
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord, DenseZarrPointer, FeatureBaseSchema, LancellBaseSchema

SPACE = "gene_expression"
LAYERS = {"log_normalized": "X", "counts": "counts"}
BOTH = ["log_normalized", "counts"]


def _two_layers(celltypist: ad.AnnData, cells: slice) -> ad.AnnData:
    """X log-normalized float32 and layers["counts"] integer, on the same entries."""
    adata = celltypist[cells].copy()
    adata.obs = adata.obs[[]]
    counts = sp.csr_matrix(adata.X).astype(np.int64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    normalized = sp.csr_matrix(sp.diags(1e4 / totals) @ counts)
    normalized.data = np.log1p(normalized.data)
    adata.X = normalized.astype(np.float32)
    adata.layers["counts"] = counts
    return adata


def _ingest(atlas: RaggedAtlas, adata: ad.AnnData, uid: str, space: str = SPACE, **kwargs) -> DatasetRecord:
    return add_from_anndata(
        atlas, adata, feature_space=space, dataset_record=DatasetRecord(uid=uid), progress=False, **kwargs
    )


def _scipy(x: torch.Tensor) -> sp.csr_matrix:
    crow, col, values = x.crow_indices().numpy(), x.col_indices().numpy(), x.values().numpy()
    return sp.csr_matrix((values, col, crow), shape=tuple(x.shape))


def _epoch(loader, n_cells: int, names: list[str]) -> dict[str, sp.csr_matrix]:
    """One epoch's layers, rows reassembled in dataset order (each cell exactly once)."""
    order, parts = [], {name: [] for name in names}
    for out in loader:
        order.append(out["index"].numpy())
        tensors = {names[0]: out["X"], **out.get("layers", {})}
        assert list(tensors) == names
        for name, x in tensors.items():
            parts[name].append(_scipy(x))
    order = np.concatenate(order)
    assert np.array_equal(np.sort(order), np.arange(n_cells))
    back = np.argsort(order)
    return {name: sp.csr_matrix(sp.vstack(p, format="csr")[back]) for name, p in parts.items()}


def _assert_rows(got: sp.spmatrix, want: sp.spmatrix) -> None:
    """Equal values, dtype and sparsity (explicit zeros count as entries)."""
    got, want = sp.csr_matrix(got), sp.csr_matrix(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)


def _reference(query, names: list[str]) -> dict[str, sp.csr_matrix]:
    adata = query.to_anndata()
    return {names[0]: adata.X, **{name: adata.layers[name] for name in names[1:]}}


def _check_loader(query, names: list[str], mode: str, **loader_kwargs) -> None:
    """Batches of the query's dataset (every requested layer) equal ``to_anndata()``'s, as int64 / float32."""
    expected = _reference(query, names)
    assert [m.dtype.kind for m in expected.values()] == ["f" if n == "log_normalized" else "i" for n in names]
    dataset = query.to_cell_dataset(SPACE, names)
    assert dataset.layers == names and dataset.layer == names[0]
    sampler = CellSampler(dataset, 64, mode=mode, seed=5)
    loader = make_loader(dataset, sampler, collate_fn=SparseCollate(dtype=None), **loader_kwargs)
    got = _epoch(loader, len(dataset), names)
    for name in names:
        _assert_rows(got[name], expected[name])


@pytest.fixture
def two(atlas, celltypist) -> tuple[RaggedAtlas, ad.AnnData]:
    """One two-layer dataset ingested once, and a second whose genes are stored in another (permuted) order,
    so that rows are re-sorted for the output columns."""
    adata = _two_layers(celltypist, slice(0, 300))
    _ingest(atlas, adata, "two", layers=LAYERS)
    shuffled = _two_layers(celltypist, slice(300, 420))
    shuffled = shuffled[:, np.random.default_rng(1).permutation(shuffled.n_vars)].copy()
    _ingest(atlas, shuffled, "shuffled", layers=LAYERS)
    return atlas, adata


@pytest.mark.parametrize("mode", ["random", "locality"])
def test_two_layer_batches_equal_to_anndata_in_process_and_threads(two, mode):
    atlas, adata = two
    query = atlas.query().layers(SPACE, BOTH)
    _check_loader(query, BOTH, mode)
    reverse = atlas.query().layers(SPACE, BOTH[::-1])
    _check_loader(reverse, BOTH[::-1], mode, threads=2)
    # the same stored values as the AnnData that was ingested (dataset "two" alone, stored column order)
    alone = atlas.query().where(dataset_uid="two").layers(SPACE, BOTH)
    dataset = alone.to_cell_dataset(SPACE, BOTH)
    batch = dataset.__getitems__(np.arange(len(dataset)))
    stored = adata[:, alone.to_anndata().var_names]
    counts = batch.layers["counts"]
    assert counts.values.dtype == np.uint32 and batch.values.dtype == np.float32
    got = sp.csr_matrix((batch.values, batch.indices, batch.offsets), shape=stored.shape)
    _assert_rows(got, sp.csr_matrix(stored.X).sorted_indices())
    got = sp.csr_matrix((counts.values.astype(np.int64), counts.indices, counts.offsets), shape=stored.shape)
    _assert_rows(got, sp.csr_matrix(stored.layers["counts"]).sorted_indices())
    assert dataset.mapped_batches == 0  # several layers: one batched read of the indices for all


def test_selected_features_and_default_collate_with_two_layers(two):
    atlas, _ = two
    registry = atlas.feature_registry(SPACE)
    features = registry["uid"].iloc[[40, 3, 17_000, 25, 9_000]].tolist()  # not in registry order
    query = atlas.query().layers(SPACE, BOTH).features(features, SPACE)
    expected = _reference(query, BOTH)
    dataset = query.to_cell_dataset(SPACE, BOTH)
    out = SparseCollate()(dataset.__getitems__(np.arange(len(dataset))))
    assert out["X"].dtype == out["layers"]["counts"].dtype == torch.float32  # the default: float32
    _assert_rows(_scipy(out["X"]), expected["log_normalized"])
    _assert_rows(_scipy(out["layers"]["counts"]), expected["counts"].astype(np.float32))
    dense = DenseCollate(normalize=True)(dataset.__getitems__(np.arange(len(dataset))))
    np.testing.assert_array_equal(dense["layers"]["counts"].numpy(), expected["counts"].toarray())
    x = expected["log_normalized"].toarray().astype(np.float64)  # normalize applies to X only
    totals = x.sum(axis=1, keepdims=True)
    scaled = np.log1p(x * np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0))
    np.testing.assert_allclose(dense["X"].numpy(), scaled.astype(np.float32), rtol=1e-6)


def test_two_workers_two_layers_equal_to_anndata(two):
    atlas, _ = two
    query = atlas.query().layers(SPACE, BOTH)
    for mode in ("random", "locality"):
        _check_loader(query, BOTH, mode, num_workers=2, timeout=120)


def test_after_add_layer_on_a_counts_only_dataset(atlas, celltypist):
    adata = _two_layers(celltypist, slice(0, 200))
    counts_only = adata.copy()
    counts_only.X = counts_only.layers.pop("counts")
    _ingest(atlas, counts_only, "late", zarr_layer="counts")
    stored = atlas.query().to_anndata()  # the dataset's stored order of cells and features
    normalized = adata[stored.obs_names.str.split(":").str[1], stored.var_names].X
    names = pd.DataFrame(index=stored.obs_names.str.split(":", n=1).str[1])  # (the stored order, named)
    layer = ad.AnnData(X=sp.csr_matrix(normalized), obs=names, var=pd.DataFrame(index=stored.var_names))
    add_layer(atlas, "late", "log_normalized", layer)
    snapshot = RaggedAtlas.checkout(atlas.db_uri, atlas.snapshot())
    query = snapshot.query().layers(SPACE, ["counts", "log_normalized"])
    for mode in ("random", "locality"):
        _check_loader(query, ["counts", "log_normalized"], mode)
    expected = _reference(query, ["counts", "log_normalized"])
    _assert_rows(expected["log_normalized"], sp.csr_matrix(normalized).sorted_indices())


def test_layers_with_their_own_patterns_leave_out_the_padding(atlas, celltypist):
    adata = _two_layers(celltypist, slice(0, 80))
    x = adata.X.tolil()
    x[0, 0], x[1, 5] = 1.5, 2.5  # entries counts does not have
    x = sp.csr_matrix(x)
    x.data[x.data < 1.0] = 0
    x.eliminate_zeros()  # and fewer entries than counts
    adata.X = x.astype(np.float32)
    _ingest(atlas, adata, "own", layers=LAYERS)
    query = atlas.query().layers(SPACE, BOTH)
    expected = _reference(query, BOTH)
    assert expected["log_normalized"].nnz == x.nnz and expected["counts"].nnz == adata.layers["counts"].nnz
    _check_loader(query, BOTH, "random")


def test_union_with_a_counts_only_dataset_follows_the_policy_per_layer(two, celltypist):
    atlas, _ = two
    counts_only = celltypist[420:470].copy()
    counts_only.obs = counts_only.obs[[]]
    _ingest(atlas, counts_only, "one", zarr_layer="counts")
    names = ["counts", "log_normalized"]
    _check_loader(atlas.query().layers(SPACE, "counts"), ["counts"], "random")  # both datasets
    with pytest.raises(
        UnmeasuredDataError,
        match=r"50 of the 470 selected cells did not measure layer 'log_normalized'.*dataset 'one': 50 cells",
    ):
        atlas.query().layers(SPACE, names).to_cell_dataset(SPACE, names)
    dropped = atlas.query().layers(SPACE, names).on_unmeasured("drop")
    dataset = dropped.to_cell_dataset(SPACE, names)
    assert len(dataset) == 420 and dataset.unmeasured == {"one": 50}
    _check_loader(dropped, names, "locality")
    kept = atlas.query().layers(SPACE, names).on_unmeasured("keep")
    dataset = kept.to_cell_dataset(SPACE, names)
    assert len(dataset) == 470 and dataset.unmeasured == {"one": 50}
    for mode in ("random", "locality"):
        _check_loader(kept, names, mode)
    batch = dataset.__getitems__(np.arange(len(dataset)))
    one = kept.to_anndata().obs["dataset_uid"].to_numpy() == "one"
    assert np.diff(batch.layers["log_normalized"].offsets)[one].sum() == 0  # empty rows in the lacking layer
    assert np.diff(batch.offsets)[one].sum() == counts_only.X.nnz  # their counts are read
    np.testing.assert_array_equal(batch.presence.any(axis=1), np.ones(470, bool))  # X (counts): measured
    # log_normalized first: the counts-only cells have no X, and presence False, as to_anndata's varm says
    first = atlas.query().layers(SPACE, names[::-1]).on_unmeasured("keep")
    batch = first.to_cell_dataset(SPACE, names[::-1]).__getitems__(np.arange(470))
    presence = first.to_anndata().varm["presence"]
    assert not presence["one"].any()
    np.testing.assert_array_equal(batch.presence.any(axis=1), ~one)
    _check_loader(first, names[::-1], "random")


def test_a_layer_no_cell_measured_has_the_kind_to_anndata_gives_it(two, celltypist):
    atlas, _ = two
    counts_only = celltypist[420:430].copy()
    counts_only.obs = counts_only.obs[[]]
    _ingest(atlas, counts_only, "one", zarr_layer="counts")
    names = ["counts", "log_normalized"]
    kept = atlas.query().where("dataset_uid = 'one'").layers(SPACE, names).on_unmeasured("keep")
    expected = kept.to_anndata().layers["log_normalized"].dtype
    loader = make_loader(
        dataset := kept.to_cell_dataset(SPACE, names),
        CellSampler(dataset, 10, mode="random", seed=0),
        collate_fn=SparseCollate(dtype=None),
    )
    batch = next(iter(loader))
    assert expected == np.float32  # as the other dataset stores it (both read it as int64 where none did)
    assert batch["layers"]["log_normalized"].dtype == torch.float32


class DenseCells(LancellBaseSchema):
    expression_dense: DenseZarrPointer | None = None


class Gene(FeatureBaseSchema):
    pass


def test_dense_feature_space_two_layers(tmp_path, celltypist):
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        DenseCells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"expression_dense": Gene},
    )
    adata = _two_layers(celltypist, slice(0, 60))[:, :500].copy()
    adata.X = adata.X.toarray()
    adata.layers["counts"] = adata.layers["counts"].toarray()
    atlas.register_features("expression_dense", pd.DataFrame({"uid": adata.var_names}))
    _ingest(atlas, adata, "dense", space="expression_dense", layers=LAYERS)
    query = atlas.query().layers("expression_dense", BOTH)
    expected = query.to_anndata()
    dataset = query.to_cell_dataset("expression_dense", BOTH)
    assert dataset.kind == "dense" and dataset.dtypes == {"log_normalized": np.float32, "counts": np.uint32}
    positions = np.random.default_rng(0).permutation(len(dataset))[:25]
    batch = dataset.__getitems__(positions)
    np.testing.assert_array_equal(batch.dense, expected.X[positions])
    np.testing.assert_array_equal(batch.layers["counts"], expected.layers["counts"][positions])
    out = DenseCollate()(batch)
    np.testing.assert_array_equal(out["layers"]["counts"].numpy(), expected.layers["counts"][positions])
    np.testing.assert_array_equal(out["X"].numpy(), expected.X[positions])
    # a sparse collate for dense batches: refused by make_loader, not at the first batch (in a worker)
    with pytest.raises(ArgumentError, match=r"SparseCollate needs a sparse feature space; .* is dense"):
        make_loader(dataset, CellSampler(dataset, 8), num_workers=2, collate_fn=SparseCollate())
    with pytest.raises(TypeError, match="SparseCollate needs a sparse batch"):  # an ArgumentError
        SparseCollate()(batch)


def test_count_and_list_datasets_show_each_datasets_layers(two, celltypist):
    atlas, _ = two
    counts_only = celltypist[420:470].copy()
    counts_only.obs = counts_only.obs[[]]
    _ingest(atlas, counts_only, "one", zarr_layer="counts")
    per_dataset = atlas.query().count(group_by="dataset_uid")
    assert per_dataset["cells"].to_dict() == {"two": 300, "shuffled": 120, "one": 50}
    assert per_dataset["layers"].map(list).to_dict() == {
        "two": ["log_normalized", "counts"],
        "shuffled": ["log_normalized", "counts"],
        "one": ["counts"],
    }
    records = atlas.list_datasets().set_index("uid")
    assert records["layers"].map(list).to_dict() == per_dataset["layers"].map(list).to_dict()
    assert atlas.query().where(dataset_uid="one").count(group_by="dataset_uid")["cells"].to_dict() == {
        "one": 50
    }
    assert atlas.query().count(group_by="cell_type").sum() == 470  # other columns: cells per value


def test_metadata_column_named_like_a_batch_key_is_refused(two):
    atlas, _ = two
    with pytest.raises(QueryError, match=r"metadata columns \['layers'\] would collide"):
        atlas.query().layers(SPACE, BOTH).to_cell_dataset(SPACE, BOTH, metadata_columns=["layers"])
