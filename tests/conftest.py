"""Shared fixtures: small real atlases built in tmp_path from the bundled data."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest

os.environ.setdefault("LANCE_LOG", "error")
# a process the tests start that dies on a signal says where: Python's traceback of every thread
# (faulthandler), and glibc's own message on stderr instead of /dev/tty (a heap check's abort)
os.environ.setdefault("PYTHONFAULTHANDLER", "1")
os.environ.setdefault("LIBC_FATAL_STDERR_", "1")

from helpers import read_10x_v3_h5

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, CellSchema, GeneFeature, build_bundled_atlas, gene_features

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="session")
def pbmc() -> ad.AnnData:
    return BUNDLED[0].read()


@pytest.fixture(scope="session")
def celltypist() -> ad.AnnData:
    return BUNDLED[1].read()


@pytest.fixture(scope="session")
def mouse() -> ad.AnnData:
    adata = BUNDLED[2].read()
    adata.var_names = adata.var["gene_ids"].astype(str)
    return adata


@pytest.fixture(scope="session")
def tenx() -> ad.AnnData:
    return read_10x_v3_h5(DATA / "10x_v3" / "filtered_feature_bc_matrix.h5")


@pytest.fixture(scope="session")
def all_genes(tenx: ad.AnnData) -> pd.DataFrame:
    extra = pd.DataFrame(
        {"uid": tenx.var_names, "gene_symbol": tenx.var["gene_symbol"], "organism": "Homo sapiens"}
    )
    return pd.concat([gene_features(), extra]).drop_duplicates("uid").reset_index(drop=True)


@pytest.fixture
def atlas(tmp_path: Path, all_genes: pd.DataFrame) -> RaggedAtlas:
    """An empty atlas with every bundled gene registered."""
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    atlas.register_features("gene_expression", all_genes)
    return atlas


@pytest.fixture(scope="session")
def bundled_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the bundled atlas (``db/``, ``arrays/``), built once per session; read it only."""
    root = tmp_path_factory.mktemp("bundled_atlas")
    build_bundled_atlas(root)
    return root
