"""Crash safety: an ingesting process killed with SIGKILL at many points never corrupts the atlas.

Each case copies a committed atlas (one dataset, one snapshot), starts ``crash_child.py`` to ingest a large
backed ``.h5ad`` (many shards, CSR and CSC) and lets it SIGKILL itself at one point of the ingestion path, or
kills it from outside after a delay. Afterwards the atlas must open, validate, snapshot and answer queries
with exactly the cells committed before (or, for a kill after the commit point, exactly those plus the new
dataset: never a part of it); ``vacuum()`` must remove the debris; re-running the ingestion must succeed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.synthetic import synthetic_counts, write_synthetic_h5ad
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

CHILD = Path(__file__).with_name("crash_child.py")
GENES = [f"g{i}" for i in range(2_000)]
BIG_CELLS = 20_000


class Gene(FeatureBaseSchema):
    pass


class Cell(LancellBaseSchema):
    cell_type: str | None = None
    gene_expression: SparseZarrPointer | None = None


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A committed, snapshotted atlas with one small dataset, and the large file the child ingests."""
    root = tmp_path_factory.mktemp("crash_template")
    schemas = {"gene_expression": Gene}
    store = str(root / "arrays")
    atlas = RaggedAtlas.create(str(root / "db"), "cells", Cell, store=store, registry_schemas=schemas)
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    base = synthetic_counts(1_500, len(GENES), 150, np.random.default_rng(1)).astype(np.int32)
    obs = pd.DataFrame({"cell_type": "T cell"}, index=[f"b{i}" for i in range(base.shape[0])])
    add_from_anndata(
        atlas,
        ad.AnnData(X=base, obs=obs, var=pd.DataFrame(index=GENES)),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="base"),
        progress=False,
    )
    atlas.snapshot()
    big = root / "big.h5ad"
    write_synthetic_h5ad(big, BIG_CELLS, GENES, nnz_per_cell=150, seed=7)
    return {"root": root, "base": sp.csr_matrix(base), "big": big}


def _expected_big(path: Path) -> sp.csr_matrix:
    return sp.csr_matrix(ad.read_h5ad(path).X)


def _x_by_dataset(atlas: RaggedAtlas) -> dict[str, sp.csr_matrix]:
    adata = atlas.query().to_anndata()
    datasets = adata.obs["dataset_uid"].to_numpy()
    out = {}
    for uid in pd.unique(datasets):
        rows = np.flatnonzero(datasets == uid)
        order = np.argsort(
            [
                int(name.rsplit(":", 1)[1].lstrip("abcdefghijklmnopqrstuvwxyz"))
                for name in adata.obs_names[rows]
            ]
        )
        out[uid] = sp.csr_matrix(adata.X[rows[order]])
    return out


def _assert_exact(atlas: RaggedAtlas, expected: dict[str, sp.csr_matrix]) -> None:
    assert atlas.validate() == []
    assert atlas.query().count() == sum(m.shape[0] for m in expected.values())
    got = _x_by_dataset(atlas)
    assert sorted(got) == sorted(expected)
    for uid, matrix in expected.items():
        assert (got[uid] != matrix.astype(got[uid].dtype)).nnz == 0, uid


def _referenced_and_stored(atlas: RaggedAtlas, root: Path) -> tuple[set[str], set[str]]:
    referenced = set(atlas.list_datasets()["zarr_group"])
    stored = {p for p in os.listdir(root / "arrays") if not p.startswith("_") and not p.startswith("zarr")}
    return referenced, stored


# (point, nth): "enter:<fn>" dies when the nth call starts, "leave:<fn>" right after it returned
HOOKED = [
    ("enter:plan", 1),  # validated nothing yet
    ("leave:plan", 1),  # validated, nothing written
    ("enter:shard_write", 1),  # the zarr group exists, no shard yet
    ("leave:shard_write", 3),  # a few CSR shards written
    ("enter:write_csc", 1),  # the CSR copy complete
    ("leave:shard_write_csc", 2),  # halfway through the CSC copy
    ("enter:ensure_layout", 1),  # while holding the "layouts" lock
    ("leave:ensure_layout", 1),  # the layout row committed
    ("enter:cell_batches", 2),  # LanceDB mid-way through writing the cell rows
    ("leave:cells_add", 1),  # every cell row committed, no dataset record: the dangerous window
    ("enter:datasets_add", 1),  # same window, from the other side
    ("leave:datasets_add", 1),  # committed: the dataset must be there, complete
]


def _run_child(root: Path, path: Path, point: str, nth: int, kill_after: float | None = None) -> int:
    process = subprocess.Popen(
        [sys.executable, str(CHILD), str(root), str(path), point, str(nth)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LANCE_LOG": "error"},
    )
    if kill_after is not None:
        assert process.stdout.readline().strip() == "ingesting"
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode in (0, -signal.SIGKILL), stderr
    return process.returncode


def _check_after_crash(template: dict[str, object], root: Path, committed: bool | None) -> None:
    """``committed``: whether the new dataset must be there; ``None`` when either is acceptable."""
    big = _expected_big(template["big"])
    atlas = RaggedAtlas.open(str(root / "db"), store=str(root / "arrays"))  # a copy, not the recorded store
    there = "big" in set(atlas.list_datasets()["uid"])
    if committed is not None:
        assert there == committed
    expected = {"base": template["base"], **({"big": big} if there else {})}
    _assert_exact(atlas, expected)
    version = atlas.snapshot()
    _assert_exact(RaggedAtlas.checkout(str(root / "db"), version, store=str(root / "arrays")), expected)

    atlas.vacuum(grace=timedelta(0))
    referenced, stored = _referenced_and_stored(atlas, root)
    assert stored == referenced  # the debris is gone, nothing referenced was touched
    assert atlas.core.tables.cells.count_rows() == sum(m.shape[0] for m in expected.values())
    _assert_exact(atlas, expected)
    if not there:  # the interrupted ingestion can simply be run again
        add_from_anndata(
            atlas,
            template["big"],
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid="big"),
            progress=False,
        )
        _assert_exact(atlas, {"base": template["base"], "big": big})
        atlas.snapshot()


@pytest.mark.parametrize(("point", "nth"), HOOKED, ids=[f"{p}#{n}" for p, n in HOOKED])
def test_sigkill_at_a_point_of_the_ingestion(template, tmp_path, point, nth):
    root = tmp_path / "atlas"
    shutil.copytree(template["root"], root, ignore=shutil.ignore_patterns("*.h5ad"))
    assert _run_child(root, template["big"], point, nth) == -signal.SIGKILL
    _check_after_crash(template, root, committed=point == "leave:datasets_add")


@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_sigkill_from_outside_after_a_delay(template, tmp_path, delay):
    root = tmp_path / "atlas"
    shutil.copytree(template["root"], root, ignore=shutil.ignore_patterns("*.h5ad"))
    _run_child(root, template["big"], "none", 0, kill_after=delay)
    _check_after_crash(template, root, committed=None)
