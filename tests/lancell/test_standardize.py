"""Gene and ontology standardization on the bundled human and mouse data, offline."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED
from lancell.errors import LancellWarning, StandardizationError, UnknownOrganismError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.ingest.tenx import read_10x
from lancell.standardize.genes import GeneReference, canonical_organism, infer_organism, resolve_genes
from lancell.standardize.ontology import resolve_terms
from lancell.standardize.pipeline import standardize_anndata
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

DATA = Path(__file__).resolve().parents[2] / "data"


def test_pbmc68k_genes_resolved(pbmc):
    _, report = standardize_anndata(pbmc, obs_columns={})
    rate = report.gene_resolution_rate()
    print(f"\npbmc68k: {report.summary()}")
    assert report.organism == "Homo sapiens"  # from the single-valued obs['organism']
    assert rate > 0.9
    assert report.gene_counts() == {
        "id": 0,
        "retired_id": 0,
        "symbol": 700,
        "ambiguous": 0,
        "alias": 0,
        "unresolved": 65,
    }
    genes = report.genes.set_index("input")
    assert genes.loc["CD3E", "ensembl_id"] == "ENSG00000198851"
    assert (
        genes.loc["IGJ", "match"] == "unresolved"
    )  # renamed JCHAIN before GENCODE v44: reported, not dropped
    assert "IGJ" in report.unresolved()["var"]


def test_celltypist_genes_resolved_with_aliases(celltypist):
    _, report = standardize_anndata(celltypist, organism="human", obs_columns={})
    rate = report.gene_resolution_rate()
    print(f"\ncelltypist sample: {report.summary()}")
    assert 0.55 < rate < 0.65  # 13k clone-based names (RP11-...) are in neither GENCODE table
    counts = report.gene_counts()
    assert counts == {
        "id": 0,
        "retired_id": 0,
        "symbol": 19206,
        "ambiguous": 75,
        "alias": 78,
        "unresolved": 13427,
    }
    genes = report.genes.set_index("input")
    alias = genes.loc["KIAA1522"]
    assert (alias["ensembl_id"], alias["symbol"], alias["match"]) == ("ENSG00000162522", "NHSL3", "alias")
    ambiguous = genes.loc["LINC00869"]
    assert ambiguous["match"] == "ambiguous" and ambiguous["candidates"] == "ENSG00000291158"
    assert int(report.genes["duplicate"].sum()) == 2


def test_an_unresolved_symbol_names_the_genes_it_is_ignoring_case() -> None:
    """``cd3e`` was unresolved with no candidate (cell-type labels match ignoring case, genes do not)."""
    table = resolve_genes(["cd3e", "CD3E", "no_such_gene_xyz"], "human").set_index("input")
    assert (table.loc["cd3e", "match"], table.loc["cd3e", "candidates"]) == ("unresolved", "ENSG00000198851")
    assert table.loc["cd3e", "ensembl_id"] is None  # named, not chosen
    assert table.loc["no_such_gene_xyz", "candidates"] == ""


def test_an_id_in_lower_case_is_named_and_warned(pbmc) -> None:
    """``ensg00000198851`` was unresolved with no candidate and kept as a gene of its own without a word."""
    table = resolve_genes(["ensg00000198851.3"], "human")
    assert (table["match"].iloc[0], table["candidates"].iloc[0]) == ("unresolved", "ENSG00000198851")
    adata = pbmc[:, :3].copy()
    adata.var_names = ["ensg00000198851", "cd3e", adata.var_names[2]]
    with pytest.warns(LancellWarning, match=r"2 genes are unresolved but name a gene in another case"):
        standardize_anndata(adata, obs_columns={}, organism="human")


def test_a_par_y_id_resolves_to_its_gene_whatever_its_release() -> None:
    """GENCODE's ``_PAR_Y`` ids were unresolved and kept as written, version included: files of two releases
    registered two uids for one gene (var_merge compared them as one)."""
    inputs = ["ENSG00000182378.14", "ENSG00000182378.14_PAR_Y", "ENSG00000182378.15_PAR_Y"]
    table = resolve_genes(inputs, "human")
    assert table["ensembl_id"].tolist() == ["ENSG00000182378"] * 3
    assert table["match"].tolist() == ["id"] * 3 and table["duplicate"].all()


def test_organism_inferred_from_ensembl_ids(mouse):
    tenx = read_10x(DATA / "10x_v3" / "filtered_feature_bc_matrix.h5")
    human = resolve_genes(tenx.var["gene_ids"].tolist())
    assert human["match"].value_counts().to_dict() == {"id": 482, "retired_id": 25}
    assert infer_organism(tenx.var["gene_ids"].tolist()) == "Homo sapiens"
    ids = [f"{i}.7" for i in mouse.var_names]  # versioned ids are accepted
    mouse_table = resolve_genes(ids)
    assert mouse_table["match"].value_counts().to_dict() == {"id": 977, "retired_id": 23}
    assert mouse_table["ensembl_id"].iloc[0] == mouse.var_names[0]
    symbols = resolve_genes(mouse.var["gene_symbol"].tolist(), "Mus musculus")
    assert (symbols["match"] != "unresolved").mean() > 0.9


def test_pbmc68k_cell_types_to_cl(pbmc):
    out, report = standardize_anndata(pbmc, genes=False)
    counts = report.term_counts("cell_type")
    print(f"\npbmc68k cell types: {counts}\n{report.term_table('cell_type').to_string()}")
    assert counts == {"normalized": 3, "broader": 3, "unresolved": 4}
    table = report.term_table("cell_type").set_index("value")
    assert table.loc["CD14+ Monocyte", ["term_id", "name", "match"]].tolist() == [
        "CL:0001054",
        "CD14-positive monocyte",
        "normalized",
    ]
    assert table.loc["Dendritic", "term_id"] == "CL:0000451"
    assert table.loc["CD19+ B", "term_id"] == "CL:0001201"
    assert table.loc["CD56+ NK", ["term_id", "match"]].tolist() == ["CL:0000623", "broader"]
    assert sorted(report.unresolved()["cell_type"]) == [
        "CD34+",
        "CD4+/CD25 T Reg",
        "CD4+/CD45RO+ Memory",
        "CD8+/CD45RA+ Naive Cytotoxic",
    ]
    ids = out.obs["cell_type_ontology_term_id"]
    assert (ids[pbmc.obs["cell_type"] == "CD14+ Monocyte"] == "CL:0001054").all()
    assert ids.isna().sum() == (pbmc.obs["cell_type"].isin(report.unresolved()["cell_type"])).sum()
    assert set(out.obs["organism_ontology_term_id"]) == {"NCBITaxon:9606"}
    assert report.skipped_columns == ["tissue", "disease", "assay"]
    assert "cell_type_ontology_term_id" not in pbmc.obs.columns  # the input is not modified


def test_overrides_and_strict_mode(pbmc):
    overrides = {"cell_type": {"CD34+": "CL:0000037", "CD4+/CD25 T Reg": "CL:0000815"}}
    _, report = standardize_anndata(pbmc, genes=False, overrides=overrides, allow_broader=False)
    assert report.term_counts("cell_type") == {"normalized": 3, "manual": 2, "unresolved": 5}
    with pytest.raises(StandardizationError, match="not a term of CL"):
        standardize_anndata(pbmc, genes=False, overrides={"cell_type": {"CD34+": "CL:9999999"}})


@pytest.mark.parametrize(
    ("field", "value", "term_id", "match"),
    [
        ("tissue", "Lung", "UBERON:0002048", "exact"),
        ("tissue", "bone_marrow", "UBERON:0002371", "exact"),
        ("disease", "COVID-19", "MONDO:0100096", "exact"),
        ("disease", "healthy", "PATO:0000461", "synonym"),
        ("assay", "10x 3' v3", "EFO:0009922", "exact"),
        ("organism", "mouse", "NCBITaxon:10090", "synonym"),
        ("organism", "NCBITaxon:9606", "NCBITaxon:9606", "id"),
        ("cell_type", "Treg", "CL:0000815", "synonym"),
        ("cell_type", "T cells", "CL:0000084", "normalized"),
        ("organism", "Martian", None, "unresolved"),
    ],
)
def test_fields_resolve_to_their_ontology(field, value, term_id, match):
    (result,) = resolve_terms([value, None, np.nan], field)
    assert (result.term_id, result.match) == (term_id, match)


def test_a_nullable_string_column_with_missing_labels():
    """pandas' "string" dtype holds pd.NA, whose truth value is ambiguous: a bare TypeError."""
    (result,) = resolve_terms(pd.array(["Treg", None, pd.NA], dtype="string"), "cell_type")
    assert result.term_id == "CL:0000815"
    labels = pd.array(["Treg", None, "T cells"], dtype="string")
    adata = ad.AnnData(
        X=np.ones((3, 1), dtype=np.int32),
        obs=pd.DataFrame({"cell_type": labels}, index=list("abc")),
        var=pd.DataFrame(index=["CD4"]),
    )
    out, _ = standardize_anndata(adata, organism="human")
    assert out.obs["cell_type_ontology_term_id"].tolist()[::2] == ["CL:0000815", "CL:0000084"]
    assert pd.isna(out.obs["cell_type_ontology_term_id"].iloc[1])


def test_unknown_organism_is_a_typed_error(pbmc):
    with pytest.raises(UnknownOrganismError, match="unknown organism 'Martian'"):
        standardize_anndata(pbmc, organism="Martian")
    with pytest.raises(UnknownOrganismError, match="no gene reference for 'Danio rerio'"):
        standardize_anndata(pbmc, organism="zebrafish")
    anonymous = pbmc.copy()
    del anonymous.obs["organism"]
    with pytest.raises(UnknownOrganismError, match="cannot infer the organism"):
        standardize_anndata(anonymous)
    with pytest.raises(UnknownOrganismError, match="pass organism="):
        resolve_genes(["CD3E"])
    with pytest.raises(StandardizationError, match="the target must be one of"):
        standardize_anndata(pbmc, obs_columns={"cell_type": "cell_label"})
    assert canonical_organism("NCBITaxon:10090") == "Mus musculus"
    named_twice = pbmc.copy()  # one organism by two of its names: not "several organisms"
    named_twice.obs["organism"] = ["human" if i % 2 else "Homo sapiens" for i in range(pbmc.n_obs)]
    assert standardize_anndata(named_twice)[1].organism == "Homo sapiens"
    named_twice.obs.loc[named_twice.obs_names[0], "organism"] = "mouse"
    with pytest.raises(UnknownOrganismError, match="several organisms"):
        standardize_anndata(named_twice)


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class StandardCells(LancellBaseSchema):
    cell_type: str | None = None
    cell_type_ontology_term_id: str | None = None
    gene_expression: SparseZarrPointer | None = None


def test_standardized_anndata_ingests_by_ensembl_id(tmp_path, pbmc):
    out, report = standardize_anndata(pbmc)
    resolved = out[:, out.var["ensembl_id"].notna().to_numpy()]
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        StandardCells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    features = pd.DataFrame(
        {"uid": resolved.var["ensembl_id"].astype(str), "gene_symbol": resolved.var_names.astype(str)}
    )
    atlas.register_features("gene_expression", features)
    add_from_anndata(
        atlas,
        resolved,
        feature_space="gene_expression",
        zarr_layer="log_normalized",
        dataset_record=DatasetRecord(uid="pbmc"),
        var_uid_column="ensembl_id",
        progress=False,
    )
    back = (
        atlas.query()
        .feature_space("gene_expression")
        .layers("gene_expression", "log_normalized")
        .to_anndata()
    )
    back = back[:, pd.Index(resolved.var["ensembl_id"].astype(str))]
    np.testing.assert_array_equal(back.X.toarray(), resolved.X.toarray())
    stored = atlas.query().select(["cell_type_ontology_term_id"]).to_pandas()["cell_type_ontology_term_id"]
    assert stored.isna().sum() == out.obs["cell_type_ontology_term_id"].isna().sum()
    assert report.gene_resolution_rate() == resolved.n_vars / pbmc.n_vars


def test_gene_reference_tables():
    human = GeneReference.load("Homo sapiens")
    assert len(human.genes) == 78_894 and human.genes.index.is_unique
    assert len(human.previous) == 62_754
    assert len(GeneReference.load("mouse").genes) == 78_317
    assert BUNDLED[0].organism == "Homo sapiens"
