"""Helpers shared by the tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
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


def gene_atlas(
    db_uri: str, store: str, genes: list[str] | pd.DataFrame, store_kwargs: dict | None = None
) -> RaggedAtlas:
    """A new atlas of the bundled cell schema at ``db_uri`` / ``store`` with ``genes`` registered in feature
    space ``gene_expression`` (names: uid = symbol; or the registry's rows)."""
    atlas = RaggedAtlas.create(
        db_uri,
        "cells",
        CellSchema,
        store=store,
        registry_schemas={"gene_expression": GeneFeature},
        store_kwargs=store_kwargs,
    )
    rows = genes if isinstance(genes, pd.DataFrame) else pd.DataFrame({"uid": genes, "gene_symbol": genes})
    atlas.register_features("gene_expression", rows)
    return atlas


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


@contextmanager
def table_calls(table: str, **replaced: Callable[..., object]) -> Iterator[None]:
    """Every atlas handle's table ``table`` (an ``AtlasTables`` property: ``"datasets"``, ``"cells"``) with
    the methods named in ``replaced`` in place of its own, each called as ``method(real_table, *args,
    **kwargs)`` (a store failing, a process paused or interrupted inside one call)."""
    from lancell.tables.atlas_tables import AtlasTables

    real = getattr(AtlasTables, table)

    class Replaced:
        def __init__(self, handle: object) -> None:
            self._handle = handle

        def __getattr__(self, name: str) -> object:
            if name in replaced:
                return functools.partial(replaced[name], self._handle)
            return getattr(self._handle, name)

    setattr(AtlasTables, table, property(lambda tables: Replaced(real.fget(tables))))
    try:
        yield
    finally:
        setattr(AtlasTables, table, real)


def apply_partition_requests(instance: object, result: object) -> None:
    """Apply a sensor result's dynamic partition requests to ``instance``, as the daemon does."""
    import dagster as dg

    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
