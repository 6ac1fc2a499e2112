"""Concurrency: two ingesting processes, an optimizer and a snapshot reader at once; then two snapshots.

No process may fail, no cell may be lost or duplicated, every feature keeps exactly one ``global_index``
(both writers register some of the same new genes), and the reader's answers from its pinned snapshot never
change while the writers and the optimizer commit underneath it. Two concurrent ``snapshot()`` calls get
distinct versions that both check out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.synthetic import write_synthetic_h5ad
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

CHILD = Path(__file__).with_name("concurrent_child.py")
GENES = [f"g{i}" for i in range(1_000)]
CONTESTED = [f"new{i}" for i in range(50)]  # registered by both writers at the same time


class Gene(FeatureBaseSchema):
    pass


class Cell(LancellBaseSchema):
    cell_type: str | None = None
    gene_expression: SparseZarrPointer | None = None


def _start(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LANCE_LOG": "error"},
    )


def _finish(process: subprocess.Popen[str]) -> dict[str, object]:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _files(root: Path, prefix: str, seed: int) -> list[Path]:
    own = [f"{prefix}_gene{i}" for i in range(100)]
    paths = []
    for i in range(2):
        path = root / f"{prefix}{i}.h5ad"
        write_synthetic_h5ad(path, 3_000, GENES + CONTESTED + own, nnz_per_cell=120, seed=seed + i)
        paths.append(path)
    return paths


def test_two_writers_an_optimizer_and_a_reader(tmp_path):
    root = tmp_path / "atlas"
    store = str(root / "arrays")
    atlas = RaggedAtlas.create(
        str(root / "db"), "cells", Cell, store=store, registry_schemas={"gene_expression": Gene}
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    base = tmp_path / "base.h5ad"
    write_synthetic_h5ad(base, 2_000, GENES, nnz_per_cell=120, seed=1)
    add_from_anndata(
        atlas,
        base,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="base"),
        progress=False,
    )
    pinned = atlas.snapshot()
    files = {"a": _files(tmp_path, "a", 10), "b": _files(tmp_path, "b", 20)}
    stop = tmp_path / "stop"

    reader = _start("read", root, stop, pinned)
    optimizer = _start("optimize", root, stop)
    writers = [_start("ingest", root, prefix, *paths) for prefix, paths in files.items()]
    for writer in writers:
        assert _finish(writer) == {"ingested": 2}
    stop.touch()
    optimized = _finish(optimizer)
    read = _finish(reader)
    assert optimized["optimized"] >= 1
    assert read["rounds"] >= 2 and len(read["answers"]) == 1, read  # the pinned snapshot never changed

    atlas = RaggedAtlas.open(str(root / "db"), store=store)
    assert atlas.validate() == []
    expected = {"base": base}
    expected |= {f"{p}{i}": path for p, paths in files.items() for i, path in enumerate(paths)}
    assert sorted(atlas.list_datasets()["uid"]) == sorted(expected)
    adata = atlas.query().to_anndata()
    assert adata.n_obs == adata.obs_names.nunique() == 2_000 + 4 * 3_000  # nothing lost, nothing twice
    for uid, path in expected.items():
        source = ad.read_h5ad(path)
        rows = [f"{uid}:{name}" for name in source.obs_names]
        got = adata[rows, source.var_names].X
        assert (sp.csr_matrix(got) != sp.csr_matrix(source.X).astype(got.dtype)).nnz == 0, uid
    registry = atlas.feature_registry("gene_expression")
    assert registry["uid"].is_unique and registry["global_index"].is_unique
    assert len(registry) == len(GENES) + len(CONTESTED) + 2 * 100
    assert np.array_equal(np.sort(registry["global_index"].to_numpy()), np.arange(len(registry)))

    snapshots = [_start("snapshot", root) for _ in range(2)]
    versions = [_finish(process)["version"] for process in snapshots]
    assert len(set(versions)) == 2 and pinned not in versions
    for version in versions:
        view = RaggedAtlas.checkout(str(root / "db"), version, store=store)
        assert view.query().count() == adata.n_obs
