"""The upstream quickstart, as written, on the bundled real data; results equal anndata.concat."""

from __future__ import annotations

import anndata as ad
import numpy as np
import obstore.store
import pandas as pd
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.query.reconstruct import presence_matrix
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer


class GeneFeature(FeatureBaseSchema):
    gene_symbol: str


class CellSchema(LancellBaseSchema):
    cell_type: str | None = None
    gene_expression: SparseZarrPointer | None = None


def _expected(inputs: dict[str, ad.AnnData]) -> ad.AnnData:
    parts = []
    for uid, adata in inputs.items():
        part = adata.copy()
        part.obs_names = [f"{uid}:{name}" for name in part.obs_names]
        parts.append(part)
    return ad.concat(parts, join="outer")


def test_quickstart_runs_as_written(tmp_path, celltypist, tenx, mouse, pbmc):
    inputs = {"celltypist": celltypist, "tenx": tenx, "mouse": mouse}
    symbols = pd.Index([]).append([a.var_names for a in [*inputs.values(), pbmc]]).unique()
    features = [GeneFeature(uid=s, gene_symbol=s) for s in symbols]

    store = obstore.store.LocalStore(str(tmp_path / "arrays"), mkdir=True)
    atlas = RaggedAtlas.create(
        db_uri=str(tmp_path / "db"),
        cell_table_name="cells",
        cell_schema=CellSchema,
        store=store,
        registry_schemas={"gene_expression": GeneFeature},
    )
    atlas.register_features("gene_expression", features)
    for uid, adata in inputs.items():
        record = DatasetRecord(uid=uid)
        add_from_anndata(
            atlas, adata, feature_space="gene_expression", zarr_layer="counts", dataset_record=record
        )
    add_from_anndata(
        atlas,
        pbmc,
        feature_space="gene_expression",
        zarr_layer="log_normalized",
        dataset_record=DatasetRecord(uid="pbmc"),
    )
    atlas.optimize()
    assert atlas.snapshot() == 0

    atlas_r = RaggedAtlas.checkout_latest(str(tmp_path / "db"), store=store)
    monocytes = atlas_r.query().where("cell_type = 'CD14+ Monocyte'").to_anndata()
    expected = pbmc[pbmc.obs["cell_type"] == "CD14+ Monocyte"]
    assert monocytes.n_obs == expected.n_obs == 129
    assert list(monocytes.obs_names) == [f"pbmc:{n}" for n in expected.obs_names]
    assert set(monocytes.var_names) == set(pbmc.var_names)  # columns follow the registry's global order
    np.testing.assert_array_equal(monocytes[:, pbmc.var_names].X.toarray(), expected.X.toarray())
    assert monocytes.X.dtype == np.float32

    union = atlas_r.query().where("dataset_uid != 'pbmc'").to_anndata()
    reference = _expected(inputs)
    assert list(union.obs_names) == list(reference.obs_names)
    assert set(union.var_names) == set(reference.var_names)
    aligned = union[:, reference.var_names]
    assert aligned.X.dtype == np.float64  # integer and float datasets joined: both held exactly
    difference = sp.csr_matrix(aligned.X, dtype=np.float64) - sp.csr_matrix(reference.X, dtype=np.float64)
    assert difference.count_nonzero() == 0
    assert aligned.X.nnz == sp.csr_matrix(reference.X).count_nonzero()

    measured = presence_matrix(aligned)
    for uid, adata in inputs.items():
        rows = np.flatnonzero((aligned.obs["dataset_uid"] == uid).to_numpy())
        in_panel = reference.var_names.isin(adata.var_names)
        assert (measured[rows[:50]].toarray() == in_panel).all()
        assert (aligned.varm["presence"][uid].to_numpy() == in_panel).all()

    intersection = atlas_r.query().where("dataset_uid IN ('celltypist', 'tenx')").feature_join("intersection")
    shared = intersection.to_anndata()
    assert set(shared.var_names) == set(celltypist.var_names) & set(tenx.var_names)
    assert shared.n_vars == 418
    assert union.n_vars > shared.n_vars
    inner = ad.concat(  # values equal anndata's inner join of the same cells
        [a.copy() for a in (celltypist, tenx)], join="inner", keys=None, index_unique=None
    )
    inner.obs_names = [
        f"{uid}:{n}" for uid, a in (("celltypist", celltypist), ("tenx", tenx)) for n in a.obs_names
    ]
    assert list(shared.obs_names) == list(inner.obs_names)
    got = sp.csr_matrix(shared[:, inner.var_names].X, dtype=np.float64)
    assert (got != sp.csr_matrix(inner.X, dtype=np.float64)).nnz == 0


def test_checkout_latest_needs_no_schema_or_store(tmp_path, celltypist):
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    atlas.register_features(
        "gene_expression", pd.DataFrame({"uid": celltypist.var_names, "gene_symbol": celltypist.var_names})
    )
    add_from_anndata(atlas, celltypist, feature_space="gene_expression", zarr_layer="counts")
    atlas.snapshot(note="first")
    fresh = RaggedAtlas.checkout_latest(str(tmp_path / "db"))
    assert fresh.query().count() == celltypist.n_obs
    out = fresh.query().limit(10).to_anndata()
    np.testing.assert_array_equal(out.X.toarray(), celltypist.X[:10].toarray())
    assert out.X.dtype == np.int64
    assert RaggedAtlas.list_versions(str(tmp_path / "db"))["note"].tolist() == ["first"]
