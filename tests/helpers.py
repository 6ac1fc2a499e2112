"""Helpers shared by the tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.tables.store_location import STORE_BINDING


def read_10x_v3_h5(path: Path) -> ad.AnnData:
    """The bundled 10x v3 HDF5 as AnnData (cells x genes, int32 counts, var index = symbol)."""
    with h5py.File(path) as f:
        m = f["matrix"]
        n_genes, n_cells = m["shape"][:]
        x = sp.csr_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_cells, n_genes))
        var = pd.DataFrame(
            {"gene_symbol": m["features/name"][:].astype(str), "gene_ids": m["features/id"][:].astype(str)},
            index=m["features/name"][:].astype(str),
        )
        obs = pd.DataFrame(index=m["barcodes"][:].astype(str))
    obs["organism"] = "Homo sapiens"
    return ad.AnnData(X=x, obs=obs, var=var)


def visible_state(atlas: RaggedAtlas, *, versions: bool = False) -> dict[str, object]:
    """What readers see: every table's rows (sorted, without timestamps), validate(), the zarr groups.

    With ``versions`` also every table's Lance version and the snapshot list: a call that fails before its
    first commit must not even create a table version.
    """
    state: dict[str, object] = {}
    if versions:
        state["versions"] = atlas.core.tables.versions()
        state["snapshots"] = RaggedAtlas.list_versions(atlas.db_uri)["version"].tolist()
    for name, handle in atlas.core.tables.handles.items():
        table = handle.to_arrow()
        if "created_at" in table.column_names:
            table = table.drop_columns(["created_at"])
        keys = [c for c in ("uid", "layout_uid", "local_index", "name") if c in table.column_names]
        state[name] = (
            table.sort_by([(k, "ascending") for k in keys]).to_pylist() if keys else table.to_pylist()
        )
    state["validate"] = atlas.validate()
    stored = os.listdir(atlas.store.prefix)  # (the record of the database writing a given store is no group)
    state["groups"] = sorted(p for p in stored if not p.startswith("zarr") and p != STORE_BINDING)
    return state


def dense(x: object) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
