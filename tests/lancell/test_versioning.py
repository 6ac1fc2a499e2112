"""Snapshots: tagged so cleanup never loses them, unique under concurrency, read-only checkouts."""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from datetime import timedelta

import numpy as np
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, ingest_bundled
from lancell.errors import (
    ArgumentError,
    ArgumentValueError,
    LancellWarning,
    ReadOnlyAtlasError,
    VersionNotFoundError,
)
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord


def test_snapshot_survives_optimize_cleanup_and_later_ingestion(atlas, pbmc, celltypist):
    ingest_bundled(atlas, BUNDLED[0])
    v0 = atlas.snapshot(note="pbmc only")
    before = RaggedAtlas.checkout(atlas.db_uri, v0).query().to_anndata()

    atlas.optimize(cleanup_older_than=timedelta(0))
    ingest_bundled(atlas, BUNDLED[1])
    atlas.optimize(cleanup_older_than=timedelta(0))
    v1 = atlas.snapshot()
    atlas.optimize(cleanup_older_than=timedelta(0))

    assert v1 == v0 + 1
    old = RaggedAtlas.checkout(atlas.db_uri, v0)
    assert old.query().count() == pbmc.n_obs
    after = old.query().to_anndata()
    assert list(after.obs_names) == list(before.obs_names)
    assert (after.X != before.X).nnz == 0
    assert list(after.var_names) == list(before.var_names)
    assert RaggedAtlas.checkout(atlas.db_uri, v1).query().count() == pbmc.n_obs + celltypist.n_obs
    versions = RaggedAtlas.list_versions(atlas.db_uri)
    assert versions["version"].tolist() == [v0, v1]
    assert versions["total_cells"].tolist() == [pbmc.n_obs, pbmc.n_obs + celltypist.n_obs]


def test_checkout_latest_says_when_the_atlas_changed_since_its_snapshot(atlas, pbmc):
    """A notebook that ingested more and ran checkout_latest again read the older release without a word."""
    ingest_bundled(atlas, BUNDLED[0])
    atlas.snapshot()
    atlas.optimize(cleanup_older_than=timedelta(0))  # new table versions, the same datasets: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert RaggedAtlas.checkout_latest(atlas.db_uri).query().count() == pbmc.n_obs
    ingest_bundled(atlas, BUNDLED[1])
    told_of = r"1 dataset\(s\) ingested, deleted, replaced or given a layer since \(e.g. \['{}'\]\)"
    with pytest.warns(LancellWarning, match=told_of.format("celltypist_sample")) as told:
        assert RaggedAtlas.checkout_latest(atlas.db_uri).query().count() == pbmc.n_obs
    assert told[0].filename == __file__
    atlas.snapshot()
    atlas.delete_dataset(BUNDLED[0].uid)  # corrected and ingested again under its uid: another group
    ingest_bundled(atlas, BUNDLED[0])
    with pytest.warns(LancellWarning, match=told_of.format(BUNDLED[0].uid)):
        RaggedAtlas.checkout_latest(atlas.db_uri)
    atlas.snapshot()  # a layer added since: the release reads the dataset without it
    cells = atlas.query().where(dataset_uid="celltypist_sample").to_anndata()
    cells.X = sp.csr_matrix(cells.X, dtype=np.float32) / 2
    add_layer(atlas, "celltypist_sample", "normalized", cells)
    with pytest.warns(LancellWarning, match=told_of.format("celltypist_sample")):
        RaggedAtlas.checkout_latest(atlas.db_uri)


def test_checked_out_handle_is_read_only_and_frozen(atlas, celltypist):
    ingest_bundled(atlas, BUNDLED[1])
    v = atlas.snapshot()
    frozen = RaggedAtlas.checkout(atlas.db_uri, v)
    with pytest.raises(ReadOnlyAtlasError):
        add_from_anndata(frozen, celltypist, feature_space="gene_expression", zarr_layer="counts")
    for call in (
        lambda: frozen.snapshot(),
        lambda: frozen.optimize(),
        lambda: frozen.register_features("gene_expression", []),
        lambda: frozen.delete_dataset("celltypist_sample"),
        lambda: frozen.vacuum(),
    ):
        with pytest.raises(ReadOnlyAtlasError):
            call()
    ingest_bundled(atlas, BUNDLED[0])
    assert frozen.query().count() == celltypist.n_obs
    assert atlas.query().count() == celltypist.n_obs + 700


def test_a_read_only_open_reads_the_live_atlas_and_refuses_writes(atlas, celltypist):
    ingest_bundled(atlas, BUNDLED[1])
    live = RaggedAtlas.open(atlas.db_uri, read_only=True)
    assert live.read_only and live.snapshot_version is None and "live, read-only" in repr(live)
    with pytest.raises(ReadOnlyAtlasError, match=r"is read-only; use RaggedAtlas\.open"):
        add_from_anndata(live, celltypist, feature_space="gene_expression", zarr_layer="counts")
    for call in (live.snapshot, live.optimize, live.vacuum, lambda: live.delete_dataset("celltypist_sample")):
        with pytest.raises(ReadOnlyAtlasError):
            call()
    assert RaggedAtlas.list_versions(atlas.db_uri).empty
    ingest_bundled(atlas, BUNDLED[0])
    assert live.query().count() == celltypist.n_obs + 700  # the live tables, not a pinned version


def test_unknown_version(atlas):
    with pytest.raises(VersionNotFoundError):
        RaggedAtlas.checkout_latest(atlas.db_uri)
    atlas.snapshot()
    atlas.snapshot()
    with pytest.raises(VersionNotFoundError):
        RaggedAtlas.checkout(atlas.db_uri, 5)
    for version in (0.9, 1.9, True, None, "1", "abc"):  # were read as int(version): 0.9 opened snapshot 0
        with pytest.raises(ArgumentError, match=r"newest\): a snapshot version is"):
            RaggedAtlas.checkout(atlas.db_uri, version)
    with pytest.raises(VersionNotFoundError) as unknown:  # the atlas is there: no AtlasNotFoundError
        RaggedAtlas.checkout(atlas.db_uri, 99)
    assert not isinstance(unknown.value, FileNotFoundError)
    assert RaggedAtlas.checkout(atlas.db_uri, np.int64(1)).snapshot_version == 1


def _take_snapshots(db_uri: str, n: int, queue: mp.Queue) -> None:
    atlas = RaggedAtlas.open(db_uri)
    queue.put([atlas.snapshot(note=f"concurrent {os.getpid()}-{i}") for i in range(n)])  # notes are unique


def test_concurrent_snapshots_get_distinct_numbers(atlas):
    ingest_bundled(atlas, BUNDLED[0])
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_take_snapshots, args=(atlas.db_uri, 3, queue)) for _ in range(2)]
    for w in workers:
        w.start()
    numbers = queue.get(timeout=120) + queue.get(timeout=120)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert sorted(numbers) == list(range(6))
    assert sorted(RaggedAtlas.list_versions(atlas.db_uri)["version"]) == list(range(6))


def test_delete_dataset_and_vacuum_keep_snapshot_groups(atlas, pbmc):
    ingest_bundled(atlas, BUNDLED[0])
    record = ingest_bundled(atlas, BUNDLED[1])
    v = atlas.snapshot()
    atlas.delete_dataset(record.uid)
    assert atlas.query().count() == pbmc.n_obs
    assert atlas.vacuum(grace=timedelta(0)) == {"groups": 0, "cells": 0, "unclaimed": 0, "foreign": 0}
    assert RaggedAtlas.checkout(atlas.db_uri, v).query().where(f"dataset_uid = '{record.uid}'").count() == 559
    snap = RaggedAtlas.checkout(atlas.db_uri, v).query().where(f"dataset_uid = '{record.uid}'").to_anndata()
    assert snap.X.sum() == BUNDLED[1].read().X.sum()
    atlas.snapshot()
    assert atlas.validate() == []


def test_vacuum_removes_the_rows_a_stopped_deletion_left_in_a_snapshot_group(atlas):
    """A deletion stopped after the record, before the rows: vacuum skipped the group (a snapshot pins
    it), and its rows, owned by no record, stayed in the table for good."""
    ingest_bundled(atlas, BUNDLED[0])
    record = ingest_bundled(atlas, BUNDLED[1])
    v = atlas.snapshot()
    atlas.core.tables.datasets.delete(f"uid = '{record.uid}'")  # where the stopped deletion left it
    assert atlas.core.tables.cells.count_rows() == 700 + 559 and atlas.query().count() == 700
    assert atlas.vacuum(grace=timedelta(0)) == {"groups": 0, "cells": 559, "unclaimed": 0, "foreign": 0}
    assert atlas.core.tables.cells.count_rows() == 700
    snap = RaggedAtlas.checkout(atlas.db_uri, v).query().where(f"dataset_uid = '{record.uid}'").to_anndata()
    assert snap.X.sum() == BUNDLED[1].read().X.sum()  # the group stays for the snapshot
    assert atlas.vacuum(grace=timedelta(0))["cells"] == 0 and atlas.validate() == []


def test_maintenance_arguments_of_another_type_are_refused(atlas):
    """vacuum(grace=0) raised TypeError from datetime arithmetic, delete_dataset(None) an AttributeError."""
    ingest_bundled(atlas, BUNDLED[0])
    for grace in (0, 3600, None):
        with pytest.raises(ArgumentError, match=f"grace must be a datetime.timedelta.*got {grace!r}"):
            atlas.vacuum(grace=grace)
    for uid in (None, 5):
        with pytest.raises(ArgumentError, match=f"uid must be a dataset uid \\(a str\\), got {uid!r}"):
            atlas.delete_dataset(uid)
    # a negative grace acted as none (deleting what a live reader may still read)
    with pytest.raises(ArgumentValueError, match=r"grace must be at least timedelta\(0\) \(none\), got "):
        atlas.vacuum(grace=timedelta(hours=-5))
    assert atlas.query().count() == 700
    # a grace longer than the clock's past raised OverflowError: it keeps everything
    for grace in (timedelta.max, timedelta(hours=1e9)):
        assert atlas.vacuum(grace=grace) == {"groups": 0, "cells": 0, "unclaimed": 0, "foreign": 0}


def test_optimize_refuses_a_retention_it_cannot_use_before_it_changes_anything(atlas):
    """optimize(cleanup_older_than="1h") compacted the cell table, then raised a builtin TypeError; 0 and a
    negative age were taken silently (vacuum refuses both); timedelta.max raised OverflowError."""
    ingest_bundled(atlas, BUNDLED[0])
    versions = atlas.table_versions()
    for age in ("1h", 3.5, 0):
        with pytest.raises(ArgumentError, match=f"cleanup_older_than must be a datetime.timedelta.* {age!r}"):
            atlas.optimize(cleanup_older_than=age)
    with pytest.raises(ArgumentValueError, match=r"cleanup_older_than must be at least timedelta\(0\)"):
        atlas.optimize(cleanup_older_than=timedelta(days=-1))
    assert atlas.table_versions() == versions
    atlas.optimize(cleanup_older_than=timedelta.max)
    assert atlas.query().count() == 700


def test_vacuum_removes_unreferenced_own_groups_only(atlas):
    ingest_bundled(atlas, BUNDLED[0])
    gone = ingest_bundled(atlas, BUNDLED[1])
    atlas.delete_dataset(gone.uid)
    orphan = atlas.core.zarr_root.create_group("orphan-deadbeef")  # no claim: not provably this atlas's
    orphan.create_array("x", shape=(4,), dtype="int32")[:] = np.arange(4)
    nothing = {"groups": 0, "cells": 0, "unclaimed": 0, "foreign": 0}
    with pytest.warns(
        LancellWarning, match=r"1 zarr group\(s\) of deleted datasets .* are kept until 1:00:00"
    ) as told:
        assert atlas.vacuum(grace=timedelta(hours=1)) == nothing  # (zeros without a word, it was)
    assert told[0].filename == __file__
    assert atlas.vacuum(grace=timedelta(0)) == {**nothing, "groups": 1}
    assert gone.zarr_group not in atlas.core.zarr_root
    np.testing.assert_array_equal(atlas.core.zarr_root["orphan-deadbeef/x"][:], np.arange(4))
    assert atlas.validate() == []
    assert atlas.query().count() == 700


def test_vacuum_counts_the_group_of_an_ingestion_beside_it_as_claimed(atlas, monkeypatch):
    """An ingestion that claimed its group and wrote its rows after vacuum() listed the claims (another
    process, or a thread here) was counted ``unclaimed``: never claimed by this atlas."""
    import threading

    from lancell.ingest import transaction_run
    from lancell.tables import group_claims

    ingest_bundled(atlas, BUNDLED[0])
    adata = BUNDLED[0].read()

    def ingest_again() -> None:
        add_from_anndata(
            atlas,
            adata,
            feature_space="gene_expression",
            zarr_layer=BUNDLED[0].zarr_layer,
            dataset_record=DatasetRecord(uid="meanwhile"),
            on_duplicate="allow",
            progress=False,
        )

    rows_written, may_commit = threading.Event(), threading.Event()
    commit = transaction_run._commit

    def commit_later(transactions):  # rows written; the record waits for vacuum() to return
        rows_written.set()
        may_commit.wait()
        commit(transactions)

    monkeypatch.setattr(transaction_run, "_commit", commit_later)
    listing, beside = group_claims.GroupClaims.list, []

    def list_then_ingest(self):
        claims = listing(self)
        if not beside:
            beside.append(threading.Thread(target=ingest_again, daemon=True))
            beside[0].start()
            assert rows_written.wait(timeout=120)
        return claims

    monkeypatch.setattr(group_claims.GroupClaims, "list", list_then_ingest)
    try:
        counted = atlas.vacuum(grace=timedelta(hours=1))
    finally:
        may_commit.set()
        if beside:
            beside[0].join()
    assert counted == {"groups": 0, "cells": 0, "unclaimed": 0, "foreign": 0}
