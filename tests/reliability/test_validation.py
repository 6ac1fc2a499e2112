"""``validate()`` finds damage a writer bug could leave: duplicated cell rows, counts that disagree."""

from __future__ import annotations

import os
import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell import cell_tallies
from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.errors import DatasetNotFoundError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord


def _atlas_with_cells(tmp_path, n_cells: int, uids: tuple[str, ...] = ("d",)) -> RaggedAtlas:
    """An atlas of 20 genes holding one dataset of ``n_cells`` cells per uid (the same matrix)."""
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    genes = [f"g{i}" for i in range(20)]
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    x = sp.csr_matrix(np.arange(n_cells * 20, dtype=np.int32).reshape(n_cells, 20) % 3)
    for uid in uids:
        obs = pd.DataFrame(index=[f"{uid}_{i}" for i in range(n_cells)])
        add_from_anndata(
            atlas,
            ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes)),
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=uid),
            on_duplicate="allow",
            progress=False,
        )
    return atlas


def test_duplicated_cell_rows_are_reported(tmp_path):
    atlas = _atlas_with_cells(tmp_path, 10)
    assert atlas.validate() == []
    cells = atlas.core.tables.cells
    cells.add(cells.search().limit(2).to_arrow())  # two rows written twice
    problems = atlas.validate()
    assert "cell uids are not unique" in problems
    assert any("record says 10 cells, 12 cells point into" in p for p in problems)


def test_one_dataset_is_checked_alone(tmp_path):
    atlas = _atlas_with_cells(tmp_path, 10, ("d1", "d10"))  # one uid is a prefix of the other
    cells = atlas.core.tables.cells
    cells.add(cells.search().where("dataset_uid = 'd10'").limit(2).to_arrow())  # d10's rows written twice
    assert atlas.validate(dataset_uid="d1") == []
    problems = atlas.validate(dataset_uid="d10")
    assert "cell uids are not unique" in problems
    assert "dataset 'd10': record says 10 cells, 12 cells point into" in "; ".join(problems)
    assert all("'d1'" not in p for p in atlas.validate())  # the whole atlas: only d10 is named
    with pytest.raises(DatasetNotFoundError, match="'d2'"):
        atlas.validate(dataset_uid="d2")


def test_uid_check_in_spilled_buckets_finds_duplicates(tmp_path, monkeypatch):
    atlas = _atlas_with_cells(tmp_path, 30)
    monkeypatch.setattr(cell_tallies, "BUCKET_CELLS", 4)  # 30 cells: 8 buckets on disk
    spilled = []
    add = cell_tallies.HashBuckets.add

    def recording_add(self, hashes):
        add(self, hashes)
        spilled.append(sorted(os.path.getsize(p) for p in self.paths if os.path.exists(p)))

    monkeypatch.setattr(cell_tallies.HashBuckets, "add", recording_add)
    assert atlas.validate() == []
    assert sum(spilled[-1]) == 30 * 8 and len(spilled[-1]) > 1  # every hash written, in several buckets
    cells = atlas.core.tables.cells
    cells.add(cells.search().limit(3).to_arrow())
    assert "cell uids are not unique" in atlas.validate()


def test_repeated_hashes_are_found_in_one_or_many_buckets(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 10_000, dtype=np.uint64)
    twice = hashes[[5, 77, 9_000]]
    for bucket_cells, n_buckets in ((1 << 22, 1), (1_000, 11)):
        monkeypatch.setattr(cell_tallies, "BUCKET_CELLS", bucket_cells)
        folder = tmp_path / f"b{n_buckets}"
        folder.mkdir()
        buckets = cell_tallies.HashBuckets(10_003, str(folder))
        assert buckets.n_buckets == n_buckets
        for part in np.array_split(np.concatenate([hashes, twice]), 7):
            buckets.add(part)
        assert np.array_equal(np.sort(buckets.repeated()), np.sort(twice))


def test_colliding_hashes_of_distinct_uids_are_not_a_problem(tmp_path, monkeypatch):
    atlas = _atlas_with_cells(tmp_path, 12)
    monkeypatch.setattr(cell_tallies, "BUCKET_CELLS", 5)
    monkeypatch.setattr(cell_tallies, "_uid_hashes", lambda uids: np.full(len(uids), 7, dtype=np.uint64))
    assert atlas.validate() == []  # every hash collides; the exact check finds 12 distinct uids
    cells = atlas.core.tables.cells
    cells.add(cells.search().limit(1).to_arrow())
    assert "cell uids are not unique" in atlas.validate()


def test_sorting_memory_follows_the_bucket_not_the_cells(tmp_path, monkeypatch):
    monkeypatch.setattr(cell_tallies, "BUCKET_CELLS", 50_000)
    buckets = cell_tallies.HashBuckets(2_000_000, str(tmp_path))  # 40 buckets of ~50k hashes
    rng = np.random.default_rng(1)
    for _ in range(40):
        buckets.add(rng.integers(0, 2**63, 50_000, dtype=np.uint64))
    tracemalloc.start()
    assert buckets.repeated().size == 0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 60_000 * 8  # a bucket and its temporaries (~1.3 MB), not the 16 MB of all hashes


def test_a_data_file_missing_from_the_cell_table_is_a_problem_not_a_lance_error(tmp_path):
    """A data file of cells.lance removed by hand: validate() raised Lance's untyped RuntimeError ("lance
    error: Not found"), and the Dagster checks were never recorded. It is listed, with the other problems
    (the checks that need no cell rows still run), and snapshot() refuses with them."""
    import shutil

    from lancell.errors import ValidationError

    atlas = _atlas_with_cells(tmp_path, 5, ("a", "b"))
    data = sorted((tmp_path / "db" / "cells.lance" / "data").glob("*.lance"))
    data[0].unlink()
    group = atlas.list_datasets().set_index("uid").loc["b", "zarr_group"]
    shutil.rmtree(tmp_path / "arrays" / group / "csr" / "indices")
    problems = atlas.validate()
    assert len(problems) == 2, problems
    assert problems[0].startswith("a table cannot be read, a data file of its version is missing: ")
    assert "Not found" in problems[0] and ".rs:" not in problems[0]
    assert problems[1] == (
        "dataset 'b': array 'csr/indices' is missing from the store (no zarr.json): readers of the dataset "
        "read it"
    )
    with pytest.raises(ValidationError, match="a table cannot be read"):
        atlas.snapshot()
