"""vacuum() and the other delete paths delete only this atlas's own groups, under any store layout.

Every case ends by checking out every snapshot taken (and the live atlas) and comparing each dataset's
matrix from ``to_anndata()`` with the matrix that was ingested, value for value.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anndata as ad
import numpy as np
import obstore
import obstore.store
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr

from lancell.atlas import RaggedAtlas
from lancell.errors import (
    ArgumentError,
    DuplicateContentError,
    GroupNotFoundError,
    LancellWarning,
    StoreError,
)
from lancell.ingest.add_csc import add_csc
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage.deletion import delete_prefix
from lancell.storage.groups import ATLAS_ID_ATTR, SparseGroupWriter
from lancell.storage.stores import location_in_store
from lancell.synthetic import synthetic_counts
from lancell.tables.locks import atlas_lock
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer
from lancell.tables.visibility import dataset_lock_name

GENES = [f"g{i}" for i in range(40)]
NOTHING = {"groups": 0, "cells": 0, "unclaimed": 0, "foreign": 0}

Store = obstore.store.LocalStore | str | None


class Gene(FeatureBaseSchema):
    pass


class Cell(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def new_atlas(db_uri: Path, store: Store) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(db_uri), "cells", Cell, store=store, registry_schemas={"gene_expression": Gene}
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    return atlas


def counts(seed: int, n_cells: int = 30) -> sp.csr_matrix:
    return synthetic_counts(n_cells, len(GENES), 8, np.random.default_rng(seed))


def ingest(atlas: RaggedAtlas, uid: str, x: sp.csr_matrix) -> DatasetRecord:
    obs = pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])])
    return add_from_anndata(
        atlas,
        ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=GENES)),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid=uid),
        progress=False,
    )


def assert_exact(atlas: RaggedAtlas, expected: dict[str, sp.csr_matrix]) -> None:
    """The atlas holds exactly ``expected``: dataset uid -> matrix as ingested (rows in obs order)."""
    assert atlas.validate() == []
    adata = atlas.query().to_anndata()
    assert list(adata.var_names) == GENES
    datasets = adata.obs["dataset_uid"].to_numpy()
    assert sorted(set(datasets)) == sorted(expected)
    for uid, x in expected.items():
        rows = np.flatnonzero(datasets == uid)
        order = np.argsort([int(name.rsplit(":", 1)[1][1:]) for name in adata.obs_names[rows]])
        got = sp.csr_matrix(adata.X[rows[order]])
        assert got.shape == x.shape, uid
        assert (got != x.astype(got.dtype)).nnz == 0, uid


def assert_snapshots(db_uri: Path, snapshots: dict[int, dict[str, sp.csr_matrix]]) -> None:
    """Every snapshot checks out and holds exactly what it held when it was taken."""
    assert RaggedAtlas.list_versions(str(db_uri))["version"].tolist() == sorted(snapshots)
    for version, expected in snapshots.items():
        assert_exact(RaggedAtlas.checkout(str(db_uri), version), expected)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_foreign(root: Path) -> None:
    """Things in the store that no atlas wrote: a note, and another project's zarr group."""
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "readme.txt").write_text("not lancell's")
    other = zarr.open_group(str(root / "other_project" / "x.zarr"), mode="w")
    other.attrs["lancell_format"] = 1  # looks like a lancell group, carries no atlas id
    other.create_array("values", shape=(5,), dtype="int32")[:] = np.arange(5)


def test_a_new_atlas_given_another_atlass_store_is_warned_and_leaves_its_groups(tmp_path: Path) -> None:
    # `lancell init --store` at another atlas's store was accepted without a word
    arrays = tmp_path / "arrays"
    first = new_atlas(tmp_path / "first", str(arrays))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty store: nothing to say
        new_atlas(tmp_path / "empty_store_user", str(tmp_path / "arrays_2"))
    x = counts(0)
    kept = ingest(first, "a", x)
    with pytest.warns(
        LancellWarning, match=rf"already holds groups of another atlas \('{kept.zarr_group}'\)"
    ):
        second = new_atlas(tmp_path / "second", str(arrays))
    RaggedAtlas.open(str(tmp_path / "first"), store=str(arrays))  # records that it writes the store
    with pytest.warns(LancellWarning, match=r"written by the atlas at file://.*/first\)"):
        third = new_atlas(tmp_path / "third", str(arrays))
    for other in (second, third):
        assert other.vacuum(grace=timedelta(0)) == NOTHING
    (arrays / "odd").mkdir()
    (arrays / "odd" / "zarr.json").write_text("[1]")  # JSON, but no group's: not read as one (it raised)
    (arrays / kept.zarr_group / "zarr.json").rename(arrays / "kept.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new_atlas(tmp_path / "fourth", str(arrays))
    (arrays / "kept.json").rename(arrays / kept.zarr_group / "zarr.json")
    assert_exact(RaggedAtlas.open(str(tmp_path / "first")), {"a": x})


def test_store_root_one_level_above_db_uri(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    db_uri = root / "atlas.lancedb"
    atlas = new_atlas(db_uri, obstore.store.LocalStore(prefix=root))
    x = {uid: counts(seed) for seed, uid in enumerate(["a", "b", "c", "d"])}
    ingest(atlas, "a", x["a"])
    ingest(atlas, "b", x["b"])
    v0 = atlas.snapshot()
    atlas.delete_dataset("b")
    ingest(atlas, "c", x["c"])
    v1 = atlas.snapshot()
    gone = ingest(atlas, "d", x["d"])
    atlas.delete_dataset("d")  # in no snapshot: its group is debris

    assert location_in_store(atlas.store, str(db_uri)) == "atlas.lancedb"
    assert atlas.vacuum(grace=timedelta(0)) == {**NOTHING, "groups": 1}
    assert atlas.vacuum(grace=timedelta(0)) == NOTHING
    assert (root / "atlas.lancedb" / "_lancell" / "atlas.json").is_file()
    assert not (root / gone.zarr_group).exists()
    assert [claim.dataset_uid for claim in atlas.group_claims.list()] == ["a", "b", "c"]
    assert_exact(RaggedAtlas.open(str(db_uri)), {"a": x["a"], "c": x["c"]})
    assert_snapshots(db_uri, {v0: {"a": x["a"], "b": x["b"]}, v1: {"a": x["a"], "c": x["c"]}})


def test_foreign_folders_in_the_store_survive(tmp_path: Path) -> None:
    arrays = tmp_path / "arrays"
    atlas = new_atlas(tmp_path / "db", str(arrays))
    write_foreign(arrays)
    foreign = tree(arrays / "notes") | tree(arrays / "other_project")
    x = {uid: counts(seed) for seed, uid in enumerate(["a", "b"])}
    ingest(atlas, "a", x["a"])
    v0 = atlas.snapshot()
    ingest(atlas, "b", x["b"])
    atlas.delete_dataset("b")

    assert atlas.vacuum(grace=timedelta(0)) == {**NOTHING, "groups": 1}
    assert tree(arrays / "notes") | tree(arrays / "other_project") == foreign
    assert sorted(p.name for p in arrays.iterdir()) == sorted(
        ["zarr.json", "notes", "other_project", *atlas.list_datasets()["zarr_group"]]
    )
    assert_snapshots(tmp_path / "db", {v0: {"a": x["a"]}})


def test_two_atlases_sharing_one_store_prefix(tmp_path: Path) -> None:
    store = obstore.store.LocalStore(prefix=tmp_path / "arrays", mkdir=True)
    first, second = new_atlas(tmp_path / "first", store), new_atlas(tmp_path / "second", store)
    assert first.atlas_id != second.atlas_id
    x = {uid: counts(seed) for seed, uid in enumerate(["a1", "a2", "b1", "b2", "b3", "b4"])}
    ingest(first, "a1", x["a1"])
    ingest(first, "a2", x["a2"])
    a0 = first.snapshot()
    first.delete_dataset("a2")  # deleted, kept for snapshot a0
    ingest(second, "b1", x["b1"])
    ingest(second, "b2", x["b2"])
    b0 = second.snapshot()
    second.delete_dataset("b2")  # deleted, kept for snapshot b0
    ingest(second, "b3", x["b3"])
    b4 = ingest(second, "b4", x["b4"])
    second.delete_dataset("b4")  # deleted, in no snapshot: the second atlas's debris
    second_files = tree(tmp_path / "arrays")

    assert first.vacuum(grace=timedelta(0)) == NOTHING
    assert tree(tmp_path / "arrays") == second_files
    assert_snapshots(tmp_path / "second", {b0: {"b1": x["b1"], "b2": x["b2"]}})
    assert_exact(second, {"b1": x["b1"], "b3": x["b3"]})

    assert second.vacuum(grace=timedelta(0)) == {**NOTHING, "groups": 1}
    assert not (tmp_path / "arrays" / b4.zarr_group).exists()
    assert_snapshots(tmp_path / "first", {a0: {"a1": x["a1"], "a2": x["a2"]}})
    assert_exact(first, {"a1": x["a1"]})
    assert_snapshots(tmp_path / "second", {b0: {"b1": x["b1"], "b2": x["b2"]}})
    assert_exact(second, {"b1": x["b1"], "b3": x["b3"]})


def _age(atlas: RaggedAtlas, arrays: Path, group: str, hours: float, field: str) -> None:
    """Make ``group``'s files and its claim's ``field`` (and the claim file itself) ``hours`` old."""
    then = datetime.now(UTC) - timedelta(hours=hours)
    for path in (arrays / group).rglob("*"):
        os.utime(path, (then.timestamp(), then.timestamp()))
    claim = f"_lancell/groups/{group}.json"
    meta = atlas.group_claims.meta_store
    body = json.loads(bytes(obstore.get(meta, claim).bytes()))
    obstore.put(meta, claim, json.dumps({**body, field: then.isoformat()}).encode())
    os.utime(Path(atlas.db_uri) / claim, (then.timestamp(), then.timestamp()))


def test_grace_counts_from_the_deletion(tmp_path: Path) -> None:
    """A group written long ago whose dataset was deleted a moment ago stays for ``grace``: a reader that
    selected its cells before the deletion reads on (grace used to count from the claim only)."""
    atlas = new_atlas(tmp_path / "db", str(tmp_path / "arrays"))
    x = counts(0)
    record = ingest(atlas, "a", x)
    _age(atlas, tmp_path / "arrays", record.zarr_group, 2, "created_at")
    atlas.delete_dataset("a")
    assert atlas.vacuum(grace=timedelta(hours=1)) == NOTHING
    assert (tmp_path / "arrays" / record.zarr_group / "zarr.json").is_file()
    _age(atlas, tmp_path / "arrays", record.zarr_group, 2, "released_at")
    assert atlas.vacuum(grace=timedelta(hours=1)) == {**NOTHING, "groups": 1}
    assert not (tmp_path / "arrays" / record.zarr_group).exists()


def test_grace_holds_when_the_deleting_hosts_clock_ran_behind(tmp_path: Path) -> None:
    """A deletion on a host whose clock ran two hours behind recorded an early ``released_at``: vacuum()
    with the default grace on a right clock deleted the group at once, under a reader still streaming it.
    The claim file's time by the store's clock counts too."""
    atlas = new_atlas(tmp_path / "db", str(tmp_path / "arrays"))
    record = ingest(atlas, "a", counts(0))
    _age(atlas, tmp_path / "arrays", record.zarr_group, 3, "created_at")
    atlas.delete_dataset("a")
    claim = f"_lancell/groups/{record.zarr_group}.json"
    meta = atlas.group_claims.meta_store
    body = json.loads(bytes(obstore.get(meta, claim).bytes()))
    early = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    obstore.put(meta, claim, json.dumps({**body, "released_at": early}).encode())  # as that host wrote it
    with pytest.warns(LancellWarning, match="kept until 1:00:00 after their deletion"):
        assert atlas.vacuum(grace=timedelta(hours=1)) == NOTHING
    assert (tmp_path / "arrays" / record.zarr_group / "zarr.json").is_file()


def test_a_deletion_landing_while_vacuum_runs_keeps_its_grace(tmp_path: Path, monkeypatch) -> None:
    """A delete_dataset right after vacuum() listed the claims: vacuum judged the group on the claim it had
    listed (no deletion time) and deleted it at once, under readers the grace of a day should have kept."""
    import lancell.maintenance

    atlas = new_atlas(tmp_path / "db", str(tmp_path / "arrays"))
    record = ingest(atlas, "a", counts(0))
    _age(atlas, tmp_path / "arrays", record.zarr_group, 48, "created_at")
    real = lancell.maintenance._live_groups
    deleted: list[bool] = []

    def deletion_lands(core):
        if not deleted:
            deleted.append(True)
            RaggedAtlas.open(atlas.db_uri).delete_dataset("a")
        return real(core)

    monkeypatch.setattr(lancell.maintenance, "_live_groups", deletion_lands)
    assert atlas.vacuum(grace=timedelta(days=1))["groups"] == 0
    assert (tmp_path / "arrays" / record.zarr_group / "zarr.json").is_file()


def test_debris_goes_after_grace_and_snapshot_groups_stay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    atlas = new_atlas(tmp_path / "db", str(tmp_path / "arrays"))
    x = {uid: counts(seed) for seed, uid in enumerate(["a", "b", "d", "e"])}
    ingest(atlas, "a", x["a"])
    kept = ingest(atlas, "b", x["b"])
    v0 = atlas.snapshot()
    atlas.delete_dataset("b")  # v0 references its group
    deleted = ingest(atlas, "d", x["d"])
    atlas.delete_dataset("d")
    # an interrupted ingestion: the claim, a group written half-way, no record
    interrupted = atlas.group_claims.claim_new("e")
    writer = SparseGroupWriter(
        atlas.core.zarr_root,
        interrupted,
        n_cells=30,
        n_features=len(GENES),
        nnz=x["e"].nnz,
        layers={"counts": np.dtype("uint32")},
        atlas_id=atlas.atlas_id,
    )
    end = x["e"].indptr[10]
    writer.append(x["e"].indptr[:11], x["e"].indices[:end], {"counts": x["e"].data[:end]})
    arrays = tmp_path / "arrays"
    staging = arrays / interrupted / "csr" / "indices" / "c" / "0#3"  # a killed put's staging file
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.write_bytes(b"half a shard")
    never_written = atlas.group_claims.claim_new("f")  # killed before the group's first object
    assert (arrays / interrupted).is_dir() and not (arrays / never_written).exists()

    assert atlas.vacuum(grace=timedelta(hours=1)) == NOTHING
    with atlas_lock(atlas.group_claims.meta_store, dataset_lock_name("e")):  # "e" is being ingested
        with caplog.at_level(logging.WARNING, logger="lancell.maintenance"):
            assert atlas.vacuum(grace=timedelta(0)) == {**NOTHING, "groups": 1}
    assert f"zarr group {interrupted!r} not deleted: dataset 'e''s lock is held" in caplog.text
    assert (arrays / interrupted).is_dir()
    assert atlas.vacuum(grace=timedelta(0)) == {**NOTHING, "groups": 1}

    assert not (arrays / deleted.zarr_group).exists() and not (arrays / interrupted).exists()
    assert (arrays / kept.zarr_group / "zarr.json").is_file()
    assert sorted(claim.group for claim in atlas.group_claims.list()) == sorted(
        [*atlas.list_datasets()["zarr_group"].tolist(), kept.zarr_group]
    )
    assert_exact(atlas, {"a": x["a"]})
    assert_snapshots(tmp_path / "db", {v0: {"a": x["a"], "b": x["b"]}})


def test_roll_back_deletes_only_its_own_group(tmp_path: Path) -> None:
    store = obstore.store.LocalStore(prefix=tmp_path / "arrays", mkdir=True)
    write_foreign(tmp_path / "arrays")
    first, second = new_atlas(tmp_path / "first", store), new_atlas(tmp_path / "second", store)
    x = {uid: counts(seed) for seed, uid in enumerate(["a", "b"])}
    ingest(first, "a", x["a"])
    v0 = first.snapshot()
    ingest(second, "b", x["b"])
    before = tree(tmp_path / "arrays")

    with pytest.raises(DuplicateContentError):  # fails at the commit point: group and cell rows written
        ingest(first, "a-again", x["a"])

    assert tree(tmp_path / "arrays") == before
    assert [claim.dataset_uid for claim in first.group_claims.list()] == ["a"]
    assert [claim.dataset_uid for claim in second.group_claims.list()] == ["b"]
    assert first.vacuum(grace=timedelta(0)) == NOTHING
    assert_exact(first, {"a": x["a"]})
    assert_snapshots(tmp_path / "first", {v0: {"a": x["a"]}})
    assert_exact(second, {"b": x["b"]})


def test_groups_not_provably_this_atlas_are_reported_and_kept(tmp_path: Path) -> None:
    atlas = new_atlas(tmp_path / "db", str(tmp_path / "arrays"))
    arrays = tmp_path / "arrays"
    x = {uid: counts(seed) for seed, uid in enumerate(["a", "b", "d", "e"])}
    ingest(atlas, "a", x["a"])
    b = ingest(atlas, "b", x["b"])
    v0 = atlas.snapshot()
    zarr.open_group(str(arrays / b.zarr_group), mode="a").attrs[ATLAS_ID_ATTR] = "someone-else"
    problem = (
        f"dataset 'b': zarr group {b.zarr_group!r} belongs to another atlas (its attributes name atlas "
        f"'someone-else', this atlas is {atlas.atlas_id!r})"
    )
    assert atlas.validate() == [problem]
    with pytest.raises(GroupNotFoundError, match="not this atlas's"):
        add_csc(atlas, "b")
    d = ingest(atlas, "d", x["d"])  # deleted, then its group found carrying another atlas's id
    atlas.delete_dataset("d")
    zarr.open_group(str(arrays / d.zarr_group), mode="a").attrs[ATLAS_ID_ATTR] = "someone-else"
    e = ingest(atlas, "e", x["e"])  # as an older lancell leaves it: cell rows, no record, no claim
    atlas.core.tables.datasets.delete("uid = 'e'")
    atlas.group_claims.release(e.zarr_group)
    files = {name: tree(arrays / name) for name in (d.zarr_group, e.zarr_group)}

    assert atlas.vacuum(grace=timedelta(0)) == {**NOTHING, "unclaimed": 1, "foreign": 1}
    assert {name: tree(arrays / name) for name in files} == files
    assert atlas.core.tables.cells.count_rows("dataset_uid = 'e'") == x["e"].shape[0]
    add_csc(atlas, "a")  # its own group: the CSC copy is rewritten
    assert atlas.validate() == [problem]
    # the read path refuses b's group while it names another atlas; given back its id, it reads as ingested
    zarr.open_group(str(arrays / b.zarr_group), mode="a").attrs[ATLAS_ID_ATTR] = atlas.atlas_id
    assert_exact(RaggedAtlas.open(str(tmp_path / "db")), {"a": x["a"], "b": x["b"]})  # a fresh handle
    assert_snapshots(tmp_path / "db", {v0: {"a": x["a"], "b": x["b"]}})


def test_store_locations_and_refusals(tmp_path: Path) -> None:
    s3 = obstore.store.S3Store("bucket", prefix="lab/arrays", region="us-east-1", skip_signature=True)
    assert location_in_store(s3, "s3://bucket/lab/arrays/db") == "db"
    assert location_in_store(s3, "s3://bucket/lab/arrays") == ""
    assert location_in_store(s3, "s3://bucket/lab") is None  # contains the store's root
    assert location_in_store(s3, "s3://other/lab/arrays/db") is None
    assert location_in_store(s3, str(tmp_path)) is None
    with pytest.raises(StoreError, match="unknown URL scheme 'abfss'"):
        location_in_store(s3, "abfss://container@account.dfs.core.windows.net/db")
    local = obstore.store.LocalStore(prefix=tmp_path)
    assert location_in_store(local, str(tmp_path / "a" / ".." / "db")) == "db"
    assert (
        location_in_store(
            obstore.store.LocalStore(prefix=tmp_path / "db" / "_zarr", mkdir=True), str(tmp_path / "db")
        )
        is None
    )

    (tmp_path / "keep.txt").write_text("x")
    for prefix in ("", "/", "a/../..", "./b"):
        with pytest.raises(StoreError, match="refusing to delete prefix"):
            delete_prefix(local, prefix)
    assert (tmp_path / "keep.txt").read_text() == "x"
    with pytest.raises(StoreError, match="is the database directory"):
        new_atlas(tmp_path / "same", obstore.store.LocalStore(prefix=tmp_path / "same", mkdir=True))


def test_an_atlas_written_before_atlas_ids_gets_one_and_keeps_its_old_groups(tmp_path: Path) -> None:
    db, arrays = tmp_path / "db", tmp_path / "arrays"
    atlas = new_atlas(db, str(arrays))
    x = {uid: counts(seed) for seed, uid in enumerate(["old", "stale", "new"])}
    old, stale = ingest(atlas, "old", x["old"]), ingest(atlas, "stale", x["stale"])
    # as an older lancell left them: no atlas id in atlas.json or in the groups, no claims
    meta_path = db / "_lancell" / "atlas.json"
    meta = json.loads(meta_path.read_text())
    del meta["atlas_id"]
    meta_path.write_text(json.dumps(meta))
    for record in (old, stale):
        del zarr.open_group(str(arrays / record.zarr_group), mode="a").attrs[ATLAS_ID_ATTR]
        atlas.group_claims.release(record.zarr_group)

    reopened = RaggedAtlas.open(str(db))
    assert (
        reopened.atlas_id
        == json.loads(meta_path.read_text())["atlas_id"]
        == RaggedAtlas.open(str(db)).atlas_id
    )
    assert reopened.atlas_id != atlas.atlas_id
    reopened.delete_dataset("stale")  # unreferenced, but not provably this atlas's: never deleted
    v0 = reopened.snapshot()
    new = ingest(reopened, "new", x["new"])
    reopened.delete_dataset("new")
    v1 = reopened.snapshot()
    stale_files = tree(arrays / stale.zarr_group)

    assert reopened.vacuum(grace=timedelta(0)) == {**NOTHING, "groups": 1}  # the claimed one only
    assert not (arrays / new.zarr_group).exists()
    assert tree(arrays / stale.zarr_group) == stale_files
    assert_exact(reopened, {"old": x["old"]})
    assert_snapshots(db, {v0: {"old": x["old"]}, v1: {"old": x["old"]}})


def test_a_moved_atlas_writes_its_store(tmp_path: Path) -> None:
    """A database moved away from its store (nothing left where it was created) writes the store it is given,
    the one it recorded: only a copy is refused that store while the original is there."""
    original = new_atlas(tmp_path / "a" / "db", str(tmp_path / "arrays"))
    x = {uid: counts(seed) for seed, uid in enumerate(["x", "y"])}
    ingest(original, "x", x["x"])
    shutil.move(tmp_path / "a" / "db", tmp_path / "b")
    moved = RaggedAtlas.open(str(tmp_path / "b"), store=str(tmp_path / "arrays"))
    ingest(moved, "y", x["y"])
    moved.delete_dataset("x")
    assert moved.vacuum(grace=timedelta(0))["groups"] == 1
    assert_exact(moved, {"y": x["y"]})


def test_a_copy_whose_original_cannot_be_read_is_refused_the_recorded_store(
    tmp_path: Path, monkeypatch
) -> None:
    """An original that could not be read (refused, unreachable) was taken for moved: the copy opened for
    writing with the original's store."""
    import lancell.opening

    new_atlas(tmp_path / "a" / "db", str(tmp_path / "arrays"))
    shutil.copytree(tmp_path / "a" / "db", tmp_path / "b")
    real = lancell.opening.read_meta

    def refused(db_uri, store_kwargs):
        if "/a/db" in str(db_uri):
            raise StoreError("access denied")
        return real(db_uri, store_kwargs)

    monkeypatch.setattr(lancell.opening, "read_meta", refused)
    with pytest.raises(StoreError, match=r"cannot tell whether the atlas this one was copied or moved from"):
        RaggedAtlas.open(str(tmp_path / "b"), store=str(tmp_path / "arrays"))


def test_a_copy_of_a_local_atlas_that_recorded_no_creation_place_is_refused_the_originals_store(
    tmp_path: Path,
) -> None:
    """Atlases created before 2026-12-05 recorded no ``db_url``: a ``cp -r`` copy of one (default store
    ``<db>/_zarr``, an absolute URL) opened the original's store, wrote there, and its vacuum() deleted the
    original's groups."""
    original = new_atlas(tmp_path / "a" / "db", None)
    x = {uid: counts(seed) for seed, uid in enumerate(["x", "y"])}
    ingest(original, "x", x["x"])
    meta_path = tmp_path / "a" / "db" / "_lancell" / "atlas.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({key: value for key, value in meta.items() if key != "db_url"}))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with pytest.raises(StoreError, match=r"was created at .*/a/db \(copied or moved\).*pass store="):
        RaggedAtlas.open(str(tmp_path / "b" / "db"))
    copy = RaggedAtlas.open(str(tmp_path / "b" / "db"), store=str(tmp_path / "b" / "db" / "_zarr"))
    ingest(copy, "y", x["y"])
    copy.delete_dataset("x")
    assert copy.vacuum(grace=timedelta(0))["groups"] == 1
    assert_exact(RaggedAtlas.open(str(tmp_path / "a" / "db")), {"x": x["x"]})  # the original, whole
    assert_exact(copy, {"y": x["y"]})
    # the original opens for writing where it was created, by another path too (a link)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    ingest(RaggedAtlas.open(str(tmp_path / "link" / "db")), "y", x["y"])
    # and a store of its own that happens to be named _zarr (no atlas database beside it) is no copy's
    elsewhere = new_atlas(tmp_path / "c" / "db", str(tmp_path / "d" / "_zarr"))
    meta_path = tmp_path / "c" / "db" / "_lancell" / "atlas.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({key: value for key, value in meta.items() if key != "db_url"}))
    ingest(RaggedAtlas.open(str(tmp_path / "c" / "db")), "x", x["x"])
    assert_exact(RaggedAtlas.open(str(elsewhere.db_uri)), {"x": x["x"]})
    # a copy of the database alone (its arrays shared) is a copy too: the same atlas id
    shutil.copytree(tmp_path / "a" / "db", tmp_path / "f" / "db", ignore=shutil.ignore_patterns("_zarr"))
    with pytest.raises(StoreError, match=r"\(copied or moved\)"):
        RaggedAtlas.open(str(tmp_path / "f" / "db"))
    # an atlas that shares the original's store on purpose (an atlas of its own) is none
    new_atlas(tmp_path / "s" / "db", str(tmp_path / "a" / "db" / "_zarr"))
    meta_path = tmp_path / "s" / "db" / "_lancell" / "atlas.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({key: value for key, value in meta.items() if key != "db_url"}))
    assert RaggedAtlas.open(str(tmp_path / "s" / "db")).store.prefix == tmp_path / "a" / "db" / "_zarr"


def test_a_copied_atlas_never_writes_or_vacuums_the_originals_groups(tmp_path: Path) -> None:
    """``cp -r`` of an atlas: its recorded (absolute) store was the original's, so the copy's ingestions
    wrote there and its vacuum() deleted the original's groups (same atlas id, claims copied)."""
    original = new_atlas(tmp_path / "a" / "db", str(tmp_path / "a" / "arrays"))
    x = {uid: counts(seed) for seed, uid in enumerate(["x", "y"])}
    record = ingest(original, "x", x["x"])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with pytest.raises(StoreError, match=r"was created at .*/a/db \(copied or moved\).*pass store="):
        RaggedAtlas.open(str(tmp_path / "b" / "db"))
    with pytest.warns(LancellWarning, match="copied or moved") as warned:  # read: warned, at this line
        RaggedAtlas.open(str(tmp_path / "b" / "db"), read_only=True)
    assert warned[0].filename == __file__
    # the refusal's advice followed with the original's store: refused while the original is there
    with pytest.raises(StoreError, match=r"is a copy of the atlas at .*/a/db, which still uses the zarr"):
        RaggedAtlas.open(str(tmp_path / "b" / "db"), store=str(tmp_path / "a" / "arrays"))
    RaggedAtlas.open(str(tmp_path / "b" / "db"), store=str(tmp_path / "a" / "arrays"), read_only=True)
    copy = RaggedAtlas.open(str(tmp_path / "b" / "db"), store=str(tmp_path / "b" / "arrays"))
    written = ingest(copy, "y", x["y"])
    assert (tmp_path / "b" / "arrays" / written.zarr_group).is_dir()
    assert not (tmp_path / "a" / "arrays" / written.zarr_group).exists()
    copy.delete_dataset("x")
    assert copy.vacuum(grace=timedelta(0))["groups"] == 1
    assert not (tmp_path / "b" / "arrays" / record.zarr_group).exists()
    assert_exact(RaggedAtlas.open(str(tmp_path / "a" / "db")), {"x": x["x"]})  # the original is whole

    # a copy of the copy, given the copy's store while the copy is there: refused (both would claim its
    # groups); its own copy of the store is taken, and a moved copy's store too
    shutil.copytree(tmp_path / "b", tmp_path / "e")
    with pytest.raises(StoreError, match=r"is written by another copy of this atlas, at .*/b/db, which is"):
        RaggedAtlas.open(str(tmp_path / "e" / "db"), store=str(tmp_path / "b" / "arrays"))
    RaggedAtlas.open(str(tmp_path / "e" / "db"), store=str(tmp_path / "e" / "arrays"))
    shutil.move(tmp_path / "b" / "db", tmp_path / "b" / "moved")
    moved_copy = RaggedAtlas.open(str(tmp_path / "b" / "moved"), store=str(tmp_path / "b" / "arrays"))
    assert_exact(moved_copy, {"y": x["y"]})
    with pytest.raises(StoreError, match=r"is written by another copy of this atlas, at .*/b/moved"):
        RaggedAtlas.open(str(tmp_path / "e" / "db"), store=str(tmp_path / "b" / "arrays"))

    inside = new_atlas(tmp_path / "c" / "db", None)  # the default store: <db>/_zarr, inside the folder
    ingest(inside, "x", x["x"])
    shutil.copytree(tmp_path / "c", tmp_path / "d")
    moved = RaggedAtlas.open(str(tmp_path / "d" / "db"))
    assert str(moved.store.prefix) == str((tmp_path / "d" / "db" / "_zarr").resolve())
    written = ingest(moved, "y", x["y"])
    assert (tmp_path / "d" / "db" / "_zarr" / written.zarr_group).is_dir()
    assert not (tmp_path / "c" / "db" / "_zarr" / written.zarr_group).exists()
    moved.snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its store lies inside it: nothing to warn about
        pinned = RaggedAtlas.checkout_latest(str(tmp_path / "d" / "db"))
    assert str(pinned.store.prefix) == str((tmp_path / "d" / "db" / "_zarr").resolve())


def test_a_copy_given_another_live_copys_own_store_is_refused(tmp_path: Path) -> None:
    """A database copied alone (or a backup of it) given the store inside another copy, still there: that
    copy writes its own store without naming it (no binding), so the store was taken; the first copy's
    delete and vacuum(grace=0) then deleted a group the other still read (its queries failed)."""
    x = {uid: counts(seed) for seed, uid in enumerate(["x", "y"])}
    ingest(new_atlas(tmp_path / "a" / "db", None), "x", x["x"])  # the default store, inside the folder
    shutil.copytree(tmp_path / "a", tmp_path / "z")
    shutil.copytree(tmp_path / "a" / "db", tmp_path / "y" / "db", ignore=shutil.ignore_patterns("_zarr"))
    owner = RaggedAtlas.open(str(tmp_path / "z" / "db"))
    ingest(owner, "y", x["y"])
    store = str(tmp_path / "z" / "db" / "_zarr")
    # the store it reads is its own place's (it said "that the atlas recorded": the atlas recorded another)
    with pytest.raises(StoreError, match=r"/y/db/_zarr that the atlas reads \(as recorded, or inside"):
        RaggedAtlas.open(str(tmp_path / "y" / "db"))
    refused = r"given is the store of the atlas at .*/z/db, another copy of the atlas at .*/y/db., which is"
    with pytest.raises(StoreError, match=refused):
        RaggedAtlas.open(str(tmp_path / "y" / "db"), store=store)
    RaggedAtlas.open(str(tmp_path / "y" / "db"), store=store, read_only=True)  # (reading changes nothing)
    assert RaggedAtlas.open(str(tmp_path / "z" / "db"), store=store).validate() == []  # its own, named
    # the original moved, a backup of its database taken before: the moved atlas's store is its own
    shutil.move(tmp_path / "z", tmp_path / "moved")
    with pytest.raises(StoreError, match=r"is the store of the atlas at .*/moved/db, another copy"):
        RaggedAtlas.open(str(tmp_path / "y" / "db"), store=str(tmp_path / "moved" / "db" / "_zarr"))
    assert_exact(RaggedAtlas.open(str(tmp_path / "moved" / "db")), x)


def test_a_snapshot_taken_after_a_move_reads_after_the_next_move(tmp_path: Path) -> None:
    """A snapshot records the store it read (inside the place the atlas had then): after a second move or
    a copy, its store was looked for where the atlas no longer is ("does not exist"), or read in the copy
    left there, whose vacuum() may delete its groups."""
    x = {uid: counts(seed) for seed, uid in enumerate(["x", "y"])}
    atlas = new_atlas(tmp_path / "x" / "db", None)
    ingest(atlas, "x", x["x"])
    atlas.snapshot()
    shutil.move(tmp_path / "x", tmp_path / "y")
    ingest(RaggedAtlas.open(str(tmp_path / "y" / "db")), "y", x["y"])
    RaggedAtlas.open(str(tmp_path / "y" / "db")).snapshot()
    shutil.move(tmp_path / "y", tmp_path / "z")
    assert_snapshots(tmp_path / "z" / "db", {0: {"x": x["x"]}, 1: x})
    shutil.copytree(tmp_path / "z", tmp_path / "w")  # a copy reads its own store, the other left as it is
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        latest = RaggedAtlas.checkout_latest(str(tmp_path / "w" / "db"))
    assert str(latest.store.prefix) == str((tmp_path / "w" / "db" / "_zarr").resolve())
    assert_snapshots(tmp_path / "w" / "db", {0: {"x": x["x"]}, 1: x})


@pytest.mark.parametrize(
    "body",
    [
        "{}",
        "not json",
        "[1, 2]",
        '{"group": "g", "atlas_id": "a", "dataset_uid": "d", "created_at": "yesterday"}',
        '{"group": "g", "atlas_id": "a", "dataset_uid": "d", "created_at": "2020-01-01T00:00:00"}',
    ],
)
def test_a_file_among_the_claims_that_is_not_a_claim_is_warned_and_claims_nothing(tmp_path: Path, body: str):
    """A stray or damaged file in ``_lancell/groups/`` made vacuum() fail with a KeyError, JSONDecodeError,
    AttributeError or TypeError until it was removed; and a claim file naming another group than its own
    name would have claimed that group."""
    atlas = new_atlas(tmp_path / "db", str(tmp_path / "arrays"))
    kept = ingest(atlas, "kept", counts(0))
    gone = ingest(atlas, "gone", counts(1))
    atlas.delete_dataset("gone")
    claims = tmp_path / "db" / "_lancell" / "groups"
    (claims / "stray.json").write_text(body)
    with pytest.warns(LancellWarning, match=r"groups/stray.json in the atlas's metadata store is not a"):
        assert atlas.vacuum(grace=timedelta(0)) == {**NOTHING, "groups": 1}
    assert not (tmp_path / "arrays" / gone.zarr_group).exists()
    assert_exact(atlas, {"kept": counts(0)})

    # a claim copied under another group's name claims nothing
    (claims / "stray.json").unlink()
    other = ingest(atlas, "other", counts(2))
    (claims / f"{other.zarr_group}.json").rename(claims / "moved.json")
    atlas.delete_dataset("other")
    with pytest.warns(LancellWarning, match=f"it names group '{other.zarr_group}'"):
        assert atlas.vacuum(grace=timedelta(0)) == {**NOTHING, "unclaimed": 0}
    assert (tmp_path / "arrays" / other.zarr_group).is_dir()
    assert kept.zarr_group != other.zarr_group


def test_vacuum_deletes_only_what_zarr_wrote_and_nothing_through_a_link(tmp_path: Path, caplog) -> None:
    """A link in an owned group's folder led vacuum out of the atlas (obstore's listing follows links): the
    files it pointed to were deleted, and so was a note the user kept beside the data."""
    atlas = new_atlas(tmp_path / "db", str(tmp_path / "arrays"))
    keep = ingest(atlas, "keep", counts(1))
    group = ingest(atlas, "gone", counts(2)).zarr_group
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "figures.pdf").write_text("years of work")
    folder = tmp_path / "arrays" / group
    os.symlink(outside, folder / "results")
    (folder / "notes.txt").write_text("how this dataset was made")
    (folder / "csr" / "figure.png").symlink_to(outside / "figures.pdf")
    atlas.delete_dataset("gone")
    with caplog.at_level(logging.WARNING, logger="lancell.storage.deletion"):
        assert atlas.vacuum(grace=timedelta(0))["groups"] == 1
    assert (outside / "figures.pdf").read_text() == "years of work"
    assert sorted(p.name for p in folder.rglob("*")) == ["csr", "figure.png", "notes.txt", "results"]
    assert f"zarr group {group!r}" in caplog.text and "notes.txt" in caplog.text
    assert_exact(atlas, {"keep": counts(1)})
    assert keep.uid in set(atlas.list_datasets()["uid"])


def test_vacuum_names_what_it_deletes_and_a_dry_run_deletes_nothing(tmp_path: Path, caplog, capsys) -> None:
    """It returned counts only: which groups went was in no log line, and nothing showed them beforehand."""
    from lancell import cli

    atlas = new_atlas(tmp_path / "db", str(tmp_path / "arrays"))
    ingest(atlas, "keep", counts(1))
    gone = [ingest(atlas, uid, counts(seed)).zarr_group for seed, uid in enumerate(["a", "b"], start=2)]
    for uid in ("a", "b"):
        atlas.delete_dataset(uid)
    named: list[tuple[str, str]] = []
    with caplog.at_level(logging.INFO, logger="lancell.maintenance"):
        planned = atlas.vacuum(grace=timedelta(0), dry_run=True, on_group=lambda *pair: named.append(pair))
    assert planned == NOTHING | {"groups": 2}
    assert sorted(named) == [(gone[0], "a"), (gone[1], "b")]
    assert f"would delete zarr group {gone[0]!r} (dataset 'a')" in caplog.text
    assert all((tmp_path / "arrays" / group / "zarr.json").exists() for group in gone)
    assert cli.main(["vacuum", str(tmp_path / "db"), "--grace-hours", "0", "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert f"would delete zarr group {gone[1]} (dataset b)" in shown and "a dry run: nothing deleted" in shown
    assert cli.main(["vacuum", str(tmp_path / "db"), "--grace-hours", "0"]) == 0
    assert f"deleted zarr group {gone[0]} (dataset a)" in capsys.readouterr().out
    assert not any((tmp_path / "arrays" / group).exists() for group in gone)
    assert_exact(atlas, {"keep": counts(1)})
    with pytest.raises(ArgumentError, match="dry_run must be True or False"):
        atlas.vacuum(dry_run="yes")


def test_vacuum_leaves_a_group_whose_folder_is_a_link(tmp_path: Path) -> None:
    """A group moved to another disk and linked back was deleted through the link (its folder and objects)."""
    atlas = new_atlas(tmp_path / "db", str(tmp_path / "arrays"))
    group = ingest(atlas, "moved", counts(1)).zarr_group
    elsewhere = tmp_path / "other_disk" / group
    elsewhere.parent.mkdir()
    shutil.move(tmp_path / "arrays" / group, elsewhere)
    (tmp_path / "arrays" / group).symlink_to(elsewhere)
    atlas.delete_dataset("moved")
    assert atlas.vacuum(grace=timedelta(0), dry_run=True)["groups"] == 0
    assert atlas.vacuum(grace=timedelta(0)) == NOTHING | {"foreign": 1}  # counted as left in place
    assert (elsewhere / "zarr.json").exists() and (tmp_path / "arrays" / group).is_symlink()


def test_vacuum_reads_the_cell_table_once_not_once_per_group(tmp_path: Path, monkeypatch) -> None:
    """Each group vacuumed scanned the cell table and read the dataset records again (21 s for 308 groups of
    a 1,200-dataset atlas, quadratic): the pointers are read once, the records when they changed."""
    from lancell import maintenance

    atlas = new_atlas(tmp_path / "db", None)
    for k in range(4):
        ingest(atlas, f"d{k}", counts(k))
    for k in range(3):
        atlas.delete_dataset(f"d{k}")
    scans, record_reads = [], []
    pointed, live = maintenance._pointed_groups, maintenance._live_groups
    monkeypatch.setattr(maintenance, "_pointed_groups", lambda *a, **k: scans.append(1) or pointed(*a, **k))
    monkeypatch.setattr(maintenance, "_live_groups", lambda *a, **k: record_reads.append(1) or live(*a, **k))
    assert atlas.vacuum(grace=timedelta(0)) == {**NOTHING, "groups": 3}
    assert len(scans) == 1
    assert len(record_reads) <= 3  # the live records, and each snapshot's (none here), not one per group
    np.testing.assert_array_equal(atlas.query().to_anndata().X.toarray(), counts(3).toarray())


def test_vacuum_deletes_the_rows_of_an_ingestion_killed_while_it_ran(tmp_path: Path, monkeypatch) -> None:
    """The ingestion had claimed its group before vacuum began and wrote its rows after vacuum had read the
    cell table's pointers, then was killed: the group went, its rows stayed for good (counted "unclaimed", as
    an older lancell's)."""
    import subprocess
    import sys
    import time

    from lancell import maintenance

    atlas = new_atlas(tmp_path / "db", None)
    ingest(atlas, "keep", counts(0))
    flags = tmp_path / "flags"
    flags.mkdir()
    child = Path(__file__).with_name("vacuum_race_child.py")
    proc = subprocess.Popen([sys.executable, str(child), str(tmp_path / "db"), str(flags)])
    deadline = time.monotonic() + 120
    while not (flags / "claimed").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (flags / "claimed").exists(), "the child did not reach its rows"
    real = maintenance.atlas_lock

    def lock(store, name, *args, **kwargs):  # at the victim's group, after vacuum read the pointers
        if name == dataset_lock_name("victim") and not (flags / "go").exists():
            (flags / "go").touch()
            proc.wait(timeout=120)  # its rows written, then killed: its lock is a dead holder's
        return real(store, name, *args, **kwargs)

    monkeypatch.setattr(maintenance, "atlas_lock", lock)
    assert atlas.vacuum(grace=timedelta(0)) == {**NOTHING, "groups": 1, "cells": 30}
    assert proc.returncode == -9
    assert atlas.core.tables.cells.count_rows() == 30  # the kept dataset's only
    assert atlas.vacuum(grace=timedelta(0)) == NOTHING
