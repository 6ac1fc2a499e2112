"""``validate()`` finds damage a writer bug could leave: duplicated cell rows, counts that disagree."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.ingestion import add_from_anndata
from lancell.schema import DatasetRecord


def test_duplicated_cell_rows_are_reported(tmp_path):
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    genes = [f"g{i}" for i in range(20)]
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    x = sp.csr_matrix(np.arange(200, dtype=np.int32).reshape(10, 20) % 3)
    adata = ad.AnnData(X=x, var=pd.DataFrame(index=genes))
    add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="d"),
        progress=False,
    )
    assert atlas.validate() == []
    atlas._tables.cells.add(atlas._tables.cells.search().limit(2).to_arrow())  # two rows written twice
    problems = atlas.validate()
    assert "cell uids are not unique" in problems
    assert any("record says 10 cells, 12 cells point into" in p for p in problems)
