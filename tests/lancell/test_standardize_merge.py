"""Standardization edge cases: exact sums of genes sharing an id, counts stored as floats, the registry's
symbols from ``gene_column``, genes of another organism, unused overrides, and what the report counts."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.errors import (
    ArgumentError,
    DataValueError,
    DuplicateDatasetError,
    IngestError,
    LancellWarning,
    StandardizationError,
)
from lancell.standardize.pipeline import feature_rows, standardize_and_ingest, standardize_anndata
from lancell.standardize.var_merge import merge_duplicate_columns
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

# NHSL3 and its older name KIAA1522 are one gene, ENSG00000162522
ONE_GENE = ["NHSL3", "KIAA1522", "TP53"]


class Gene(FeatureBaseSchema):
    gene_symbol: str
    organism: str | None = None


class Cells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def _atlas(root) -> RaggedAtlas:
    return RaggedAtlas.create(
        str(root / "db"),
        "cells",
        Cells,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )


def _adata(x: np.ndarray, var_names: list[str], var: dict[str, list[str]] | None = None) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata: var names not unique
        return ad.AnnData(
            X=sp.csr_matrix(x),
            var=pd.DataFrame(var or {}, index=var_names),
            obs=pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])]),
        )


def _stored(atlas: RaggedAtlas, uid: str) -> int:
    out = atlas.query().layers("gene_expression", "counts").to_anndata()
    return int(out[:, uid].X.toarray()[0, 0])


@pytest.mark.parametrize(("dtype", "values"), [(np.uint8, [200, 100]), (np.int16, [30000, 30000])])
def test_genes_sharing_an_id_are_summed_exactly(tmp_path, dtype, values):
    atlas = _atlas(tmp_path)
    adata = _adata(np.array([[*values, 7]], dtype=dtype), ONE_GENE)
    _, report = standardize_and_ingest(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        organism="human",
        dataset_record=DatasetRecord(uid="s"),
        progress=False,
    )
    assert report.var_counts["summed"] == 1
    assert _stored(atlas, "ENSG00000162522") == sum(values)


@pytest.mark.parametrize("dense", [False, True])
def test_a_float32_sum_float32_cannot_hold_stays_float64(dense):
    """Counts stored as float32 summed to 2**24 + 1 came back as float32 2**24: the sum was cast back to the
    input dtype whether or not it fits."""
    x = np.array([[2**24, 1, 0], [3, 4, 5]], np.float32)
    adata = _adata(x, ONE_GENE)
    if dense:
        adata.X = x
    out, _ = standardize_anndata(adata, organism="human", duplicates="sum")
    assert out.X.dtype == np.float64
    got = out.X.toarray() if sp.issparse(out.X) else out.X
    assert got[0].tolist() == [2**24 + 1, 0] and got[1].tolist() == [7, 5]
    small = standardize_anndata(_adata(x[1:], ONE_GENE), organism="human", duplicates="sum")[0]
    assert small.X.dtype == np.float32  # (a sum float32 holds keeps the input dtype)
    normalized = standardize_anndata(_adata(x / 3, ONE_GENE), organism="human", duplicates="sum")[0]
    assert normalized.X.dtype == np.float32  # (fractions: a float sum, float32 as given)


@pytest.mark.parametrize("dense", [False, True])
def test_a_sum_beyond_uint32_counts_is_an_error_naming_the_gene(dense):
    x = np.array([[2**31, 2**31, 1]], dtype=np.int64)
    adata = ad.AnnData(X=x if dense else sp.csr_matrix(x), var=pd.DataFrame(index=["a", "b", "c"]))
    with pytest.raises(DataValueError, match=r"X: .*above 4294967295.* 1 features, e.g. \['u'\]"):
        merge_duplicate_columns(adata, pd.Series(["u", "u", "w"]), "sum")
    small = ad.AnnData(X=np.array([[250, 10]], dtype=np.uint8), var=pd.DataFrame(index=["a", "b"]))
    out, _ = merge_duplicate_columns(small, pd.Series(["u", "u"]), "sum")
    assert out.X.tolist() == [[260]]  # widened: uint8 cannot hold it


def test_counts_stored_as_floats_are_summed_other_floats_keep_the_first_with_a_warning():
    counts = _adata(np.array([[2.0, 3.0, 1.0]], dtype=np.float32), ONE_GENE)
    out, report = standardize_anndata(counts, organism="human", obs_columns={}, duplicates="auto")
    assert report.var_counts["summed"] == 1
    assert out.X.toarray().tolist() == [[5.0, 1.0]]
    normalized = _adata(np.array([[0.5, 1.25, 1.0]], dtype=np.float32), ONE_GENE)
    with pytest.warns(LancellWarning, match=r"1 var entries share a feature uid .*'ENSG00000162522'"):
        out, report = standardize_anndata(normalized, organism="human", obs_columns={}, duplicates="auto")
    assert report.var_counts["first"] == 1
    assert out.X.toarray().tolist() == [[0.5, 1.0]]


def test_auto_decides_per_layer_counts_summed_normalized_values_first():
    """``"auto"`` chose one way for X and every layer: integer counts under a log-normalized X kept only the
    first gene's counts (docs: summed for counts, the first kept for floats)."""
    adata = _adata(np.array([[0.5, 1.25, 1.0], [0.0, 2.5, 0.0]], dtype=np.float32), ONE_GENE)
    adata.layers["counts"] = sp.csr_matrix(np.array([[3, 4, 1], [0, 7, 0]], dtype=np.int32))
    with pytest.warns(LancellWarning, match=r"left out of X, .*; layer 'counts': added up"):
        out, report = standardize_anndata(adata, organism="human", obs_columns={}, duplicates="auto")
    assert report.var_counts["summed"] == 1
    assert out.layers["counts"].toarray().tolist() == [[7, 1], [7, 0]]
    assert out.layers["counts"].dtype == np.int32
    assert out.X.toarray().tolist() == [[0.5, 1.0], [0.0, 0.0]]


def test_negative_values_are_not_summed_away(tmp_path):
    """-2 and 3 of one gene were stored as its count 1: "auto" took negative whole numbers for counts."""
    x = np.array([[-2, 3, 1], [4, 2, 0]], dtype=np.int32)
    with pytest.warns(LancellWarning, match="left out of X"):  # no counts: the first kept, as for floats
        out, report = standardize_anndata(
            _adata(x, ONE_GENE), organism="human", obs_columns={}, duplicates="auto"
        )
    assert report.var_counts["first"] == 1 and out.X.toarray().tolist() == [[-2, 1], [4, 0]]
    for given in (x, x.astype(np.float32)):  # whole numbers, as integers or floats
        with pytest.raises(DataValueError, match="X: var entries that share a feature uid hold negative"):
            standardize_anndata(_adata(given, ONE_GENE), organism="human", obs_columns={}, duplicates="sum")
    elsewhere = np.array([[1, 3, -1], [4, 2, 0]], dtype=np.int32)  # (not in the columns summed)
    out, _ = standardize_anndata(
        _adata(elsewhere, ONE_GENE), organism="human", obs_columns={}, duplicates="auto"
    )
    assert out.X.toarray().tolist() == [[4, -1], [6, 0]]  # summed; ingestion refuses the -1 as a count
    atlas = _atlas(tmp_path)
    with pytest.raises(DataValueError, match="negative integer value -2"), warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)  # (the first kept: ingestion refuses the -2)
        standardize_and_ingest(
            atlas,
            _adata(x, ONE_GENE),
            feature_space="gene_expression",
            zarr_layer="counts",
            organism="human",
            dataset_record=DatasetRecord(uid="s"),
            progress=False,
        )


def test_a_backed_file_with_its_counts_in_a_layer_only(tmp_path):
    """A file without X (counts in a layer): the merge read X, None (TypeError), and a backed file's copy
    in memory failed in anndata (KeyError: X)."""
    adata = _adata(np.zeros((2, 3), dtype=np.int32), ONE_GENE)
    adata.layers["counts"] = sp.csr_matrix(np.array([[1, 3, 1], [4, 2, 0]], dtype=np.int32))
    adata.X = None
    adata.write_h5ad(tmp_path / "layer_only.h5ad")
    backed = ad.read_h5ad(tmp_path / "layer_only.h5ad", backed="r")
    for duplicates in ("auto", "sum"):
        out, report = standardize_anndata(backed, organism="human", obs_columns={}, duplicates=duplicates)
        assert out.X is None and report.var_counts["summed"] == 1
        assert out.layers["counts"].toarray().tolist() == [[4, 1], [6, 0]]


def test_gene_column_gives_the_registry_symbols(tmp_path):
    atlas = _atlas(tmp_path)
    adata = _adata(
        np.array([[1, 2, 3]], dtype=np.int32), ["0", "1", "2"], {"symbol": ["TP53", "CD4", "FOOBAR1"]}
    )
    standardize_and_ingest(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        organism="human",
        gene_column="symbol",
        dataset_record=DatasetRecord(uid="s"),
        progress=False,
    )
    registry = atlas.feature_registry("gene_expression").set_index("uid")["gene_symbol"].to_dict()
    assert registry == {"ENSG00000141510": "TP53", "ENSG00000010610": "CD4", "FOOBAR1": "FOOBAR1"}
    # the landing path (lancell ingest --standardize --var-uid-column symbol): var index of Ensembl ids
    by_id = _adata(
        np.array([[1, 2]], dtype=np.int32),
        ["ENSG00000141510", "ENSG00000010610"],
        {"symbol": ["TP53", "CD4"]},
    )
    out, report = standardize_anndata(by_id, organism="human", gene_column="symbol", duplicates="sum")
    rows = feature_rows(out, report, pd.Index(["uid", "gene_symbol"]))
    assert rows["gene_symbol"].tolist() == ["TP53", "CD4"]


def test_genes_of_another_organism_are_warned_about():
    genes = [
        "ENSMUSG00000029580",
        "ENSMUSG00000025902",
        "ENSMUSG00000033845",
        "ENSG00000075624",
        "ENSG00000141510",
    ]
    adata = _adata(np.array([[1, 2, 3, 4, 5]], dtype=np.int32), genes)
    with pytest.warns(
        LancellWarning, match=r"2 of 5 genes are Ensembl ids of another organism .*'Homo sapiens': 2"
    ):
        _, report = standardize_anndata(adata, obs_columns={})
    assert report.organism == "Mus musculus"


def test_overrides_that_map_nothing_are_warned_about():
    adata = _adata(np.array([[1]], dtype=np.int32), ["TP53"])
    adata.obs["cell_type"] = ["blob"]
    adata.obs["tissue"] = ["lungz"]
    overrides = {"celltype": {"blob": "CL:0000576"}, "tissue": {"lung z": "UBERON:0002048"}}
    with pytest.warns(
        LancellWarning,
        match=r"overrides not used: \{'celltype': 'not a standardized obs column', 'tissue': \['lung z'\]\}",
    ):
        standardize_anndata(adata, organism="human", overrides=overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)
        _, report = standardize_anndata(
            adata, organism="human", overrides={"tissue": {"lungz": "UBERON:0002048"}}
        )
    assert report.term_table("tissue")["term_id"].tolist() == ["UBERON:0002048"]


def test_kept_names_that_repeat_are_reported_as_sharing_a_uid():
    adata = _adata(np.array([[1, 2, 3]], dtype=np.int32), ["FOOBAR1", "FOOBAR1", "TP53"])
    out, report = standardize_anndata(adata, organism="human", obs_columns={}, duplicates="sum")
    assert report.genes["duplicate"].tolist() == [True, True, False]
    assert "2 share a feature uid" in report.summary()
    assert report.var_counts["summed"] == 1 and out.X.toarray().tolist() == [[3, 3]]
    _, dropped = standardize_anndata(
        adata, organism="human", obs_columns={}, unresolved="drop", duplicates="sum"
    )
    assert not dropped.genes["duplicate"].any()  # dropped entries share nothing


def test_raw_beside_standardized_genes_is_dropped_with_the_right_advice():
    """scanpy's layout (.raw holding X's genes) told to ingest .raw as a dataset of its own (the same cells
    twice): its genes were compared with the standardized var."""
    counts = np.array([[3, 4, 1], [0, 7, 0]], dtype=np.int32)
    adata = _adata(np.log1p(counts).astype(np.float32), ONE_GENE)
    adata.raw = _adata(counts, ONE_GENE)
    with pytest.warns(
        LancellWarning, match=r"adata.raw is neither standardized nor stored: .*copy it into a"
    ):
        out, _ = standardize_anndata(adata, organism="human", obs_columns={}, duplicates="auto")
    assert out.raw is None and adata.raw is not None  # (the input untouched)


def test_the_report_and_warnings_describe_the_matrix_stored(tmp_path):
    """A log-normalized X stored (its first column kept) was reported as summed, from the count layer not
    stored; storing the count layer warned that entries were left out of X, not stored either."""
    counts = np.array([[1, 3, 1], [4, 2, 0]], dtype=np.int32)
    adata = _adata(np.log1p(counts).astype(np.float32), ONE_GENE)
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.raw = adata.copy()
    atlas = _atlas(tmp_path)
    common = {"feature_space": "gene_expression", "organism": "human", "progress": False}
    with pytest.warns(LancellWarning, match="left out of X"):
        _, report = standardize_and_ingest(
            atlas, adata, zarr_layer="log_normalized", dataset_record=DatasetRecord(uid="x"), **common
        )
    assert report.var_counts["first"] == 1 and "summed" not in report.var_counts
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*left out of")
        warnings.filterwarnings("ignore", message="adata.raw")
        _, report = standardize_and_ingest(
            atlas,
            adata,
            zarr_layer="counts",
            source_layer="counts",
            dataset_record=DatasetRecord(uid="c"),
            **common,
        )
    assert report.var_counts["summed"] == 1
    stored = atlas.query().where(dataset_uid="c").layers("gene_expression", "counts").to_anndata()
    assert stored[:, "ENSG00000162522"].X.toarray().ravel().tolist() == [4, 6]


def test_a_standardized_landing_reports_the_matrices_it_stores(tmp_path):
    """The landing path (lancell ingest --standardize, the sidecar's standardize) also merged and reported
    every matrix of the file: X stored, its first column kept, was reported as summed."""
    from lancell.ingest.landing import ingest_landing_file
    from lancell.ingest.landing_spec import LandingSpec

    counts = np.array([[1, 3, 1], [4, 2, 0]], dtype=np.int32)
    adata = _adata(np.log1p(counts).astype(np.float32), ONE_GENE)
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.write_h5ad(tmp_path / "s.h5ad")
    atlas, reports = _atlas(tmp_path), []
    spec = LandingSpec(
        path=tmp_path / "s.h5ad", uid="s", zarr_layer="log_normalized", organism="human", standardize=True
    )
    with pytest.warns(LancellWarning, match="left out of X"):
        ingest_landing_file(atlas, spec, on_standardized=reports.append)
    assert reports[0].var_counts["first"] == 1 and "summed" not in reports[0].var_counts


def test_matrices_names_what_is_copied_merged_and_kept(tmp_path):
    """``matrices=`` keeps only the named matrices; a backed file's X is read into the copy once (the
    standardized ingestions copied it twice: loaded, then copied again by the standardization)."""
    adata = _adata(np.array([[1, 3, 1], [4, 2, 0]], dtype=np.int32), ONE_GENE)
    adata.layers["counts"] = adata.X.copy()
    adata.layers["scaled"] = adata.X.astype(np.float32) / 2
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    out, report = standardize_anndata(backed, organism="human", duplicates="auto", matrices=["counts"])
    assert out.X is None and list(out.layers) == ["counts"] and report.var_counts["summed"] == 1
    assert out.layers["counts"].toarray().tolist() == [[4, 1], [6, 0]]
    out, _ = standardize_anndata(backed, organism="human", duplicates="sum", matrices=["X"])
    assert not out.layers and out.X.toarray().tolist() == [[4, 1], [6, 0]]
    for given, message in ((["counts", "raw"], r"no layers \['raw'\]"), ("counts", "the string 'counts'")):
        with pytest.raises(ArgumentError, match=message):
            standardize_anndata(adata, organism="human", duplicates="sum", matrices=given)
    out, _ = standardize_anndata(adata, organism="human", duplicates="sum", matrices=["X", "scaled"])
    assert list(out.layers) == ["scaled"] and not np.shares_memory(out.X.data, adata.X.data)
    assert adata.X.toarray().tolist() == [[1, 3, 1], [4, 2, 0]]  # the caller's matrices are left as they were


def test_entries_that_var_tells_apart_are_not_merged():
    """Two mouse genes named Rp1 (gene_ids differ) were summed into one; a protein named CD4 (feature_types
    'Antibody Capture') was added into the CD4 gene's counts: both with no word but a count."""
    x = np.array([[1, 2, 5], [0, 1, 7]], dtype=np.int32)
    two_genes = _adata(
        x,
        ["Rp1", "Rp1", "Sox17"],
        {"gene_ids": ["ENSMUSG00000025900", "ENSMUSG00000109048", "ENSMUSG00000025902"]},
    )
    for duplicates in ("auto", "sum", "first"):
        with pytest.raises(StandardizationError, match=r"'gene_ids' tells apart .*gene_column='gene_ids'"):
            standardize_anndata(two_genes, organism="mouse", obs_columns={}, duplicates=duplicates)
    out, report = standardize_anndata(two_genes, organism="mouse", gene_column="gene_ids", obs_columns={})
    assert out.var["feature_uid"].tolist()[:2] == ["ENSMUSG00000025900", "ENSMUSG00000109048"]
    protein = _adata(
        x, ["CD4", "ENSG00000010610", "TP53"], {"feature_types": ["Antibody Capture"] + 2 * ["Gene"]}
    )
    with pytest.raises(
        StandardizationError, match=r"'feature_types' tells apart .*each feature type on its own"
    ):
        standardize_anndata(protein, organism="human", obs_columns={}, duplicates="sum")
    protein.var["feature_types"] = ["ADT", "GEX", "GEX"]  # (openproblems' names: still 10x's column)
    with pytest.raises(StandardizationError, match=r"'feature_types' tells apart"):
        standardize_anndata(protein, organism="human", obs_columns={}, duplicates="sum")
    # ids in the var index, symbols standardized (scanpy's var_names="gene_ids"): the index tells them apart
    by_id = _adata(x, ["ENSMUSG00000025900", "ENSMUSG00000109048", "ENSMUSG00000025902"])
    by_id.var["symbol"] = ["Rp1", "Rp1", "Sox17"]
    with pytest.raises(StandardizationError, match=r"'var index' tells apart .*gene_column=None"):
        standardize_anndata(by_id, organism="mouse", gene_column="symbol", obs_columns={}, duplicates="sum")
    # CELLxGENE's feature_type holds biotypes, a missing id tells nothing, a _PAR_Y copy is its gene's
    for second in (None, "ENSG00000162522.10_PAR_Y"):
        fine = _adata(x, ONE_GENE, {"feature_type": ["protein_coding", "lncRNA", "protein_coding"]})
        fine.var["gene_ids"] = ["ENSG00000162522.10", second, "ENSG00000141510"]
        out, report = standardize_anndata(fine, organism="human", obs_columns={}, duplicates="sum")
        assert report.var_counts["summed"] == 1
    # an alias and its current symbol of one gene id, the id's version aside: merged as before
    alias = _adata(x, ONE_GENE, {"gene_ids": ["ENSG00000162522.10", "ENSG00000162522", "ENSG00000141510"]})
    out, report = standardize_anndata(alias, organism="human", obs_columns={}, duplicates="sum")
    assert report.var_counts["summed"] == 1 and out.X.toarray().tolist() == [[3, 5], [1, 7]]


def test_refusals_that_need_no_registry_come_before_registration(tmp_path):
    """A taken dataset uid, repeated obs names or an obs value the schema cannot hold were refused after the
    file's genes were registered: the atlas changed on a refusal."""
    atlas = _atlas(tmp_path)
    x = np.array([[1, 2], [3, 4]], dtype=np.int32)
    standardize_and_ingest(
        atlas, _adata(x, ["CD3E", "CD4"]), feature_space="gene_expression", zarr_layer="counts",
        organism="human", dataset_record=DatasetRecord(uid="d1"), progress=False,
    )  # fmt: skip
    before = atlas.feature_registry("gene_expression")
    repeated = _adata(x, ["CD8A", "CD4"])
    repeated.obs_names = ["c0", "c0"]
    for adata, uid, error in (
        (_adata(x, ["CD8A", "CD4"]), "d1", DuplicateDatasetError),
        (repeated, "d2", IngestError),
    ):
        with pytest.raises(error):
            standardize_and_ingest(
                atlas, adata, feature_space="gene_expression", zarr_layer="counts", organism="human",
                dataset_record=DatasetRecord(uid=uid), progress=False,
            )  # fmt: skip
    pd.testing.assert_frame_equal(atlas.feature_registry("gene_expression"), before)


def test_an_organism_given_against_the_cells_own_is_warned_about():
    """organism="human" over cells whose obs says mouse resolved the genes as human and the cells as mouse,
    with no word."""
    adata = _adata(np.array([[1], [2]], dtype=np.int32), ["CD3E"])
    for named in (["mouse", "mouse"], ["mouse", "unknown"]):  # (an unknown value hid the other)
        adata.obs["organism"] = named
        with pytest.warns(LancellWarning, match=r"resolves the genes as .*names \['Mus musculus'\]"):
            standardize_anndata(adata, organism="human", obs_columns={})
    adata.obs["organism"] = ["Homo sapiens", "Homo sapiens"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)
        standardize_anndata(adata, organism="human", obs_columns={})
