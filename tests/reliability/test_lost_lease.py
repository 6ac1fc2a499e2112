"""A process that lost a dataset's lease (paused past it: a suspended laptop or VM) deletes nothing of the
process that took the lock over: not its record, not its cell rows, not its groups.

Each test plays both processes in one: at the chosen step the first one's lock is taken over
(``_steal``: what a process that judged it stale writes), the second one's work runs once the thief's short
lease is stale, and then the first one goes on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import obstore
import pandas as pd
import pyarrow as pa
import pytest
from helpers import table_calls

import lancell.ingest.write_transaction
import lancell.maintenance
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED
from lancell.errors import LockLostError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.group_claims import GroupClaims
from lancell.tables.schema import DatasetRecord
from lancell.tables.versions import SNAPSHOT_LOCK
from lancell.tables.visibility import dataset_lock_name

PBMC = BUNDLED[0]


def _ingest(atlas: RaggedAtlas, uid: str, adata) -> DatasetRecord:
    return add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer=PBMC.zarr_layer,
        dataset_record=DatasetRecord(uid=uid),
        on_duplicate="allow",
        progress=False,
    )


def _steal(atlas: RaggedAtlas, name: str) -> None:
    """Take lock ``name`` over as another process would, with a lease that is stale after 0.2 s."""
    body = {"token": "thief", "host": "another-host.invalid", "pid": 1, "renewed_at": time.time()}
    data = json.dumps(body | {"taken_at": time.time(), "stale_after": 0.2}).encode()
    obstore.put(atlas.core.meta_store, f"_lancell/locks/{name}.lock", data)
    time.sleep(0.3)


def _state(atlas: RaggedAtlas) -> tuple[list[str], int, list[str]]:
    records = atlas.list_datasets()
    return records["zarr_group"].tolist(), atlas.query().count(), atlas.validate()


def test_a_deletion_that_lost_its_lease_leaves_the_dataset_ingested_again_meanwhile(atlas, monkeypatch):
    """It deleted the record by uid alone, without a check of its lease: the dataset deleted and ingested
    again under the same uid by the process that took over lost its record, its rows left behind."""
    adata = PBMC.read()
    _ingest(atlas, "x", adata)
    real = GroupClaims.mark_released
    took_over: list[str] = []

    def paused_after_reading_the_record(self, group):
        if not took_over:  # (the second process's own deletion passes through here too)
            took_over.append(group)
            _steal(atlas, dataset_lock_name("x"))
            atlas.delete_dataset("x")
            _ingest(atlas, "x", adata)
        real(self, group)

    monkeypatch.setattr(GroupClaims, "mark_released", paused_after_reading_the_record)
    with pytest.raises(LockLostError, match="dataset 'x'"):
        atlas.delete_dataset("x")
    groups, cells, problems = _state(atlas)
    assert len(groups) == 1 and groups[0] != took_over[0]  # the dataset ingested again
    assert cells == adata.n_obs and problems == []


def test_an_ingestion_rolled_back_after_losing_its_lease_deletes_only_its_own_rows(atlas, monkeypatch):
    """Its roll-back deleted every cell row of the uid: those of the dataset committed meanwhile too."""
    adata = PBMC.read()
    transaction = lancell.ingest.write_transaction.WriteTransaction
    real = transaction._commit_rows
    done: list[bool] = []

    def paused_after_its_rows(self, indptr):
        real(self, indptr)
        if not done:
            done.append(True)
            _steal(atlas, dataset_lock_name("x"))
            _ingest(atlas, "x", adata)  # the process that took over ingests the same uid and commits

    monkeypatch.setattr(transaction, "_commit_rows", paused_after_its_rows)
    with pytest.raises(LockLostError):
        _ingest(atlas, "x", adata)
    groups, cells, problems = _state(atlas)
    assert len(groups) == 1 and cells == adata.n_obs and problems == []


def test_a_roll_back_deletes_its_group_under_the_snapshot_lock(atlas, monkeypatch):
    """The check that no snapshot references the group and its deletion held no lock: a snapshot being
    taken meanwhile could pin the group the roll-back then deleted."""
    real = lancell.maintenance._snapshot_groups
    held: list[bool] = []

    def checked(core, known, deleted_after=None):
        lock = Path(atlas.db_uri) / "_lancell" / "locks" / f"{SNAPSHOT_LOCK}.lock"
        held.append(lock.exists())
        return real(core, known, deleted_after)

    monkeypatch.setattr(lancell.maintenance, "_snapshot_groups", checked)
    group = atlas.core.group_claims.claim_new("y")
    assert lancell.maintenance.remove_group(atlas.core, group) is False  # nothing stored: not "own"
    assert held == [True]


def test_add_layer_that_lost_its_lease_stops_and_leaves_the_layer_of_the_call_that_took_over(
    atlas, celltypist, monkeypatch
):
    """Its roll-back put back the attributes it had read and deleted the layer's arrays: those of the call
    that took the dataset over and committed the same layer, whose record then listed a layer not stored."""
    import lancell.ingest.add_layer as adding

    add_from_anndata(
        atlas,
        celltypist,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="x"),
        progress=False,
    )
    stored = atlas.query().where(dataset_uid="x").layers("gene_expression", "counts").to_anndata()
    counts = stored.X.astype(np.float32)
    obs = pd.DataFrame(index=stored.obs_names.str.split(":", n=1).str[1])

    def named(matrix):
        return ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=stored.var_names))

    real = adding._write_values
    taken: list[bool] = []

    def paused_after_its_arrays(*args):
        padded = real(*args)
        if not taken:
            taken.append(True)
            _steal(atlas, dataset_lock_name("x"))
            adding.add_layer(atlas, "x", "log_normalized", named(counts * 2))  # the call that took over
        return padded

    monkeypatch.setattr(adding, "_write_values", paused_after_its_arrays)
    with pytest.raises(LockLostError):
        adding.add_layer(atlas, "x", "log_normalized", named(counts * 3))
    read = atlas.query().where(dataset_uid="x").layers("gene_expression", "log_normalized").to_anndata()
    np.testing.assert_array_equal(read.X.toarray(), (counts * 2).toarray())
    assert atlas.validate() == []


@pytest.mark.parametrize("vacuumed", [True, False])
def test_an_ingestion_whose_lease_is_taken_over_inside_its_records_commit(atlas, monkeypatch, vacuumed):
    """Paused inside the records' add, past its lease (or a vacuum on a host whose clock ran 10 minutes
    ahead): vacuum(grace=0) took the dataset's lock, deleted its group and cell rows, and the ingestion then
    committed its record and returned: a dataset without cells or group. Now it commits nothing; but where
    nothing was removed (another ingestion of the same content took the locks over, and may have been told
    the record holds it), the record stands."""
    from datetime import timedelta

    adata = PBMC.read()

    def paused(table, *args, **kwargs):
        _steal(atlas, dataset_lock_name("x"))
        if vacuumed:
            RaggedAtlas.open(atlas.core.db_uri).vacuum(grace=timedelta(0))  # takes the stale lock
        return table.add(*args, **kwargs)

    with table_calls("datasets", add=paused):
        if vacuumed:
            with pytest.raises(LockLostError):
                _ingest(atlas, "x", adata)
        else:
            assert _ingest(atlas, "x", adata).n_cells == adata.n_obs
    groups, cells, problems = _state(atlas)
    assert len(groups) == (0 if vacuumed else 1) and problems == []
    assert cells == (0 if vacuumed else adata.n_obs)
    if vacuumed:
        assert _ingest(atlas, "x", adata).n_cells == adata.n_obs


def test_an_ingestion_whose_lease_is_taken_over_stops_before_its_next_shard(atlas, monkeypatch):
    """Paused before storing a shard, past its lease: vacuum deleted its group and claim, and the
    ingestion went on to write the whole group again, which no claim owned and vacuum never removed."""
    from datetime import timedelta

    adata = PBMC.read()
    arrays = Path(atlas.core.db_uri).parent / "arrays"
    before = sorted(p.name for p in arrays.iterdir())
    real = lancell.ingest.write_transaction.WriteTransaction.check_leases
    calls: list[int] = []

    def paused_before_a_shard(self):
        calls.append(1)
        if len(calls) == 1:
            _steal(atlas, dataset_lock_name("x"))
            RaggedAtlas.open(atlas.core.db_uri).vacuum(grace=timedelta(0))
        real(self)

    monkeypatch.setattr(
        lancell.ingest.write_transaction.WriteTransaction, "check_leases", paused_before_a_shard
    )
    with pytest.raises(LockLostError):
        _ingest(atlas, "x", adata)
    monkeypatch.undo()
    assert _state(atlas) == ([], 0, [])
    assert sorted(p.name for p in arrays.iterdir()) == before  # no group written again after the vacuum


def test_a_registration_whose_lease_is_taken_over_writes_nothing(atlas, monkeypatch):
    """Two registrations, one paused past its lease (or a clock far ahead), gave different genes the same
    global index: every query then failed with pandas' "cannot reindex on an axis with duplicate labels"."""
    from lancell.tables import registry

    real = registry.assign_new_features

    def paused(table, prepared, held):
        _steal(atlas, "registry-gene_expression")
        return real(table, prepared, held)

    before = atlas.feature_registry("gene_expression")
    monkeypatch.setattr(registry, "assign_new_features", paused)
    with pytest.raises(LockLostError):
        genes = pd.DataFrame({"uid": ["NEWGENE1", "NEWGENE2"], "gene_symbol": ["N1", "N2"]})
        atlas.register_features("gene_expression", genes)
    pd.testing.assert_frame_equal(atlas.feature_registry("gene_expression"), before)


def test_numbering_rows_added_by_hand_confirms_the_lock_before_each_commit(atlas):
    """number_unindexed checked its lease once, then numbered the rows one commit each: a pause after the
    first let another registration take the same index as the next row."""
    from lancell.tables.registry import number_unindexed

    registry = atlas.core.tables.registry("gene_expression")
    rows = [{"uid": f"BYHAND{i}", "gene_symbol": f"H{i}", "global_index": None} for i in range(3)]
    registry.add(pa.Table.from_pylist(rows, schema=registry.schema))
    confirmed: list[int] = []

    def held() -> None:
        confirmed.append(1)
        if len(confirmed) == 2:
            raise LockLostError("taken over")

    with pytest.raises(LockLostError):
        number_unindexed(registry, held)
    numbered = atlas.feature_registry("gene_expression").set_index("uid")["global_index"]
    assert numbered[["BYHAND0", "BYHAND1", "BYHAND2"]].isna().tolist() == [False, True, True]
