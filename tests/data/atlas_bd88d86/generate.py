"""Write the old-format atlas of this folder with the lancell code of commit bd88d86 (2026-11-25).

Run it with that commit's code first on the path and the project's virtual environment::

    rm -rf /tmp/oldcode && mkdir /tmp/oldcode
    git archive bd88d86 | tar -x -C /tmp/oldcode
    LANCE_LOG=error PYTHONPATH=/tmp/oldcode .venv/bin/python tests/data/atlas_bd88d86/generate.py

It builds the atlas in a temporary folder (so the store URL it records points at no file of the repository),
then replaces ``db/`` and ``expected.json`` here. Two datasets of synthetic integer counts with different
gene panels in one sparse feature space; snapshot 1 holds the first dataset, snapshot 2 both (the second with
a CSC copy, the first without). Then a third ingestion, ``old_c``, is killed at its commit point (a child
process exits where the dataset record would be added): its group and cell rows are debris of an older
lancell (never claimed). ``expected.json`` holds what the old code reads back from each snapshot and where
the debris lies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad
import lancedb
import numpy as np
import obstore.store
import pandas as pd
import scipy.sparse as sp

import lancell
from lancell.atlas import RaggedAtlas
from lancell.ingestion import add_from_anndata
from lancell.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

HERE = Path(__file__).resolve().parent
COMMIT = "bd88d86"


class GeneFeature(FeatureBaseSchema):
    """A gene of the registry."""

    gene_symbol: str


class CellSchema(LancellBaseSchema):
    """The cell table: two obs columns and one sparse feature space."""

    cell_type: str | None = None
    n_counts: float | None = None
    gene_expression: SparseZarrPointer | None = None


def synthetic(uid: str, n_cells: int, genes: list[str], seed: int) -> ad.AnnData:
    """Integer counts (about 40% nonzero, one all-zero cell) with a cell type and total counts per cell."""
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, 30, size=(n_cells, len(genes))) * (rng.random((n_cells, len(genes))) < 0.4)
    dense[3] = 0
    types = np.array(["B cell", "T cell", "monocyte"])[rng.integers(0, 3, n_cells)]
    obs = pd.DataFrame(
        {"cell_type": types, "n_counts": dense.sum(axis=1).astype(np.float64)},
        index=[f"{uid}_cell{i:02d}" for i in range(n_cells)],
    )
    return ad.AnnData(sp.csr_matrix(dense.astype(np.int64)), obs=obs, var=pd.DataFrame(index=genes))


def read_back(atlas: RaggedAtlas, dataset_uid: str) -> dict[str, object]:
    """What the old code returns for one dataset: X (dense rows), obs index and columns, var uids."""
    adata = (
        atlas.query().where(f"dataset_uid = '{dataset_uid}'").layers("gene_expression", "counts").to_anndata()
    )
    return {
        "X": np.asarray(adata.X.toarray()).tolist(),
        "dtype": str(adata.X.dtype),
        "obs_index": adata.obs_names.tolist(),
        "cell_type": adata.obs["cell_type"].astype(str).tolist(),
        "n_counts": adata.obs["n_counts"].tolist(),
        "var_uids": adata.var_names.tolist(),
    }


def crash(db_uri: str) -> None:
    """Ingest ``old_c`` and exit where its dataset record would be added (the process dies there)."""
    atlas = RaggedAtlas.open(db_uri)
    atlas._tables.datasets.add = lambda *args, **kwargs: os._exit(3)
    adata = synthetic("old_c", 20, [f"G{i:02d}" for i in range(2, 10)], seed=3)
    record = DatasetRecord(uid="old_c")
    add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=record,
        progress=False,
    )
    raise SystemExit("the ingestion of old_c was not interrupted")


def debris(db_uri: str) -> dict[str, object]:
    """The interrupted ingestion's cell rows: how many, and the group they point into."""
    rows = lancedb.connect(db_uri).open_table("cells").search().where("dataset_uid = 'old_c'").to_arrow()
    groups = {pointer["zarr_group"] for pointer in rows.column("gene_expression").to_pylist()}
    (group,) = groups
    return {"dataset_uid": "old_c", "n_cells": rows.num_rows, "zarr_group": group}


def main() -> None:
    """Build the atlas with the old code and replace ``db/`` and ``expected.json`` in this folder."""
    if "layers" in DatasetRecord.model_fields:
        raise SystemExit(f"this runs on the code of commit {COMMIT}, not {lancell.__file__}")
    inputs = {
        "old_a": synthetic("old_a", 40, [f"G{i:02d}" for i in range(12)], seed=1),
        "old_b": synthetic("old_b", 30, [f"G{i:02d}" for i in range(6, 16)], seed=2),
    }
    work = Path(tempfile.mkdtemp(prefix="lancell-old-atlas-"))
    db_uri = str(work / "db")
    atlas = RaggedAtlas.create(
        db_uri=db_uri,
        cell_table_name="cells",
        cell_schema=CellSchema,
        store=obstore.store.LocalStore(f"{db_uri}/_zarr", mkdir=True),
        registry_schemas={"gene_expression": GeneFeature},
    )
    genes = [f"G{i:02d}" for i in range(16)]
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    snapshots: dict[str, list[str]] = {}
    for uid, csc in [("old_a", False), ("old_b", True)]:
        add_from_anndata(
            atlas,
            inputs[uid],
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=uid, name=f"synthetic {uid}"),
            csc=csc,
            progress=False,
        )
        atlas.optimize()
        snapshots[str(atlas.snapshot(note=f"with {uid}"))] = sorted(inputs)[: len(snapshots) + 1]
    expected: dict[str, object] = {"commit": COMMIT, "snapshots": {}}
    for version, uids in snapshots.items():
        pinned = RaggedAtlas.checkout(db_uri, int(version))
        expected["snapshots"][version] = {uid: read_back(pinned, uid) for uid in uids}  # type: ignore[index]
    for uid, adata in inputs.items():  # the old code read back what it was given
        got = expected["snapshots"][version][uid]  # type: ignore[index]
        assert got["X"] == adata.X.toarray().tolist() and got["var_uids"] == adata.var_names.tolist()
    child = subprocess.run([sys.executable, __file__, "--crash", db_uri], check=False)
    if child.returncode != 3:
        raise SystemExit(f"the interrupted ingestion exited with {child.returncode}, not 3")
    expected["debris"] = debris(db_uri)
    records = atlas.list_datasets().sort_values("uid")
    expected["datasets"] = {
        row.uid: {"zarr_group": row.zarr_group, "layer": row.layer, "n_cells": row.n_cells, "nnz": row.nnz}
        for row in records.itertuples()
    }
    shutil.rmtree(HERE / "db", ignore_errors=True)
    shutil.copytree(work / "db", HERE / "db")
    text = json.dumps(expected, indent=1)  # lists of numbers on one line each:
    text = re.sub(r"\[[^\[\]{}\"]*\]", lambda m: "[" + " ".join(m.group().strip("[]").split()) + "]", text)
    (HERE / "expected.json").write_text(text + "\n")
    shutil.rmtree(work)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--crash"]:
        crash(sys.argv[2])
    else:
        main()
