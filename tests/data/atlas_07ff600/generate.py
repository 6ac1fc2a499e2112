"""Write the atlas of this folder with the lancell code of commit 07ff600 (2026-12-04): fingerprint format 1.

Run it with that commit's code first on the path and the project's virtual environment::

    rm -rf /tmp/oldcode && mkdir /tmp/oldcode
    git archive 07ff600 | tar -x -C /tmp/oldcode
    LANCE_LOG=error PYTHONPATH=/tmp/oldcode .venv/bin/python tests/data/atlas_07ff600/generate.py

It builds the atlas in a temporary folder (so the store URL it records points at no file of the repository),
then replaces ``db/`` and ``expected.json`` here. Two datasets whose records carry format-1 content
fingerprints (SHA-256, 64 hex digits): ``one`` (integer counts in layer ``counts``) and ``two`` (layers
``counts`` and ``normalized``, so its fingerprint combines two). ``expected.json`` holds both fingerprints;
:func:`synthetic` rebuilds the inputs, so a test can ingest the same content again.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

HERE = Path(__file__).resolve().parent
COMMIT = "07ff600"
GENES = [f"G{i:02d}" for i in range(12)]


class GeneFeature(FeatureBaseSchema):
    """A gene of the registry."""

    gene_symbol: str


class CellSchema(LancellBaseSchema):
    """The cell table: one obs column and one sparse feature space."""

    cell_type: str | None = None
    gene_expression: SparseZarrPointer | None = None


def synthetic(uid: str, seed: int, normalized: bool = False) -> ad.AnnData:
    """20 cells x 12 genes of integer counts (about 40% nonzero) and a cell type; with ``normalized``, a
    second layer of the counts divided by each cell's total."""
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, 30, size=(20, len(GENES))) * (rng.random((20, len(GENES))) < 0.4)
    obs = pd.DataFrame(
        {"cell_type": np.array(["B cell", "T cell"])[rng.integers(0, 2, 20)]},
        index=[f"{uid}_cell{i:02d}" for i in range(20)],
    )
    adata = ad.AnnData(sp.csr_matrix(dense.astype(np.int64)), obs=obs, var=pd.DataFrame(index=GENES))
    if normalized:
        totals = np.maximum(dense.sum(axis=1, keepdims=True), 1)
        adata.layers["normalized"] = sp.csr_matrix((dense / totals).astype(np.float32))
    return adata


def main() -> None:
    """Build the atlas and replace ``db/`` and ``expected.json``."""
    with tempfile.TemporaryDirectory() as scratch:
        db = f"{scratch}/db"
        atlas = RaggedAtlas.create(
            db, "cells", CellSchema, store=f"{db}/_zarr", registry_schemas={"gene_expression": GeneFeature}
        )
        atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES, "gene_symbol": GENES}))
        one = add_from_anndata(
            atlas,
            synthetic("one", 1),
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid="one"),
            progress=False,
        )
        two = add_from_anndata(
            atlas,
            synthetic("two", 2, normalized=True),
            feature_space="gene_expression",
            layers={"counts": "X", "normalized": "normalized"},
            dataset_record=DatasetRecord(uid="two"),
            progress=False,
        )
        shutil.rmtree(HERE / "db", ignore_errors=True)
        shutil.copytree(db, HERE / "db")
    expected = {"commit": COMMIT, "fingerprints": {r.uid: r.content_fingerprint for r in (one, two)}}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(json.dumps(expected, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
