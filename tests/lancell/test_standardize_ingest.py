"""Standardize then ingest in one call (the bundled celltypist sample, real genes and ontologies), what it
reports, how unresolved and duplicate genes are handled, and cell-type labels written as people write them."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, GeneFeature
from lancell.errors import (
    DuplicateContentError,
    FeatureSpaceError,
    IngestError,
    LancellWarning,
    StandardizationError,
)
from lancell.standardize.ontology import CELL_TYPE_ABBREVIATIONS, default_backend, match_key, resolve_terms
from lancell.standardize.pipeline import standardize_and_ingest, standardize_anndata
from lancell.standardize.var_merge import merge_duplicate_columns
from lancell.tables.schema import DatasetRecord, LancellBaseSchema, SparseZarrPointer


class StandardCells(LancellBaseSchema):
    organism: str | None = None
    organism_ontology_term_id: str | None = None
    gene_expression: SparseZarrPointer | None = None


@pytest.fixture(scope="module")
def celltypist() -> ad.AnnData:
    return BUNDLED[1].read()


def _atlas(root) -> RaggedAtlas:
    return RaggedAtlas.create(
        str(root / "db"),
        "cells",
        StandardCells,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )


def test_celltypist_sample_in_one_call(tmp_path, celltypist):
    atlas = _atlas(tmp_path)
    record, report = standardize_and_ingest(
        atlas,
        celltypist,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="celltypist"),
        organism="human",
        progress=False,
        csc=False,  # (it had no csc: the copy of a dataset this size was always written)
    )
    assert "csc_layers" not in atlas.core.zarr_root[record.zarr_group].attrs
    assert report.var_counts == {"resolved": 19359, "kept": 13427, "dropped": 0, "summed": 1, "n_vars": 32785}
    assert "var: resolved 19359, kept 13427, dropped 0, summed 1, n_vars 32785" in report.summary()
    assert (record.n_cells, record.n_features) == (559, 32785)
    registry = atlas.feature_registry("gene_expression").set_index("uid")
    assert len(registry) == 32785
    assert registry.loc["ENSG00000162522", "gene_symbol"] == "NHSL3"  # the alias KIAA1522, current symbol
    assert registry.loc["RP11-34P13.7", "organism"] == "Homo sapiens"  # unresolved, kept under its name

    atlas.optimize()
    genes = ["ENSG00000230417", "ENSG00000162522", "RP11-34P13.7"]
    out = atlas.query().layers("gene_expression", "counts").features(genes, "gene_expression").to_anndata()
    x = celltypist.X.tocsc()
    column = {name: x[:, i].toarray().ravel() for i, name in enumerate(celltypist.var_names)}
    expected = np.column_stack(
        [column["LINC00856"] + column["LINC00595"], column["KIAA1522"], column["RP11-34P13.7"]]
    )
    np.testing.assert_array_equal(out.X.toarray(), expected)  # the two inputs of one id are summed
    assert out.X.dtype == np.int64
    stored = atlas.query().select(["organism_ontology_term_id"]).to_pandas()["organism_ontology_term_id"]
    assert set(stored) == {"NCBITaxon:9606"}
    again = {
        "feature_space": "gene_expression",
        "zarr_layer": "counts",
        "organism": "human",
        "progress": False,
    }
    with pytest.raises(DuplicateContentError, match="on_duplicate='skip'"):  # the remedy it names is taken
        standardize_and_ingest(atlas, celltypist, dataset_record=DatasetRecord(uid="rerun"), **again)
    skipped, _ = standardize_and_ingest(
        atlas, celltypist, dataset_record=DatasetRecord(uid="rerun"), on_duplicate="skip", **again
    )
    assert skipped.uid == "celltypist" and atlas.list_datasets()["uid"].tolist() == ["celltypist"]


def test_drop_unresolved_and_keep_first(celltypist):
    with pytest.warns(LancellWarning, match=r"1 var entries .* left out.*'ENSG00000230417'"):
        out, report = standardize_anndata(
            celltypist, organism="human", obs_columns={}, unresolved="drop", duplicates="first"
        )
    assert report.var_counts == {"resolved": 19359, "kept": 0, "dropped": 13427, "first": 1, "n_vars": 19358}
    assert out.var["feature_uid"].is_unique and out.var["ensembl_id"].notna().all()
    kept = out.var.index[out.var["feature_uid"] == "ENSG00000230417"]
    assert list(kept) == ["LINC00856"]
    np.testing.assert_array_equal(out[:, "LINC00856"].X.toarray(), celltypist[:, "LINC00856"].X.toarray())


def test_duplicates_error_leaves_the_atlas_untouched(tmp_path, celltypist):
    atlas = _atlas(tmp_path)
    with pytest.raises(StandardizationError, match=r"ENSG00000230417.*LINC00856.*LINC00595"):
        standardize_and_ingest(
            atlas,
            BUNDLED[1].path,  # a path is read into memory
            feature_space="gene_expression",
            zarr_layer="counts",
            duplicates="error",
            organism="human",
            progress=False,
        )
    assert atlas.feature_registry("gene_expression").empty
    assert atlas.list_datasets().empty
    with pytest.raises(StandardizationError, match="unresolved must be 'keep' or 'drop', got 'skip'"):
        standardize_anndata(celltypist, organism="human", unresolved="skip")
    typo = {"feature_space": "gene_expression", "organism": "human", "progress": False}
    with pytest.raises(FeatureSpaceError, match="layer 'count' is not allowed"):  # found before registering
        standardize_and_ingest(atlas, celltypist, zarr_layer="count", **typo)
    with pytest.raises(IngestError, match=r"no layer 'raw' in adata.layers \[\]"):
        standardize_and_ingest(atlas, celltypist, zarr_layer="counts", source_layer="raw", **typo)
    assert atlas.feature_registry("gene_expression").empty
    x_record = DatasetRecord(uid="x")  # source_layer "X" is adata.X, as for add_from_anndata
    record, _ = standardize_and_ingest(
        atlas, celltypist, zarr_layer="counts", source_layer="X", dataset_record=x_record, **typo
    )
    assert record.n_cells == celltypist.n_obs


@pytest.mark.parametrize("dense", [False, True])
def test_merge_sums_x_and_layers_in_their_dtype(dense):
    x = np.array([[1, 2, 3, 4], [5, 0, 7, 8]], dtype=np.int32)
    adata = ad.AnnData(
        X=x if dense else sp.csr_matrix(x),
        var=pd.DataFrame(index=["a", "b", "c", "d"]),
        layers={"double": x * 2},
    )
    out, merged = merge_duplicate_columns(adata, pd.Series(["u", "v", "u", "w"]), "sum")
    assert merged == 1 and list(out.var_names) == ["a", "b", "d"]
    values = out.X if dense else out.X.toarray()
    np.testing.assert_array_equal(values, [[4, 2, 4], [12, 0, 8]])
    assert values.dtype == np.int32
    np.testing.assert_array_equal(out.layers["double"], [[8, 4, 8], [24, 0, 16]])


def test_cell_types_as_people_write_them():
    labels = ["monocytes", "Tregs", "DCs", "pDCs", "HSCs", "MAIT cells", "CD14+ Monocytes", "Macrophages"]
    matches = {m.value: (m.term_id, m.match) for m in resolve_terms(labels, "cell_type")}
    assert matches == {
        "monocytes": ("CL:0000576", "normalized"),
        "Tregs": ("CL:0000815", "normalized"),
        "DCs": ("CL:0000451", "normalized"),
        "pDCs": ("CL:0000784", "normalized"),
        "HSCs": ("CL:0000037", "normalized"),
        "MAIT cells": ("CL:0000940", "normalized"),
        "CD14+ Monocytes": ("CL:0001054", "normalized"),
        "Macrophages": ("CL:0000235", "normalized"),
    }
    index = default_backend().index("CL")
    for abbreviation, label in CELL_TYPE_ABBREVIATIONS.items():
        assert index.lookup(match_key(label)) is not None, (abbreviation, label)


def test_a_landing_file_standardized_with_a_common_organism_name_records_one_name(tmp_path):
    # the features got 'Homo sapiens' from standardization, the cells the sidecar's 'human' verbatim:
    # where(organism='Homo sapiens') found none of them
    from lancell.ingest.landing import ingest_landing_file, read_landing_spec

    genes = ["ENSG00000167286", "ENSG00000090382", "ENSG00000156738"]  # CD3D, LYZ, MS4A1
    x = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], dtype=np.int32))
    ad.AnnData(x, obs=pd.DataFrame(index=["c1", "c2"]), var=pd.DataFrame(index=genes)).write_h5ad(
        tmp_path / "study.h5ad"
    )
    (tmp_path / "study.json").write_text('{"organism": "human", "standardize": true}')
    atlas = _atlas(tmp_path)
    ingest_landing_file(atlas, read_landing_spec(tmp_path / "study.h5ad"))
    assert set(atlas.feature_registry("gene_expression")["organism"]) == {"Homo sapiens"}
    assert atlas.query().where(organism="Homo sapiens").count() == 2
