"""Deletions against ingestions and attachments, forced at their worst moments: a re-ingestion of a uid
whose deletion is between its commits, a host deleted while a modality is attached to its cells, two
attachments of one feature space to the same cells, an attachment killed between its pointers and its record,
a modality's deletion stopped between its commits. Each ends with every committed dataset readable exactly,
validate() clean and snapshot() possible, and the interrupted operation re-runnable."""

from __future__ import annotations

import functools
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from attach_crash_child import NAMES, PROTEINS, protein

import lancell.core
import lancell.maintenance
from lancell.atlas import RaggedAtlas
from lancell.errors import DatasetNotFoundError, IngestError, LockTimeoutError, UnmeasuredDataError
from lancell.ingest import transaction_run
from lancell.ingest.from_anndata import add_from_anndata
from lancell.ingest.modalities import attach_modality
from lancell.ingest.write_transaction import WriteTransaction
from lancell.tables.schema import (
    DatasetRecord,
    DenseZarrPointer,
    FeatureBaseSchema,
    LancellBaseSchema,
    SparseZarrPointer,
)

CHILD = Path(__file__).with_name("attach_crash_child.py")
GENES = [f"g{i}" for i in range(40)]


class Feature(FeatureBaseSchema):
    pass


class Cell(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None
    protein: DenseZarrPointer | None = None


@pytest.fixture
def db(tmp_path) -> str:
    """An atlas with datasets d0 (cells ``c0_*``) and d1 (cells ``c1_*``, those of the child's panel)."""
    db = str(tmp_path / "db")
    atlas = RaggedAtlas.create(
        db, "cells", Cell, registry_schemas={"gene_expression": Feature, "protein": Feature}
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    atlas.register_features("protein", pd.DataFrame({"uid": PROTEINS}))
    _ingest(atlas, "d0", 0)
    _ingest(atlas, "d1", 1)
    return db


def _adata(seed: int, n: int = 30) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = sp.random(n, len(GENES), density=0.3, format="csr", random_state=rng, dtype=np.float64)
    x.data = rng.integers(1, 50, x.nnz).astype(np.int32)
    return ad.AnnData(
        x.astype(np.int32),
        obs=pd.DataFrame(index=[f"c{seed}_{i}" for i in range(n)]),
        var=pd.DataFrame(index=GENES),
    )


def _ingest(atlas: RaggedAtlas, uid: str, seed: int) -> ad.AnnData:
    adata = _adata(seed)
    add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid=uid),
        progress=False,
    )
    return adata


def _attach(atlas: RaggedAtlas, panel: ad.AnnData, uid: str = "d1/protein") -> None:
    attach_modality(
        atlas,
        panel,
        cells_of="d1",
        feature_space="protein",
        zarr_layer="values",
        dataset_record=DatasetRecord(uid=uid),
        progress=False,
    )


def _genes(atlas: RaggedAtlas, uid: str) -> np.ndarray:
    out = atlas.query().where(f"dataset_uid = '{uid}'").layers("gene_expression", "counts").to_anndata()
    frame = pd.DataFrame(out.X.toarray(), index=out.obs["obs_name"].to_numpy(), columns=out.var_names)
    return frame.sort_index().reindex(columns=GENES, fill_value=0).to_numpy()


def _proteins(atlas: RaggedAtlas) -> np.ndarray:
    out = (
        atlas.query()
        .where("dataset_uid = 'd1'")
        .feature_space("protein")
        .layers("protein", "values")
        .to_anndata()
    )
    x = out.X.toarray() if sp.issparse(out.X) else np.asarray(out.X)
    frame = pd.DataFrame(x, index=out.obs["obs_name"].to_numpy(), columns=out.var_names)
    return frame.sort_index().reindex(columns=PROTEINS).to_numpy()


def _expected(adata: ad.AnnData) -> np.ndarray:
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    return pd.DataFrame(x, index=adata.obs_names).sort_index().to_numpy()


def _short_locks(monkeypatch) -> None:
    """Locks taken through the core wait 0.5 s: a call made while this process holds the lock is refused."""
    monkeypatch.setattr(lancell.core, "atlas_lock", functools.partial(lancell.core.atlas_lock, timeout=0.5))


def _whole(db: str, uids: list[str]) -> RaggedAtlas:
    """The atlas lists exactly ``uids``, validates, snapshots and vacuums clean; returns it."""
    atlas = RaggedAtlas.open(db)
    assert sorted(atlas.list_datasets()["uid"]) == sorted(uids)
    assert atlas.validate() == []
    atlas.snapshot()
    atlas.vacuum(grace=timedelta(0))
    assert atlas.validate() == []
    return atlas


def _on_first_call(monkeypatch, owner: object, name: str, before) -> None:
    """Run ``before()`` once, right before the first call of ``owner.name``."""
    original = getattr(owner, name)
    calls = []

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if not calls:
            calls.append(name)
            before()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def _pause_deletion_between_commits(monkeypatch, atlas: RaggedAtlas, meanwhile) -> None:
    """Run ``meanwhile()`` when ``atlas``'s deletion has removed the record and not yet the cell rows."""
    cells = atlas.core.tables.cells
    delete = cells.delete

    def run_meanwhile_then_delete(where):
        meanwhile()
        return delete(where)

    monkeypatch.setattr(cells, "delete", run_meanwhile_then_delete)


def test_a_reingestion_waits_for_the_deletion_of_its_uid(db, monkeypatch):
    """The deletion's second commit deleted every row of the uid: those of a re-ingestion that committed
    between its two commits too (the re-ingested dataset read 0 cells)."""
    _short_locks(monkeypatch)
    atlas = RaggedAtlas.open(db)
    outcome = []

    def reingest():
        try:
            _ingest(RaggedAtlas.open(db), "d0", 5)
            outcome.append("committed")
        except LockTimeoutError:
            outcome.append("waited")

    _pause_deletion_between_commits(monkeypatch, atlas, reingest)
    atlas.delete_dataset("d0")
    assert outcome == ["waited"]
    again = _ingest(RaggedAtlas.open(db), "d0", 5)
    fresh = _whole(db, ["d0", "d1"])
    np.testing.assert_array_equal(_genes(fresh, "d0"), _expected(again))
    assert fresh.query().count() == 60


def test_a_deletion_deletes_only_the_rows_of_the_record_it_deleted(db, monkeypatch):
    """A re-ingestion that takes no lock (an older lancell) and commits between the deletion's commits keeps
    its rows: the deletion removes the rows of the deleted record's zarr group."""
    atlas = RaggedAtlas.open(db)
    monkeypatch.setattr(lancell.maintenance, "dataset_lock_name", lambda uid: f"another-{uid}")
    replacement = []
    _pause_deletion_between_commits(
        monkeypatch, atlas, lambda: replacement.append(_ingest(RaggedAtlas.open(db), "d0", 5))
    )
    atlas.delete_dataset("d0")
    fresh = _whole(db, ["d0", "d1"])
    np.testing.assert_array_equal(_genes(fresh, "d0"), _expected(replacement[0]))


def test_an_attachment_whose_host_was_deleted_is_refused(db, monkeypatch):
    """The attachment checked its host once, at its start, and committed a record for cells that were gone
    (validate() reported it and snapshot() refused)."""
    _on_first_call(
        monkeypatch, WriteTransaction, "_commit_rows", lambda: RaggedAtlas.open(db).delete_dataset("d1")
    )
    with pytest.raises(DatasetNotFoundError, match="d1"):
        _attach(RaggedAtlas.open(db), protein(NAMES))
    claims = RaggedAtlas.open(db).core.group_claims.list()
    assert "d1/protein" not in {c.dataset_uid for c in claims}  # its group went with its roll-back
    assert _whole(db, ["d0"]).query().count() == 30


def test_the_host_of_an_attachment_being_committed_is_not_deleted(db, monkeypatch):
    """A deletion of the host between the attachment's pointers and its record let the record commit."""
    _short_locks(monkeypatch)
    refused = []

    def delete_host():
        with pytest.raises(LockTimeoutError):
            RaggedAtlas.open(db).delete_dataset("d1")
        refused.append("d1")

    _on_first_call(monkeypatch, transaction_run, "_commit", delete_host)
    panel = protein(NAMES)
    _attach(RaggedAtlas.open(db), panel)
    assert refused == ["d1"]
    atlas = _whole(db, ["d0", "d1", "d1/protein"])
    np.testing.assert_array_equal(_proteins(atlas), _expected(panel))
    atlas.delete_dataset("d1")
    _whole(db, ["d0"])


def test_a_second_attachment_to_the_same_cells_is_refused_under_the_hosts_lock(db, monkeypatch):
    """Both attachments passed the check at their start; the later pointers overwrote the earlier
    committed ones, whose record then owned no cell."""
    first = protein(NAMES)
    _on_first_call(
        monkeypatch, WriteTransaction, "_commit_rows", lambda: _attach(RaggedAtlas.open(db), first, "d1/a")
    )
    with pytest.raises(IngestError, match="already carry"):
        _attach(RaggedAtlas.open(db), protein(NAMES, offset=100.0), "d1/b")
    atlas = _whole(db, ["d0", "d1", "d1/a"])
    np.testing.assert_array_equal(_proteins(atlas), _expected(first))


def test_an_attachment_killed_before_its_record_is_rerun(db):
    """The killed run's pointers refused the re-run ("already carry") until vacuum(grace=0)."""
    child = subprocess.run(
        [sys.executable, str(CHILD), db, "pointers"], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == -9, child.stderr
    atlas = RaggedAtlas.open(db)
    assert atlas.validate() == [] and sorted(atlas.list_datasets()["uid"]) == ["d0", "d1"]
    with pytest.raises(UnmeasuredDataError):
        _proteins(atlas)
    panel = protein(NAMES)
    _attach(atlas, panel)
    fresh = _whole(db, ["d0", "d1", "d1/protein"])
    np.testing.assert_array_equal(_proteins(fresh), _expected(panel))
    with pytest.raises(IngestError, match="already carry"):  # the pointers of a committed record
        _attach(fresh, panel, "d1/again")


@pytest.mark.parametrize("stop_at", [1, 2])
def test_a_modality_deletion_stopped_between_its_commits_leaves_it_whole_or_gone(db, monkeypatch, stop_at):
    """The pointers were nulled before the record went: stopped between, the record stayed listed with no
    data (reads raised UnmeasuredDataError, validate() reported it, snapshot() refused)."""
    panel = protein(NAMES)
    _attach(RaggedAtlas.open(db), panel)
    atlas = RaggedAtlas.open(db)
    commits = []

    def count_or_stop(real, *args, **kwargs):  # the process dies at its stop_at-th table commit
        commits.append(args)
        if len(commits) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    datasets = atlas.core.tables.datasets
    monkeypatch.setattr(datasets, "delete", functools.partial(count_or_stop, datasets.delete))
    execute = type(atlas.core.tables.cells.merge_insert("uid")).execute
    monkeypatch.setattr(
        type(atlas.core.tables.cells.merge_insert("uid")),
        "execute",
        lambda self, *a, **k: count_or_stop(functools.partial(execute, self), *a, **k),
    )
    with pytest.raises(KeyboardInterrupt):
        atlas.delete_dataset("d1/protein")
    monkeypatch.undo()
    fresh = RaggedAtlas.open(db)
    listed = "d1/protein" in fresh.list_datasets()["uid"].tolist()
    if listed:
        np.testing.assert_array_equal(_proteins(fresh), _expected(panel))
    else:  # d1 no longer has the modality (its pointers, if left, lead to no record)
        with pytest.raises(UnmeasuredDataError):
            _proteins(fresh)
    assert fresh.validate() == []
    fresh.snapshot()
    if listed:
        fresh.delete_dataset("d1/protein")
    again = protein(NAMES, offset=7.0)
    _attach(fresh, again)  # the stopped deletion's pointers do not refuse it
    np.testing.assert_array_equal(_proteins(_whole(db, ["d0", "d1", "d1/protein"])), _expected(again))


def test_an_attachment_committed_while_a_modality_is_detached_keeps_its_pointers(db, monkeypatch):
    # the deletion read the cells pointing into its group, then nulled those cells' pointers whatever they
    # pointed into by then: an attachment committed in between lost every pointer (its record owned none)
    from lancell.ingest import cell_rows

    atlas = RaggedAtlas.open(db)
    _attach(atlas, protein(NAMES), "d1/old")
    null_structs = cell_rows.null_structs

    def another_attaches_meanwhile(*args, **kwargs):
        monkeypatch.setattr(cell_rows, "null_structs", null_structs)
        _attach(RaggedAtlas.open(db), protein(NAMES, offset=100.0), "d1/new")
        return null_structs(*args, **kwargs)

    monkeypatch.setattr(cell_rows, "null_structs", another_attaches_meanwhile)
    atlas.delete_dataset("d1/old")
    fresh = RaggedAtlas.open(db)
    assert fresh.validate() == []
    new = protein(NAMES, offset=100.0)
    np.testing.assert_array_equal(_proteins(fresh), pd.DataFrame(new.X, index=NAMES).sort_index().to_numpy())
