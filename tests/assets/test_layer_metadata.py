"""A landed file with several layers (sidecar ``layers``): ``dataset_group`` metadata lists each with its
stored dtype and the entries it reads back, and a query returns the layers together."""

import json

import numpy as np
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED
from lancell_assets import dataset_partitions

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def test_dataset_group_metadata_lists_layers_with_dtype_and_nnz(platform):
    defs, instance, root = platform
    landing = root / "landing"
    adata = BUNDLED[1].read()  # celltypist sample: integer UMI counts
    counts = sp.csr_matrix(adata.X)
    per_cell = np.asarray(counts.sum(axis=1)).ravel()
    normalized = sp.csr_matrix(sp.diags(1e4 / per_cell) @ counts.astype(np.float64))
    adata.X = normalized.log1p().astype(np.float32)  # log-normalized: the counts' pattern
    adata.layers["counts"] = counts
    kept = counts.multiply(counts >= 2).astype(bool)  # a normalized layer without the single-UMI entries
    adata.layers["normalized"] = sp.csr_matrix(normalized.multiply(kept).astype(np.float32))
    n_ge2 = int((counts.data >= 2).sum())
    assert (counts.nnz, n_ge2) == (1027859, 484632)
    adata.write_h5ad(landing / "two_layers.h5ad")
    layers = {"counts": "counts", "log_normalized": "X", "normalized": "normalized"}
    (landing / "two_layers.json").write_text(json.dumps({"layers": layers, "organism": "Homo sapiens"}))

    instance.add_dynamic_partitions(dataset_partitions.name, ["two_layers"])
    run = defs.resolve_job_def("ingest_dataset_job").execute_in_process(
        run_config=QUIET, instance=instance, partition_key="two_layers"
    )
    assert all(c.passed for c in run.get_asset_check_evaluations())
    meta = {k: v.value for k, v in run.asset_materializations_for_node("dataset_group")[0].metadata.items()}
    assert meta["layers"] == {
        "counts": {"dtype": "uint32", "nnz": 1027859},
        "log_normalized": {"dtype": "float32", "nnz": 1027859},
        "normalized": {"dtype": "float32", "nnz": 484632},  # padded with zeros on the shared pattern
    }
    assert (meta["layer"], meta["nnz"]) == ("counts", 1027859)

    atlas = RaggedAtlas.open(str(root / "db"))
    both = atlas.query().layers("gene_expression", ["counts", "log_normalized"]).to_anndata()
    assert both.X.dtype == np.int64 and both.layers["log_normalized"].dtype == np.float32
    assert both.var_names.tolist() == adata.var_names.tolist()  # registered in file order
    assert (both.X != counts).nnz == 0 and both.X.nnz == counts.nnz
    assert (both.layers["log_normalized"] != adata.X).nnz == 0
    own = atlas.query().layers("gene_expression", "normalized").to_anndata().X
    assert own.nnz == n_ge2 and (own != adata.layers["normalized"]).nnz == 0
