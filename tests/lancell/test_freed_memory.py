"""After every ingestion, successful or not, the C allocator's freed memory goes back to the system."""

from __future__ import annotations

import platform

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import lancell.ingest.transaction_run as transaction_run
from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.errors import IngestError
from lancell.ingest.freed_memory import _malloc_trim, release_freed_memory
from lancell.ingest.from_anndata import add_from_anndata


@pytest.mark.skipif(
    platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only"
)
def test_glibc_malloc_trim_is_found_and_runs() -> None:
    assert _malloc_trim() is not None
    release_freed_memory()


def test_every_ingestion_releases_the_freed_memory_once(tmp_path, monkeypatch) -> None:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    genes = [f"G{i}" for i in range(20)]
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    calls = []
    monkeypatch.setattr(transaction_run, "release_freed_memory", lambda: calls.append(1))
    x = sp.random(10, 20, density=0.3, format="csr", random_state=0, dtype=np.float64)
    x.data = np.ceil(x.data * 9)
    good = ad.AnnData(X=x.astype(np.int32), var=pd.DataFrame(index=genes))
    add_from_anndata(atlas, good, feature_space="gene_expression", zarr_layer="counts", progress=False)
    assert calls == [1]
    bad = good.copy()
    bad.X.data[0] = -1  # a negative count: refused while the matrix is written
    with pytest.raises(IngestError):
        add_from_anndata(atlas, bad, feature_space="gene_expression", zarr_layer="counts", progress=False)
    assert calls == [1, 1]
