"""The query builder on the bundled atlas: filters, features(), joins, batches, counts."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, build_bundled_atlas
from lancell.errors import LancellWarning, QueryError, UnmeasuredDataError
from lancell.query.reconstruct import presence_matrix


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> RaggedAtlas:
    root = tmp_path_factory.mktemp("bundled")
    build_bundled_atlas(root)
    return RaggedAtlas.checkout_latest(str(root / "db"))


@pytest.fixture(scope="module")
def pbmc():
    return BUNDLED[0].read()


def test_where_calls_combine_with_and_and_keep_scan_order(bundled, pbmc):
    q = bundled.query().where("dataset_uid = 'pbmc68k'").where("cell_type = 'Dendritic'")
    out = q.to_anndata()
    expected = pbmc.obs_names[pbmc.obs["cell_type"] == "Dendritic"]
    assert list(out.obs_names) == [f"pbmc68k:{n}" for n in expected]
    assert q.count() == 240
    assert bundled.query().where("cell_type = 'Dendritic'").limit(7).count() == 7


def test_features_in_requested_order_with_symbols_and_uids(bundled, pbmc):
    genes = ["LYZ", "CD3D", "MS4A1"]
    out = bundled.query().where("dataset_uid = 'pbmc68k'").features(genes, "gene_expression").to_anndata()
    assert list(out.var_names) == genes
    np.testing.assert_array_equal(out.X.toarray(), pbmc[:, genes].X.toarray())
    mouse = bundled.query().where("dataset_uid = 'mouse_10k'").features(["Rp1"], "gene_expression")
    assert mouse.to_anndata().n_vars == 2  # the duplicated mouse symbol names two Ensembl genes


def test_unknown_features_are_listed(bundled):
    with pytest.raises(QueryError, match="NOT_A_GENE"):
        bundled.query().features(["CD3D", "NOT_A_GENE"], "gene_expression").to_anndata()


def test_features_with_intersection_drop_unshared(bundled):
    q = bundled.query().where("organism = 'Homo sapiens'").layers("gene_expression", "counts")
    q = q.on_unmeasured("drop")
    # pbmc68k has no counts layer, so only celltypist is measured; request genes inside and outside its panel
    # a named feature no selected dataset measured, or one an intersection leaves out, was silent
    with pytest.warns(LancellWarning, match=r"features \['ENSMUSG00000051951'\] are measured by none of the"):
        out = q.features(["CD3D", "ENSMUSG00000051951"], "gene_expression").to_anndata()
    assert list(out.var_names) == ["CD3D", "ENSMUSG00000051951"]
    assert not out.varm["presence"].loc["ENSMUSG00000051951"].any()
    with pytest.warns(
        LancellWarning, match=r"features \['CD3D', 'ENSMUSG00000051951'\] are left out: not every"
    ):
        shared = (
            bundled.query()
            .where("dataset_uid IN ('celltypist_sample', 'mouse_10k')")
            .layers("gene_expression", "counts")
            .features(["CD3D", "ENSMUSG00000051951"], "gene_expression")
            .feature_join("intersection")
            .to_anndata()
        )
    assert shared.n_vars == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert q.features(["CD3D"], "gene_expression").to_anndata().n_vars == 1
        assert q.all_features("gene_expression").to_anndata().n_vars > 30_000  # every column, by design


def test_to_batches_equal_to_anndata(bundled):
    q = bundled.query().where("organism = 'Mus musculus'").layers("gene_expression", "counts")
    full = q.to_anndata()
    batches = list(q.to_batches(3000))
    assert [b.n_obs for b in batches] == [3000, 3000, 3000, 1000]
    assert all(list(b.var_names) == list(full.var_names) for b in batches)
    assert (sp.vstack([b.X for b in batches]) != full.X).nnz == 0
    assert [n for b in batches for n in b.obs_names] == list(full.obs_names)


def test_to_batches_code_each_label_alike_in_every_batch(bundled):
    """Each batch had its own categories: 'Dendritic' was code 8, 6, 7 and 9 in four batches of PBMCs."""
    q = bundled.query().where(dataset_uid="pbmc68k").layers("gene_expression", "log_normalized")
    full = q.to_anndata()
    for batch in q.to_batches(50):
        for column in ("cell_type", "dataset_uid"):
            assert list(batch.obs[column].cat.categories) == list(full.obs[column].cat.categories)
        # a name per cell is no label: each batch keeps its own (every name in every batch grew as n^2)
        assert len(batch.obs["obs_name"].cat.categories) == batch.n_obs
    searched = q.limit(120)  # (a limit's rows too)
    assert {tuple(b.obs["cell_type"].cat.categories) for b in searched.to_batches(50)} == {
        tuple(searched.to_anndata().obs["cell_type"].cat.categories)
    }


def test_count_group_by_and_frames(bundled):
    per_dataset = bundled.query().count(group_by="dataset_uid")
    assert per_dataset["cells"].to_dict() == {"mouse_10k": 10000, "pbmc68k": 700, "celltypist_sample": 559}
    assert per_dataset["layers"].to_dict() == {  # each dataset's layers (test_dataloader_layers: several)
        "mouse_10k": ["counts"],
        "pbmc68k": ["log_normalized"],
        "celltypist_sample": ["counts"],
    }
    per_type = bundled.query().where("dataset_uid = 'pbmc68k'").count(group_by="cell_type")
    assert per_type["Dendritic"] == 240 and per_type.sum() == 700
    with pytest.raises(QueryError):
        bundled.query().count(group_by="no_such_column")
    assert bundled.query().limit(4).to_polars().height == 4
    assert list(bundled.query().select(["cell_type"]).limit(2).to_pandas().columns) == [
        "uid",
        "dataset_uid",
        "cell_type",
        "gene_expression",
    ]


def test_bad_filter_is_a_query_error(bundled):
    with pytest.raises(QueryError, match="No field named no_such_column") as raised:
        bundled.query().where("no_such_column = 3").to_arrow()
    assert ".rs:" not in str(raised.value)  # (Lance's own source location, appended to its message)
    said = str(raised.value)  # the cell table's columns are listed, not the row columns Lance adds
    assert "Valid fields are uid, dataset_uid" in said and "_rowid" not in said and "_rowaddr" not in said
    with pytest.raises(QueryError, match="different layers"):
        bundled.query().to_anndata()


def test_layout_cache_does_not_leak_into_an_atlas_recreated_at_the_same_path(tmp_path):
    """Layouts are cached per process; an atlas re-created at the same path numbers its genes differently."""
    import shutil

    import anndata as ad
    import pandas as pd

    from lancell.bundled import CellSchema, GeneFeature
    from lancell.ingest.from_anndata import add_from_anndata
    from lancell.tables.schema import DatasetRecord

    genes = [f"g{i}" for i in range(50)]
    x = sp.random(30, 50, density=0.3, format="csr", random_state=0, dtype=np.float64)
    x.data = np.ceil(x.data * 9)
    adata = ad.AnnData(X=x.astype(np.int32), var=pd.DataFrame(index=genes))
    for registration_order in (genes, genes[::-1]):
        shutil.rmtree(tmp_path, ignore_errors=True)
        atlas = RaggedAtlas.create(
            str(tmp_path / "db"),
            "cells",
            CellSchema,
            store=str(tmp_path / "arrays"),
            registry_schemas={"gene_expression": GeneFeature},
        )
        frame = pd.DataFrame({"uid": registration_order, "gene_symbol": registration_order})
        atlas.register_features("gene_expression", frame)
        add_from_anndata(
            atlas,
            adata,
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid="d"),
            progress=False,
        )
        out = atlas.query().to_anndata()
        np.testing.assert_array_equal(out[:, genes].X.toarray(), x.toarray())


def test_feature_filtered_reads_in_slices_equal_the_reference(bundled, pbmc, monkeypatch):
    from lancell.query import reconstruct

    genes = ["LYZ", "CD3D", "MS4A1"]
    query = bundled.query().where("dataset_uid = 'pbmc68k'").features(genes, "gene_expression")
    monkeypatch.setattr(reconstruct, "_FILTER_SLICE", 1_000)  # ~250 slices of stored values
    np.testing.assert_array_equal(query.to_anndata().X.toarray(), pbmc[:, genes].X.toarray())


# ------------------------------------------------------------------------------------ unmeasured cells
HUMAN_COUNTS = "organism = 'Homo sapiens'"  # pbmc68k (700 cells) stores no "counts", celltypist (559) does
UNMEASURED = (
    "700 of the 1259 selected cells did not measure layer 'counts' of 'gene_expression': "
    "dataset 'pbmc68k': 700 cells (their group has no layer 'counts'). Choose .on_unmeasured('drop')"
)


def _human_counts(bundled: RaggedAtlas):
    return bundled.query().where(HUMAN_COUNTS).layers("gene_expression", "counts")


def test_unmeasured_cells_are_an_error_by_default_in_every_reader(bundled):
    readers = {
        "to_anndata": lambda q: q.to_anndata(),
        "to_batches": lambda q: next(q.to_batches(100)),
        "to_mudata": lambda q: q.to_mudata(["gene_expression"]),
        "intersection": lambda q: q.feature_join("intersection").to_anndata(),
    }
    for read in readers.values():
        with pytest.raises(UnmeasuredDataError, match=re.escape(UNMEASURED)):
            read(_human_counts(bundled))
    with pytest.raises(QueryError, match="on_unmeasured must be 'error', 'drop' or 'keep', got 'ignore'"):
        bundled.query().on_unmeasured("ignore")


def test_drop_removes_exactly_the_unmeasured_cells(bundled, celltypist):
    genes = ["CD3D", "LYZ", "MS4A1"]
    expected_names = [f"celltypist_sample:{n}" for n in celltypist.obs_names]
    out = _human_counts(bundled).on_unmeasured("drop").feature_join("intersection").to_anndata()
    assert out.shape == (559, 32786)  # the intersection is over the measured dataset only
    assert list(out.obs_names) == expected_names
    np.testing.assert_array_equal(out[:, genes].X.toarray(), celltypist[:, genes].X.toarray())
    assert list(out.varm["presence"].columns) == ["celltypist_sample"]
    assert out.uns["lancell"] == {
        "feature_space": "gene_expression",
        "layer": "counts",
        "layers": ["counts"],
        "layer_datasets": {"counts": ["celltypist_sample"]},
        "join": "intersection",
        "on_unmeasured": "drop",
        "unmeasured_datasets": ["pbmc68k"],
    }
    batches = list(_human_counts(bundled).on_unmeasured("drop").to_batches(200))
    assert [b.n_obs for b in batches] == [200, 200, 159]
    assert [n for b in batches for n in b.obs_names] == expected_names
    assert all(b.uns["lancell"]["unmeasured_datasets"] == ["pbmc68k"] for b in batches)
    modality = _human_counts(bundled).on_unmeasured("drop").to_mudata(["gene_expression"])["gene_expression"]
    assert list(modality.obs_names) == expected_names


def test_keep_returns_empty_rows_with_presence_false(bundled, celltypist):
    out = _human_counts(bundled).on_unmeasured("keep").feature_join("intersection").to_anndata()
    assert out.shape == (1259, 32786)  # every selected cell; the intersection is over measured datasets
    pbmc = (out.obs["dataset_uid"] == "pbmc68k").to_numpy()
    assert pbmc.sum() == 700 and out.X[pbmc].nnz == 0
    presence = out.varm["presence"]
    assert list(presence.columns) == ["celltypist_sample", "pbmc68k"]
    assert presence["celltypist_sample"].all() and not presence["pbmc68k"].any()
    measured = presence_matrix(out)
    assert measured[pbmc].nnz == 0 and measured[~pbmc].nnz == 559 * 32786
    np.testing.assert_array_equal(out[~pbmc, ["CD3D"]].X.toarray(), celltypist[:, ["CD3D"]].X.toarray())
    assert out.uns["lancell"]["on_unmeasured"] == "keep"
    assert out.uns["lancell"]["unmeasured_datasets"] == ["pbmc68k"]
    batches = list(_human_counts(bundled).on_unmeasured("keep").to_batches(500))
    assert [b.n_obs for b in batches] == [500, 500, 259]
    assert (
        sp.vstack([b.X for b in batches]) != _human_counts(bundled).on_unmeasured("keep").to_anndata().X
    ).nnz == 0
    modality = _human_counts(bundled).on_unmeasured("keep").to_mudata(["gene_expression"])["gene_expression"]
    assert modality.n_obs == 1259 and not modality.varm["presence"]["pbmc68k"].any()


def test_counts_stored_as_integers_and_as_floats_combine_exactly(tmp_path):
    """Integer counts above 2**24 next to another dataset's float counts: float64, not rounded to float32."""
    import anndata as ad
    import pandas as pd

    from lancell.bundled import CellSchema, GeneFeature
    from lancell.ingest.from_anndata import add_from_anndata
    from lancell.tables.schema import DatasetRecord

    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    atlas.register_features(
        "gene_expression", pd.DataFrame({"uid": ["g0", "g1"], "gene_symbol": ["g0", "g1"]})
    )
    inputs = {
        "a": np.array([[2**24 + 1, 3], [2**31 + 1, 0]], np.int64),  # stored as uint32
        "b": np.array([[2.0, 1.0]], np.float32),  # whole-number floats, stored as float32
    }
    for uid, x in inputs.items():
        obs = pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])])
        add_from_anndata(
            atlas,
            ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=["g0", "g1"])),
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=uid),
            progress=False,
        )
    expected = np.vstack([inputs["a"], inputs["b"]]).astype(np.float64)
    out = atlas.query().to_anndata()
    order = np.argsort(out.obs_names.to_numpy())  # a:c0, a:c1, b:c0
    assert out.X.dtype == np.float64
    np.testing.assert_array_equal(out[order][:, ["g0", "g1"]].X.toarray(), expected)
    dataset = atlas.query().to_cell_dataset("gene_expression", "counts")
    batch = dataset.__getitems__(np.arange(len(dataset)))
    assert batch.values.dtype == np.float64
    assert sorted(batch.values.tolist()) == sorted(v for v in expected.ravel().tolist() if v)
