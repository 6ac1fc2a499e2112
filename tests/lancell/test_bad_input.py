"""A failure injected after the first write rolls back; re-registering features is idempotent; the bundled
data ingests cleanly. The bad-input corpus (typed errors, an unchanged atlas) is in
tests/reliability/test_bad_input_corpus.py.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import visible_state

import lancell.ingest.cell_rows as cell_rows
import lancell.ingest.write_transaction as write_transaction
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, ingest_bundled
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class StrictCells(LancellBaseSchema):
    donor: str
    age: int | None = None
    cell_type: str | None = None
    gene_expression: SparseZarrPointer | None = None


GENES = [f"G{i}" for i in range(40)]


def _good(n_cells: int = 30, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, len(GENES), density=0.3, format="csr", random_state=rng)
    x.data = rng.integers(1, 20, size=x.nnz).astype(np.float64)
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical(rng.choice(["d1", "d2"], n_cells)),
            "age": rng.integers(20, 80, n_cells),
            "cell_type": pd.Categorical(rng.choice(["T", "B", None], n_cells)),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    return ad.AnnData(X=x.astype(np.int32), obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture
def strict_atlas(tmp_path) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        StrictCells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    add_from_anndata(
        atlas,
        _good(seed=1),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="existing"),
        progress=False,
    )
    atlas.snapshot()
    return atlas


def test_failure_after_zarr_write_rolls_back(strict_atlas, monkeypatch):
    before = visible_state(strict_atlas)
    table = strict_atlas.core.tables.datasets

    def broken_add(*args, **kwargs):
        raise OSError("disk full while writing the dataset row")

    monkeypatch.setattr(table, "add", broken_add)
    with pytest.raises(OSError, match="disk full"):
        add_from_anndata(
            strict_atlas,
            _good(),
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid="doomed"),
            progress=False,
        )
    monkeypatch.undo()
    assert visible_state(strict_atlas) == before
    strict_atlas.snapshot()


@pytest.fixture
def small_commits(monkeypatch):
    """Cell rows built 4 at a time and committed 8 at a time: a 30-cell dataset takes 4 commits."""
    monkeypatch.setattr(cell_rows, "CELL_BATCH", 4)
    monkeypatch.setattr(write_transaction, "CELL_BATCH", 4)
    monkeypatch.setattr(write_transaction, "ROWS_PER_COMMIT", 8)


def test_cell_rows_in_several_commits_are_all_stored_once(strict_atlas, small_commits):
    cells = strict_atlas.core.tables.cells
    version = cells.version
    add_from_anndata(
        strict_atlas,
        _good(),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="several"),
        progress=False,
    )
    assert cells.version == version + 4  # 8 + 8 + 8 + 6 rows
    adata = strict_atlas.query().where("dataset_uid = 'several'").to_anndata()
    assert sorted(adata.obs_names) == sorted(f"several:cell{i}" for i in range(30))
    np.testing.assert_array_equal(
        adata[[f"several:cell{i}" for i in range(30)]].X.toarray(), _good().X.toarray()
    )
    assert strict_atlas.validate() == []


def test_a_failed_later_commit_of_cell_rows_rolls_back_the_earlier_ones(
    strict_atlas, small_commits, monkeypatch
):
    before = visible_state(strict_atlas)
    rows_before = strict_atlas.core.tables.cells.count_rows()
    table = strict_atlas.core.tables.cells
    add = table.add
    commits = []

    def failing_second_add(*args, **kwargs):
        if commits:
            raise OSError("disk full while writing cell rows")
        commits.append(add(*args, **kwargs))

    monkeypatch.setattr(table, "add", failing_second_add)
    with pytest.raises(OSError, match="disk full"):
        add_from_anndata(
            strict_atlas,
            _good(),
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid="doomed"),
            progress=False,
        )
    monkeypatch.undo()
    assert len(commits) == 1
    assert strict_atlas.core.tables.cells.count_rows() == rows_before  # the first commit's 8 rows deleted
    assert visible_state(strict_atlas) == before
    strict_atlas.snapshot()


def test_register_features_is_idempotent(atlas, all_genes):
    registry = atlas.feature_registry("gene_expression")
    assert atlas.register_features("gene_expression", all_genes) == 0
    assert atlas.feature_registry("gene_expression").equals(registry)
    assert registry["global_index"].tolist() == list(range(len(registry)))
    assert atlas.register_features("gene_expression", pd.DataFrame({"uid": ["x"], "gene_symbol": ["X"]})) == 1
    assert atlas.feature_registry("gene_expression")["global_index"].iloc[-1] == len(registry)


def test_bundled_ingest_is_valid(atlas):
    for dataset in BUNDLED:
        ingest_bundled(atlas, dataset)
    assert atlas.validate() == []
