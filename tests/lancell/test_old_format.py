"""Today's code on an atlas written by an older lancell (commit bd88d86, ``tests/data/atlas_bd88d86``).

That atlas predates the ``layers``, ``content_fingerprint`` and ``dropped_obs_columns`` dataset columns, the
``obs_name`` cell column, the ``atlas_id`` of ``atlas.json``, the ``lancell_atlas_id`` group attribute and
group claims; ``old_a`` has no CSC copy (no ``csc_layers``), ``old_b`` has one; ``old_c`` is an ingestion
killed at its commit point (a group and cell rows no record commits, and its dataset lock left held by a dead
process). Each test works on a copy in ``tmp_path`` and compares with ``expected.json``, which the old code
wrote from what it read back itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import anndata as ad
import numpy as np
import obstore.store
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.dataloader import CellSampler, SparseCollate, make_loader
from lancell.errors import GroupNotFoundError, IngestError, LancellWarning, StoreError
from lancell.ingest.add_csc import add_csc, require_csc_writable
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord

ARCHIVE = Path(__file__).resolve().parents[1] / "data" / "atlas_bd88d86"
EXPECTED = json.loads((ARCHIVE / "expected.json").read_text())
SPACE = "gene_expression"
NEW_GENES = [f"G{i:02d}" for i in range(12, 20)]  # G16..G19 are not in the old registry


@pytest.fixture
def old(tmp_path: Path) -> tuple[str, obstore.store.LocalStore]:
    """``(db_uri, store)`` of a fresh copy of the old atlas.

    The store is passed explicitly: ``atlas.json`` and the snapshot rows record the absolute store URL of the
    folder the generator wrote in, which no longer exists.
    """
    shutil.copytree(ARCHIVE / "db", tmp_path / "db")
    db = str(tmp_path / "db")
    return db, obstore.store.LocalStore(f"{db}/_zarr")


def _read(atlas: RaggedAtlas, uid: str, features: list[str] | None = None) -> dict[str, object]:
    """One dataset as the generator recorded it (``read_back`` in ``generate.py``)."""
    query = atlas.query().where(dataset_uid=uid).layers(SPACE, "counts")
    if features is not None:
        query = query.features(features, SPACE)
    adata = query.to_anndata()
    assert list(adata.obs.columns) == ["dataset_uid", "cell_type", "n_counts"]  # no obs_name column
    return {
        "X": np.asarray(adata.X.toarray()).tolist(),
        "dtype": str(adata.X.dtype),
        "obs_index": adata.obs_names.tolist(),
        "cell_type": adata.obs["cell_type"].astype(str).tolist(),
        "n_counts": adata.obs["n_counts"].tolist(),
        "var_uids": adata.var_names.tolist(),
    }


def _assert_snapshots(db: str, store: obstore.store.LocalStore) -> None:
    """Every old snapshot checks out with exactly the values the old code read from it."""
    for version, datasets in EXPECTED["snapshots"].items():
        pinned = RaggedAtlas.checkout(db, int(version), store=store)
        assert sorted(pinned.list_datasets()["uid"]) == sorted(datasets)
        for uid, want in datasets.items():
            assert _read(pinned, uid) == want


def _union(parts: list[tuple[list[list[int]], list[str]]], columns: list[str]) -> np.ndarray:
    """Datasets' rows stacked over the union ``columns`` (zeros where a dataset did not measure a gene)."""
    rows = []
    for x, var in parts:
        block = np.zeros((len(x), len(columns)), dtype=np.int64)
        block[:, [columns.index(v) for v in var]] = x
        rows.append(block)
    return np.vstack(rows)


def _new_dataset() -> ad.AnnData:
    rng = np.random.default_rng(7)
    dense = rng.integers(1, 40, size=(25, len(NEW_GENES))) * (rng.random((25, len(NEW_GENES))) < 0.5)
    obs = pd.DataFrame(
        {"cell_type": ["T cell"] * 25, "n_counts": dense.sum(axis=1).astype(np.float64)},
        index=[f"new_cell{i:02d}" for i in range(25)],
    )
    return ad.AnnData(sp.csr_matrix(dense), obs=obs, var=pd.DataFrame(index=NEW_GENES))


def _ingest_new(atlas: RaggedAtlas, uid: str = "new_d") -> ad.AnnData:
    adata = _new_dataset()
    atlas.register_features(SPACE, pd.DataFrame({"uid": NEW_GENES, "gene_symbol": NEW_GENES}))
    with pytest.warns(LancellWarning, match="no content_fingerprint column.* on_duplicate is not applied"):
        add_from_anndata(
            atlas,
            adata,
            feature_space=SPACE,
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=uid),
            progress=False,
        )
    return adata


def test_old_snapshots_and_latest_read_back_exactly(old):
    db, store = old
    _assert_snapshots(db, store)
    latest = RaggedAtlas.checkout_latest(db, store=store)
    assert latest.snapshot_version == 1
    last = EXPECTED["snapshots"]["1"]
    for uid in ("old_a", "old_b"):
        assert _read(latest, uid) == last[uid]
        # by feature: old_b through its CSC copy, old_a (no copy, no csc_layers) through its rows
        chosen = ["G09", "G07", "G11"]
        got = _read(latest, uid, chosen)
        assert got["var_uids"] == chosen
        assert got["X"] == [[row[last[uid]["var_uids"].index(g)] for g in chosen] for row in last[uid]["X"]]
    both = latest.query().layers(SPACE, "counts").to_anndata()
    columns = [f"G{i:02d}" for i in range(16)]
    assert both.var_names.tolist() == columns
    parts = [(last[uid]["X"], last[uid]["var_uids"]) for uid in ("old_a", "old_b")]
    np.testing.assert_array_equal(both.X.toarray(), _union(parts, columns))
    assert both.obs_names.tolist() == last["old_a"]["obs_index"] + last["old_b"]["obs_index"]
    presence = both.varm["presence"]
    assert presence.columns.tolist() == ["old_a", "old_b"]
    assert presence["old_a"].tolist() == [i < 12 for i in range(16)]
    assert presence["old_b"].tolist() == [i >= 6 for i in range(16)]


def test_open_records_an_atlas_id_and_validate_is_clean(old):
    db, store = old
    meta_path = Path(db) / "_lancell" / "atlas.json"
    assert "atlas_id" not in json.loads(meta_path.read_text())
    assert RaggedAtlas.checkout_latest(db, store=store).validate() == []
    atlas = RaggedAtlas.open(db, store=store)
    atlas_id = json.loads(meta_path.read_text())["atlas_id"]
    assert atlas.atlas_id == atlas_id and len(atlas_id) == 32
    assert RaggedAtlas.open(db, store=store).atlas_id == atlas_id  # recorded once
    assert atlas.validate() == []  # the old groups name no atlas; old_c's rows are invisible debris
    assert atlas.query().count() == 70


def test_list_datasets_and_ls_show_the_old_records_layer(old, tmp_path):
    db, store = old
    for atlas in (RaggedAtlas.open(db, store=store), RaggedAtlas.checkout(db, 0, store=store)):
        frame = atlas.list_datasets()
        assert "layers" in frame.columns and "content_fingerprint" not in frame.columns
        assert {uid: list(layers) for uid, layers in zip(frame["uid"], frame["layers"], strict=True)} == {
            uid: [record["layer"]] for uid, record in EXPECTED["datasets"].items() if uid in set(frame["uid"])
        }
    counts = RaggedAtlas.open(db, store=store).query().count(group_by="dataset_uid")
    assert counts["cells"].to_dict() == {"old_a": 40, "old_b": 30}
    assert counts["layers"].to_dict() == {"old_a": ["counts"], "old_b": ["counts"]}
    # the console script opens the store recorded in atlas.json, the generator's folder, long gone: refused
    # (it was created empty), then pointed at the copy, as moving an atlas takes today (the snapshot rows
    # keep the old URL; ls reads none of them)
    meta_path = Path(db) / "_lancell" / "atlas.json"
    meta = json.loads(meta_path.read_text())
    lancell = Path(sys.executable).with_name("lancell")
    refused = subprocess.run([str(lancell), "ls", db], capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and f"the zarr store {meta['store_url']} that" in refused.stderr
    assert not Path(meta["store_url"].removeprefix("file://")).parent.exists()
    for version in (None, 0):
        with pytest.raises(StoreError, match="was the atlas moved or copied"):
            RaggedAtlas.open(db) if version is None else RaggedAtlas.checkout(db, version)
    meta_path.write_text(json.dumps({**meta, "store_url": (Path(db) / "_zarr").as_uri()}))
    listing = subprocess.run([str(lancell), "ls", db], capture_output=True, text=True, check=True).stdout
    lines = [line.split() for line in listing.strip().splitlines()]
    assert lines[0] == ["uid", "feature_space", "layers", "n_cells", "n_features", "nnz"]  # no modality
    assert lines[1:] == [
        ["old_a", SPACE, "[counts]", "40", "12", "202"],
        ["old_b", SPACE, "[counts]", "30", "10", "126"],
        ["2", "datasets,", "70", "cells"],
    ]
    command = [str(lancell), "delete", db, "old_a"]
    deleted = subprocess.run(command, capture_output=True, text=True, check=True)
    # (its group was written before claims: vacuum never deletes it, and delete does not say it will)
    assert deleted.stdout.strip() == (
        "old_a: deleted; snapshots keep it, its group stays (this atlas cannot prove it its own: vacuum "
        "leaves it)"
    )
    group = Path(db) / "_zarr" / EXPECTED["datasets"]["old_b"]["zarr_group"] / "zarr.json"
    meta = json.loads(group.read_text())
    meta["attributes"].pop("csc_layers", None)  # as if written without the copy
    group.write_text(json.dumps(meta))
    command = [str(lancell), "add-csc", db, "--all"]  # old_b's group cannot get a copy: named, not an error
    added = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert added.startswith("old_b: no CSC copy written (their groups were written before this atlas")


def test_new_dataset_reads_back_with_the_old_ones_and_snapshots(old):
    db, store = old
    atlas = RaggedAtlas.open(db, store=store)
    adata = _ingest_new(atlas)
    atlas.optimize()
    assert atlas.snapshot(note="today") == 2
    frame = atlas.list_datasets().set_index("uid")
    assert list(frame.loc["new_d", "layers"]) == ["counts"] and frame.loc["new_d", "layer"] == "counts"
    last = EXPECTED["snapshots"]["1"]
    columns = [f"G{i:02d}" for i in range(20)]
    parts = [(last[uid]["X"], last[uid]["var_uids"]) for uid in ("old_a", "old_b")]
    parts.append((adata.X.toarray().tolist(), NEW_GENES))
    for handle in (atlas, RaggedAtlas.checkout(db, 2, store=store)):
        union = handle.query().layers(SPACE, "counts").to_anndata()
        assert union.var_names.tolist() == columns and union.X.dtype == np.int64
        np.testing.assert_array_equal(union.X.toarray(), _union(parts, columns))
        new_names = [f"new_d:{name}" for name in adata.obs_names]
        assert union.obs_names.tolist() == last["old_a"]["obs_index"] + last["old_b"]["obs_index"] + new_names
        assert union.obs["n_counts"].tolist()[70:] == adata.obs["n_counts"].tolist()
    assert atlas.validate() == []
    _assert_snapshots(db, store)


def test_vacuum_deletes_nothing_old_and_old_snapshots_still_check_out(old):
    db, store = old
    groups = sorted(p.name for p in (Path(db) / "_zarr").iterdir() if p.is_dir())
    debris = EXPECTED["debris"]["zarr_group"]
    assert groups == sorted([*(r["zarr_group"] for r in EXPECTED["datasets"].values()), debris])
    atlas = RaggedAtlas.open(db, store=store)
    # old_c's group: cell rows point into it but no record commits it, and this atlas never claimed it
    assert atlas.vacuum(grace=timedelta(0)) == {"groups": 0, "cells": 0, "unclaimed": 1, "foreign": 0}
    atlas.delete_dataset("old_a")  # its group stays: both snapshots reference it
    _ingest_new(atlas, "new_d")
    atlas.delete_dataset("new_d")  # a group today's code claimed and nothing references: debris
    removed = atlas.vacuum(grace=timedelta(0))
    assert removed == {"groups": 1, "cells": 0, "unclaimed": 1, "foreign": 0}
    assert sorted(p.name for p in (Path(db) / "_zarr").iterdir() if p.is_dir()) == groups
    assert atlas.validate() == []
    assert atlas.query().count(group_by="dataset_uid")["cells"].to_dict() == {"old_b": 30}
    _assert_snapshots(db, store)


def test_crashed_old_ingestion_is_replaced_by_a_new_one(old):
    db, store = old
    debris = EXPECTED["debris"]
    assert (Path(db) / "_lancell" / "locks").is_dir()  # its dataset lock, held by a process long gone
    atlas = RaggedAtlas.open(db, store=store)
    adata = _ingest_new(atlas, debris["dataset_uid"])  # takes the dead holder's lock, drops its rows
    got = _read(atlas, debris["dataset_uid"])
    assert got["X"] == adata.X.toarray().tolist() and got["var_uids"] == NEW_GENES
    assert atlas.query().count() == 70 + adata.n_obs
    assert atlas.vacuum(grace=timedelta(0)) == {"groups": 0, "cells": 0, "unclaimed": 0, "foreign": 0}
    assert (Path(db) / "_zarr" / debris["zarr_group"]).is_dir()  # never claimed: never deleted
    assert atlas.validate() == []


def test_old_groups_are_not_rewritten(old):
    """add_csc writes into a dataset's group only when this atlas can prove it its own, and says so before
    any dataset is written (``require_csc_writable``); a group with every copy is only read."""
    db, store = old
    atlas = RaggedAtlas.open(db, store=store)
    with pytest.raises(GroupNotFoundError, match=r"'old_a'.* is not claimed by this atlas"):
        add_csc(atlas, "old_a")
    with pytest.raises(GroupNotFoundError, match=r"'old_a'.* is not claimed by this atlas"):
        require_csc_writable(atlas, ["old_b", "old_a"])
    assert add_csc(atlas, "old_b") == []  # its copy is there: nothing to write
    assert not (Path(db) / "_zarr" / EXPECTED["datasets"]["old_a"]["zarr_group"] / "csc").exists()
    _assert_snapshots(db, store)
    assert atlas.validate() == []


def test_loader_reads_old_datasets_as_to_anndata(old):
    db, store = old
    query = RaggedAtlas.checkout_latest(db, store=store).query().layers(SPACE, "counts")
    want = sp.csr_matrix(query.to_anndata().X)
    dataset = query.to_cell_dataset(SPACE, "counts")
    loader = make_loader(
        dataset, CellSampler(dataset, 16, mode="random", seed=3), collate_fn=SparseCollate(None)
    )
    order, rows = [], []
    for batch in loader:
        x = batch["X"]
        crow, col, values = x.crow_indices().numpy(), x.col_indices().numpy(), x.values().numpy()
        rows.append(sp.csr_matrix((values, col, crow), shape=tuple(x.shape)))
        order.append(batch["index"].numpy())
    order = np.concatenate(order)
    assert sorted(order.tolist()) == list(range(70))
    got = sp.csr_matrix(sp.vstack(rows, format="csr")[np.argsort(order)])
    assert got.dtype == want.dtype == np.int64
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)


def test_atlas_resource_serves_the_old_atlas(old):
    """The Dagster resource opens it (its cell table lacks ``obs_name``) and checks out its snapshots."""
    from resources.atlas import AtlasResource

    db, _ = old
    resource = AtlasResource(
        db_uri=db, store_url=f"{db}/_zarr", cell_schema="lancell.tables.schema:LancellBaseSchema"
    )
    assert resource.open().query().count() == 70
    assert resource.list_versions()["version"].tolist() == [0, 1]
    assert _read(resource.checkout(0), "old_a") == EXPECTED["snapshots"]["0"]["old_a"]


def test_add_layer_is_refused_by_the_old_dataset_table(old):
    """The table has no ``layers`` column to commit a new layer by: refused before anything is written."""
    db, store = old
    atlas = RaggedAtlas.open(db, store=store)
    adata = _ingest_new(atlas)
    group = Path(db) / "_zarr" / atlas.list_datasets().set_index("uid").loc["new_d", "zarr_group"]
    attrs = json.loads((group / "zarr.json").read_text())["attributes"]
    for uid, matrix in [("new_d", adata.X / 2), ("old_b", sp.csr_matrix((30, 10)))]:
        with pytest.raises(IngestError, match=rf"dataset '{uid}'.* no 'layers' column"):
            add_layer(atlas, uid, "log_normalized", matrix)
    assert json.loads((group / "zarr.json").read_text())["attributes"] == attrs
    assert sorted(p.name for p in (group / "csr" / "layers").iterdir() if p.is_dir()) == ["counts"]
    assert atlas.validate() == []


def test_duplicate_content_is_stored_again_with_a_warning(old):
    """No ``content_fingerprint`` column to match: the same content under another uid is stored again (each
    ingestion warns, in ``_ingest_new``)."""
    db, store = old
    atlas = RaggedAtlas.open(db, store=store)
    adata = _ingest_new(atlas, "new_d")
    _ingest_new(atlas, "new_e")
    for uid in ("new_d", "new_e"):
        assert _read(atlas, uid)["X"] == adata.X.toarray().tolist()
    assert atlas.validate() == []


def test_a_dataset_of_two_layers_in_the_old_table_lists_both(old):
    """The old dataset table has no ``layers`` column: a dataset ingested with two layers read both, but
    list_datasets(), ``lancell ls`` and count(group_by="dataset_uid") showed the record's one layer."""
    db, store = old
    atlas = RaggedAtlas.open(db, store=store)
    adata = _new_dataset()
    adata.layers["normalized"] = adata.X.astype(np.float32) / 2
    atlas.register_features(SPACE, pd.DataFrame({"uid": NEW_GENES, "gene_symbol": NEW_GENES}))
    with pytest.warns(LancellWarning, match="no content_fingerprint column"):
        add_from_anndata(
            atlas,
            adata,
            feature_space=SPACE,
            layers={"counts": "X", "normalized": "normalized"},
            dataset_record=DatasetRecord(uid="two"),
            progress=False,
        )
    listed = atlas.list_datasets().set_index("uid")["layers"].map(list).to_dict()
    assert listed == {"old_a": ["counts"], "old_b": ["counts"], "two": ["counts", "normalized"]}
    counted = atlas.query().count(group_by="dataset_uid")["layers"].to_dict()
    assert counted["two"] == ["counts", "normalized"] and counted["old_a"] == ["counts"]
