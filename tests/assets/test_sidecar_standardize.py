"""The sidecar's ``standardize`` key through the landing sensor and ``ingest_dataset_job``: genes are stored
under Ensembl ids (unresolved ones under their name), genes sharing an id are summed for integer counts and
reduced to the first for floats, obs labels get ontology term ids, and the metadata says what was done."""

import json
from pathlib import Path

import anndata as ad
import dagster as dg
import numpy as np
import pytest

import definitions
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED
from lancell.tables.schema import LancellBaseSchema, SparseZarrPointer
from lancell_assets import landing_zone_sensor

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
CHECKS = {"ingested_cleanly", "cell_count_matches", "nnz_matches", "dataset_consistent", "content_matches"}


class TermCells(LancellBaseSchema):
    """A cell schema that declares the ontology term id columns standardization fills."""

    cell_type: str | None = None
    cell_type_ontology_term_id: str | None = None
    organism_ontology_term_id: str | None = None
    gene_expression: SparseZarrPointer | None = None


def _standardize_sidecar(landing: Path, uid: str) -> None:
    sidecar = landing / f"{uid}.json"
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {"standardize": True}))


def _sense_and_ingest(defs: dg.Definitions, instance: dg.DagsterInstance, uid: str) -> dict[str, object]:
    """Evaluate the landing sensor, commit its partitions, run ``uid``'s ingestion; its metadata."""
    result = landing_zone_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert uid in [r.partition_key for r in result.run_requests]
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    run = defs.resolve_job_def("ingest_dataset_job").execute_in_process(
        run_config=QUIET, instance=instance, partition_key=uid
    )
    checks = run.get_asset_check_evaluations()
    assert {(c.check_name, c.passed, c.partition) for c in checks} == {(n, True, uid) for n in CHECKS}
    materialization = run.asset_materializations_for_node("dataset_group")[0]
    return {k: v.value for k, v in materialization.metadata.items()}


def _column(adata: ad.AnnData, name: str) -> np.ndarray:
    return np.asarray(adata[:, name].X.todense()).ravel()


@pytest.mark.parametrize("stored_as", ["integers", "float32"])  # counts stored as floats were kept "first"
def test_standardize_sums_counts_of_genes_sharing_an_id_and_keeps_unresolved_ones(platform, stored_as):
    defs, instance, root = platform
    landing = root / "landing"
    source = BUNDLED[1].read()  # celltypist sample: integer counts, older GENCODE names
    if stored_as == "float32":
        source.X = source.X.astype(np.float32)
    # One unresolved gene (MTRNR2L12, 554 cells) is landed as NHSL3, the current name of KIAA1522, which the
    # file also has: the two resolve to one Ensembl id, like LINC00856 and its alias LINC00595 (all zeros).
    names = source.var_names.to_numpy().copy()
    names[names == "MTRNR2L12"] = "NHSL3"
    source.var_names = names
    source.var["gene_symbol"] = names
    source.write_h5ad(landing / "celltypist_sample.h5ad")
    _standardize_sidecar(landing, "celltypist_sample")

    meta = _sense_and_ingest(defs, instance, "celltypist_sample")
    assert meta["standardization"] == {
        "organism": "Homo sapiens",
        "gene_resolution_rate": 0.5905,  # 19,360 of 32,786
        "genes_id": 0,
        "genes_retired_id": 0,
        "genes_symbol": 19207,
        "genes_ambiguous": 75,
        "genes_alias": 78,
        "genes_unresolved": 13426,
        "genes_duplicate_ids": 4,
        "var_resolved": 19360,
        "var_kept": 13426,
        "var_dropped": 0,
        "var_summed": 2,  # KIAA1522 into NHSL3, LINC00595 into LINC00856
        "var_n_vars": 32784,
        "organism_exact": 1,
        "skipped_columns": "cell_type, tissue, disease, assay",
    }
    assert meta["features"] == 32784
    assert meta["dropped_obs_columns"] == ["organism_ontology_term_id", "sample"]  # bundled schema

    atlas = RaggedAtlas.open(str(root / "db"))
    registry = atlas.feature_registry("gene_expression").set_index("uid")
    assert len(registry) == 32784
    assert registry.loc["ENSG00000162522", "gene_symbol"] == "NHSL3"
    assert registry.loc["ENSG00000230417", "gene_symbol"] == "LINC00856"
    assert registry.loc["ENSG00000198851", "gene_symbol"] == "CD3E"
    assert registry.loc["RNA28S5", "gene_symbol"] == "RNA28S5"  # unresolved: kept under its name
    assert not {"NHSL3", "KIAA1522", "LINC00856", "LINC00595", "CD3E"} & set(registry.index)

    out = atlas.query().layers("gene_expression", "counts").to_anndata()
    assert out.obs_names.tolist() == [f"celltypist_sample:{c}" for c in source.obs_names]
    assert out.X.dtype == (np.int64 if stored_as == "integers" else np.float32)  # floats stay floats
    summed = _column(source, "KIAA1522") + _column(source, "NHSL3")
    overlap = int(((_column(source, "KIAA1522") > 0) & (_column(source, "NHSL3") > 0)).sum())
    assert overlap == 25
    np.testing.assert_array_equal(_column(out, "ENSG00000162522"), summed)
    np.testing.assert_array_equal(_column(out, "ENSG00000230417"), np.zeros(559))
    np.testing.assert_array_equal(_column(out, "ENSG00000198851"), _column(source, "CD3E"))
    np.testing.assert_array_equal(_column(out, "RNA28S5"), _column(source, "RNA28S5"))
    assert int(out.X.sum()) == int(source.X.sum())  # summing loses no count
    assert out.X.nnz == source.X.nnz - overlap == meta["nnz"]


def test_standardize_stores_term_ids_of_float_genes(platform, monkeypatch):
    _, instance, root = platform
    monkeypatch.setenv("LANCELL_CELL_SCHEMA", f"{__name__}:TermCells")
    defs = definitions.build_definitions(root)
    _standardize_sidecar(root / "landing", "pbmc68k")

    meta = _sense_and_ingest(defs, instance, "pbmc68k")
    assert meta["standardization"] == {
        "organism": "Homo sapiens",
        "gene_resolution_rate": 0.915,  # 700 of 765
        "genes_id": 0,
        "genes_retired_id": 0,
        "genes_symbol": 700,
        "genes_ambiguous": 0,
        "genes_alias": 0,
        "genes_unresolved": 65,
        "genes_duplicate_ids": 0,
        "var_resolved": 700,
        "var_kept": 65,
        "var_dropped": 0,
        "var_summed": 0,  # no two genes share an id (log-normalized ones would keep the first, warned)
        "var_n_vars": 765,
        "cell_type_normalized": 3,
        "cell_type_broader": 3,
        "cell_type_unresolved": 4,
        "organism_exact": 1,
        "skipped_columns": "tissue, disease, assay",
    }
    assert meta["dropped_obs_columns"] == ["louvain", "n_counts", "organism"]

    atlas = RaggedAtlas.open(str(root / "db"))
    source = BUNDLED[0].read()
    cells = atlas.query().to_pandas()
    terms = dict(zip(cells["cell_type"], cells["cell_type_ontology_term_id"], strict=True))
    assert terms == {
        "CD14+ Monocyte": "CL:0001054",
        "Dendritic": "CL:0000451",
        "CD56+ NK": "CL:0000623",
        "CD19+ B": "CL:0001201",
        "CD8+ Cytotoxic T": "CL:0000910",
        "CD4+/CD45RA+/CD25- Naive T": "CL:0000898",
        "CD4+/CD25 T Reg": None,
        "CD4+/CD45RO+ Memory": None,
        "CD8+/CD45RA+ Naive Cytotoxic": None,
        "CD34+": None,
    }
    assert cells["cell_type"].tolist() == source.obs["cell_type"].astype(str).tolist()
    assert set(cells["organism_ontology_term_id"]) == {"NCBITaxon:9606"}

    out = atlas.query().layers("gene_expression", "log_normalized").to_anndata()
    assert out.X.dtype == np.float32
    np.testing.assert_array_equal(_column(out, "ENSG00000198851"), _column(source, "CD3E"))
    np.testing.assert_array_equal(_column(out, "IGJ"), _column(source, "IGJ"))  # unresolved, kept
    assert out.X.nnz == source.X.nnz == meta["nnz"]
