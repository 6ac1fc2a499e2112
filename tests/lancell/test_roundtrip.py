"""Exact round trips: integer and float layers, sparse and dense spaces, in-memory and backed."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import dense

from lancell.atlas import RaggedAtlas
from lancell.errors import IngestError, LancellWarning
from lancell.ingest.add_csc import add_csc, datasets_without_csc
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import (
    DatasetRecord,
    DenseZarrPointer,
    FeatureBaseSchema,
    LancellBaseSchema,
    SparseZarrPointer,
)


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class Protein(FeatureBaseSchema):
    pass


class BaseCells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


class MidCells(BaseCells):
    cell_type: str | None = None


class MultiCells(MidCells):
    """Three levels deep: pointers of every ancestor must be found."""

    n_counts: float | None = None
    organism: str | None = None
    expression_dense: DenseZarrPointer | None = None


def _atlas(tmp_path, genes) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        MultiCells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene, "expression_dense": Gene},
    )
    frame = pd.DataFrame({"uid": genes, "gene_symbol": genes})
    atlas.register_features("gene_expression", frame)
    atlas.register_features("expression_dense", frame)
    return atlas


def _round_trip(atlas, adata, space, layer, uid):
    out = atlas.query().where(f"dataset_uid = '{uid}'").feature_space(space).layers(space, layer).to_anndata()
    assert list(out.obs_names) == [f"{uid}:{n}" for n in adata.obs_names]
    return out[:, adata.var_names]


@pytest.mark.parametrize("form", ["csr", "csc", "dense"])
def test_integer_counts_exact_any_input_form(tmp_path, celltypist, form):
    adata = celltypist.copy()
    adata.X = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": lambda x: x.toarray()}[form](adata.X)
    atlas = _atlas(tmp_path, celltypist.var_names)
    add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="ct"),
        progress=False,
    )
    out = _round_trip(atlas, celltypist, "gene_expression", "counts", "ct")
    assert out.X.dtype.kind == "i"
    assert (out.X != celltypist.X).nnz == 0
    assert atlas.validate() == []


def test_float_layer_kept_float_and_exact(tmp_path, pbmc):
    atlas = _atlas(tmp_path, pbmc.var_names)
    add_from_anndata(
        atlas,
        pbmc,
        feature_space="gene_expression",
        zarr_layer="log_normalized",
        dataset_record=DatasetRecord(uid="pbmc"),
        progress=False,
    )
    out = _round_trip(atlas, pbmc, "gene_expression", "log_normalized", "pbmc")
    assert out.X.dtype == np.float32
    np.testing.assert_array_equal(out.X.toarray(), pbmc.X.toarray())
    assert out.obs["cell_type"].dtype == "category"
    assert list(out.obs["cell_type"]) == list(pbmc.obs["cell_type"])
    np.testing.assert_array_equal(out.obs["n_counts"].to_numpy(), pbmc.obs["n_counts"].to_numpy())


def _ingest_dense(atlas, mouse, **kwargs):
    """Ingest ``mouse`` as dataset ``mouse`` into the dense feature space's counts layer."""
    add_from_anndata(
        atlas,
        mouse,
        feature_space="expression_dense",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="mouse"),
        progress=False,
        **kwargs,
    )


def test_dense_feature_space_round_trip(tmp_path, mouse):
    atlas = _atlas(tmp_path, mouse.var_names)
    _ingest_dense(atlas, mouse)
    out = _round_trip(atlas, mouse, "expression_dense", "counts", "mouse")
    assert isinstance(out.X, np.ndarray) and out.X.dtype == np.float32
    np.testing.assert_array_equal(out.X, mouse.X)
    some = (
        atlas.query().where("dataset_uid = 'mouse'").feature_space("expression_dense").limit(7).to_anndata()
    )
    np.testing.assert_array_equal(some[:, mouse.var_names].X, mouse.X[:7])


def test_a_csc_copy_of_a_dense_dataset_is_warned_ignored_then_refused(tmp_path, mouse):
    """``csc=True`` was silently ignored for a dense feature space; ``add_csc`` of such a dataset failed
    with a bare ``KeyError`` (no ``csr`` group)."""
    atlas = _atlas(tmp_path, mouse.var_names)
    with pytest.warns(LancellWarning, match=r"csc=True is ignored: feature spaces \['expression_dense'\]"):
        _ingest_dense(atlas, mouse, csc=True)
    with pytest.raises(IngestError, match="'mouse' is in the dense feature space 'expression_dense'"):
        add_csc(atlas, "mouse")
    assert datasets_without_csc(atlas) == {}  # (add-csc --all leaves dense datasets out)
    assert atlas.validate() == []
    np.testing.assert_array_equal(_round_trip(atlas, mouse, "expression_dense", "counts", "mouse").X, mouse.X)


def test_sparse_space_from_dense_float_input(tmp_path, mouse):
    atlas = _atlas(tmp_path, mouse.var_names)
    add_from_anndata(
        atlas,
        mouse,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="mouse"),
        progress=False,
    )
    out = _round_trip(atlas, mouse, "gene_expression", "counts", "mouse")
    assert out.X.dtype == np.float32
    np.testing.assert_array_equal(out.X.toarray(), mouse.X)


def test_backed_h5ad_and_path_input(tmp_path, celltypist, pbmc):
    atlas = _atlas(tmp_path, celltypist.var_names.union(pbmc.var_names))
    path = tmp_path / "ct.h5ad"
    celltypist.write_h5ad(path)
    add_from_anndata(
        atlas,
        path,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="from_path"),
        progress=False,
    )
    add_from_anndata(
        atlas,
        ad.read_h5ad(path, backed="r"),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="backed"),
        on_duplicate="allow",  # the same content again, read another way
        progress=False,
    )
    for uid in ("from_path", "backed"):
        out = _round_trip(atlas, celltypist, "gene_expression", "counts", uid)
        assert (out.X != celltypist.X).nnz == 0


def test_named_layer_and_var_uid_column(tmp_path, pbmc):
    atlas = _atlas(tmp_path, [f"g{i}" for i in range(pbmc.n_vars)])
    adata = ad.AnnData(X=np.zeros(pbmc.shape, np.float32), obs=pbmc.obs.copy(), var=pbmc.var.copy())
    adata.layers["lognorm"] = pbmc.X.copy()
    adata.var["registry_uid"] = [f"g{i}" for i in range(pbmc.n_vars)]
    add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="log_normalized",
        source_layer="lognorm",
        var_uid_column="registry_uid",
        dataset_record=DatasetRecord(uid="p"),
        progress=False,
    )
    out = atlas.query().to_anndata()
    assert list(out.var_names) == list(adata.var["registry_uid"])
    np.testing.assert_array_equal(dense(out.X), dense(pbmc.X))


def test_layer_is_the_earlier_name_of_source_layer(tmp_path, pbmc):
    atlas = _atlas(tmp_path, pbmc.var_names)
    adata = ad.AnnData(X=np.zeros(pbmc.shape, np.float32), obs=pbmc.obs.copy(), var=pbmc.var.copy())
    adata.layers["lognorm"] = pbmc.X.copy()
    kwargs = {"feature_space": "gene_expression", "zarr_layer": "log_normalized", "progress": False}
    with pytest.raises(IngestError, match="give source_layer alone"):
        add_from_anndata(atlas, adata, source_layer="lognorm", layer="lognorm", **kwargs)
    assert atlas.list_datasets().empty  # refused before anything was written
    with pytest.warns(DeprecationWarning, match="named source_layer= now"):
        add_from_anndata(atlas, adata, layer="lognorm", dataset_record=DatasetRecord(uid="p"), **kwargs)
    np.testing.assert_array_equal(dense(atlas.query().to_anndata().X), dense(pbmc.X))


def test_large_dataset_spans_several_shards_and_blocks(tmp_path):
    rng = np.random.default_rng(7)
    n_cells, n_genes = 3000, 2000
    x = sp.random(n_cells, n_genes, density=0.4, format="csr", random_state=rng, dtype=np.float64)
    x.data = rng.negative_binomial(2, 0.5, size=x.nnz).astype(np.int64) + 1
    adata = ad.AnnData(
        X=x,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )
    atlas = _atlas(tmp_path, adata.var_names)
    record = add_from_anndata(
        atlas, adata, feature_space="gene_expression", zarr_layer="counts", progress=False
    )
    assert record.nnz == x.nnz > 2_000_000  # more than one shard and more than one source block
    picks = rng.choice(n_cells, 300, replace=False)
    names = ", ".join(f"'{record.uid}:c{i}'" for i in picks)
    out = atlas.query().where(f"uid IN ({names})").to_anndata()
    order = [int(n.rsplit(":c", 1)[1]) for n in out.obs_names]
    assert sorted(order) == sorted(picks.tolist())
    assert (out[:, adata.var_names].X != x[order]).nnz == 0


def test_sub_subclass_pointer_fields_found():
    from lancell.tables.schema import pointer_fields

    assert pointer_fields(MultiCells) == {"gene_expression": "sparse", "expression_dense": "dense"}
    assert pointer_fields(MidCells) == {"gene_expression": "sparse"}


def test_a_query_result_of_datasets_that_did_not_measure_its_features_is_refused(tmp_path, celltypist, pbmc):
    """A union of two panels written to .h5ad and ingested: every gene counted as measured for every cell
    (the file's varm['presence'] was not read), the unmeasured zeros became measured ones."""
    first = _atlas(tmp_path / "one", celltypist.var_names.union(pbmc.var_names))
    for uid, adata in (("ct", celltypist[:50]), ("pbmc", pbmc[:50])):
        adata = adata.copy()
        adata.X = sp.csr_matrix(np.rint(np.abs(dense(adata.X))).astype(np.int32))
        add_from_anndata(
            first,
            adata,
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=uid),
            progress=False,
        )
    union = first.query().to_anndata()
    path = tmp_path / "union.h5ad"
    union.write_h5ad(path)
    second = _atlas(tmp_path / "two", union.var_names)
    with pytest.raises(IngestError, match=r"whose datasets \['ct', 'pbmc'\] measured only some"):
        add_from_anndata(second, path, feature_space="gene_expression", zarr_layer="counts", progress=False)
    assert second.list_datasets().empty
    # the union cut to one dataset's cells and its genes: the other dataset's presence has no cell (refused)
    ct = union[union.obs["dataset_uid"] == "ct"]
    ct = ct[:, ct.varm["presence"]["ct"].to_numpy()]
    add_from_anndata(
        second,
        ct,
        feature_space="gene_expression",
        zarr_layer="counts",
        progress=False,
        dataset_record=DatasetRecord(uid="ct_cut"),
    )
    one = first.query().where(dataset_uid="pbmc").to_anndata()  # one dataset's cells: every feature measured
    add_from_anndata(second, one, feature_space="gene_expression", zarr_layer="counts", progress=False)
