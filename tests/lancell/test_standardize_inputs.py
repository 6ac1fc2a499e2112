"""standardize_anndata / standardize_and_ingest on inputs that must not be silently misused: var entries
without a gene name, curated term ids already in obs, arguments that have no effect, unknown options."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.bundled import GeneFeature
from lancell.errors import ArgumentError, LancellWarning, StandardizationError
from lancell.standardize.pipeline import standardize_and_ingest, standardize_anndata
from lancell.tables.schema import LancellBaseSchema, SparseZarrPointer


class Cells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def _atlas(root) -> RaggedAtlas:
    return RaggedAtlas.create(
        str(root / "db"),
        "cells",
        Cells,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )


def _unnamed_genes() -> ad.AnnData:
    """Two var entries with a missing symbol and one with an empty one, between two real genes."""
    var = pd.DataFrame(
        {"sym": ["TSPAN6", np.nan, np.nan, "", "TNMD"]}, index=["g1", "noname_a", "noname_b", "blank", "g5"]
    )
    X = sp.csr_matrix(np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], dtype=np.int64))
    return ad.AnnData(X=X, var=var, obs=pd.DataFrame(index=["c1", "c2"]))


def test_missing_gene_names_are_refused_not_merged(tmp_path):
    with pytest.raises(StandardizationError, match=r"3 of 5 .*'sym'.*noname_a"):
        standardize_anndata(_unnamed_genes(), organism="human", gene_column="sym", duplicates="auto")
    atlas = _atlas(tmp_path)
    with pytest.raises(StandardizationError, match="'sym'"):
        standardize_and_ingest(
            atlas,
            _unnamed_genes(),
            feature_space="gene_expression",
            zarr_layer="counts",
            organism="human",
            gene_column="sym",
            progress=False,
        )
    assert atlas.feature_registry("gene_expression").empty  # nothing registered


def test_missing_gene_names_dropped_on_request():
    with pytest.warns(LancellWarning, match="3 of 5 .*dropped"):
        out, report = standardize_anndata(
            _unnamed_genes(), organism="human", gene_column="sym", unresolved="drop", duplicates="auto"
        )
    assert out.var_names.tolist() == ["g1", "g5"]
    assert out.var["feature_uid"].tolist() == ["ENSG00000000003", "ENSG00000000005"]
    assert out.X.toarray().tolist() == [[1, 5], [6, 10]]
    assert report.var_counts["dropped"] == 3
    assert report.var_counts["no_name"] == 3
    assert report.var_counts["n_vars"] == 2


def test_curated_term_ids_are_kept():
    obs = pd.DataFrame(
        {
            "cell_type": ["B cells", "my lab's T subset", "B cells", "B cells"],
            "cell_type_ontology_term_id": ["CL:0000236", "CL:0000084", np.nan, "CL:0000084"],
        },
        index=["c1", "c2", "c3", "c4"],
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(np.ones((4, 2), dtype=np.int32)), var=pd.DataFrame(index=["TSPAN6", "TNMD"]), obs=obs
    )
    with pytest.warns(LancellWarning, match=r"1 of them differ"):
        out, _ = standardize_anndata(adata, organism="human")
    # curated ids kept (c2 unmatched, c4 disagrees with the label), the missing one filled from the label
    assert out.obs["cell_type_ontology_term_id"].astype(object).tolist() == [
        "CL:0000236",
        "CL:0000084",
        "CL:0000236",
        "CL:0000084",
    ]
    assert adata.obs["cell_type_ontology_term_id"].isna().sum() == 1  # input untouched
    with warnings.catch_warnings():  # the ids are CL terms: no warning that they are not
        warnings.filterwarnings("error", message=".*no terms of its ontology")
        warnings.filterwarnings("ignore", message=".*differ from the ids")
        standardize_anndata(adata, organism="human")
    adata.obs["cell_type_ontology_term_id"] = ["UBERON:0002048", "CL:O000815", np.nan, "CL:0000084"]
    with pytest.warns(LancellWarning, match=r"2 term ids that are no terms .*'UBERON:0002048', 'CL:O000815'"):
        out, _ = standardize_anndata(adata, organism="human")  # a lung in a cell type column, a letter O
    assert out.obs["cell_type_ontology_term_id"].astype(object).tolist()[:2] == [
        "UBERON:0002048",
        "CL:O000815",
    ]
    cellxgene = adata.copy()  # what the CELLxGENE schema allows besides the field's ontology: no warning
    cellxgene.obs["cell_type_ontology_term_id"] = ["unknown", "CL:0000236", "na", "ZFA:0009248"]
    cellxgene.obs["tissue"] = ["fibroblast", "blood", "HeLa", "brain"]  # (a zebrafish neuron and brain)
    cellxgene.obs["tissue_ontology_term_id"] = ["CL:0000057", "UBERON:0000178", "CVCL_0030", "FBbt:00005095"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no terms of its ontology")
        warnings.filterwarnings("ignore", message=".*differ from the ids")
        standardize_anndata(cellxgene, organism="human")


def test_arguments_without_effect_are_warned():
    obs = pd.DataFrame({"celltype": ["B cells", "T cells"]}, index=["c1", "c2"])
    adata = ad.AnnData(
        X=sp.csr_matrix(np.ones((2, 2), dtype=np.int32)), var=pd.DataFrame(index=["TSPAN6", "TNMD"]), obs=obs
    )
    with pytest.warns(LancellWarning, match=r"genes=False.*organism.*unresolved.*duplicates"):
        standardize_anndata(adata, genes=False, organism="mouse", unresolved="drop", duplicates="sum")
    with pytest.warns(LancellWarning, match="cell_type_label"):
        _, report = standardize_anndata(
            adata, organism="human", obs_columns={"cell_type_label": "cell_type_ontology_term_id"}
        )
    assert report.skipped_columns == ["cell_type_label"]
    with warnings.catch_warnings():  # defaults: absent default obs columns are not warned about
        warnings.simplefilter("error", LancellWarning)
        standardize_anndata(adata, genes=False)


@pytest.mark.parametrize("options", [{"organsim": "human"}, {"organism": "human", "genes": False}])
def test_unknown_or_conflicting_options_are_typed_errors(tmp_path, options):
    atlas = _atlas(tmp_path)
    adata = ad.AnnData(
        X=sp.csr_matrix(np.ones((2, 2), dtype=np.int32)),
        var=pd.DataFrame(index=["TSPAN6", "TNMD"]),
        obs=pd.DataFrame(index=["c1", "c2"]),
    )
    name = next(key for key in options if key != "organism")
    with pytest.raises(ArgumentError, match=rf"{name}.*'organism'.*'gene_column'"):
        standardize_and_ingest(
            atlas, adata, feature_space="gene_expression", zarr_layer="counts", progress=False, **options
        )
    assert atlas.feature_registry("gene_expression").empty
