"""Writes and deletes whose connection broke are sent again (lancell.storage.store_retries): an ingestion, a
deletion and a vacuum on S3 come through connections reset before or after the server took the request,
with the same atlas as without them; ``retry_config``'s ``max_retries=0`` turns the retries off.

The atlas is reached through :class:`fault_proxy.FaultProxy`, which breaks the chosen requests to the
session's SeaweedFS server. Without the retries any one of these broken writes failed the whole operation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anndata as ad
import numpy as np
import obstore
import obstore.exceptions as obs_errors
import pandas as pd
import pytest
import scipy.sparse as sp
from fault_proxy import FaultProxy, Faults
from helpers import gene_atlas
from s3server import Seaweed, deployment_environment

from lancell import cli, run_again
from lancell.atlas import RaggedAtlas
from lancell.errors import StoreError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage.store_retries import RETRIES, broken_connection
from lancell.storage.stores import open_store
from lancell.tables.group_claims import CLAIMS_PREFIX
from lancell.tables.locks import atlas_lock
from lancell.tables.schema import DatasetRecord

GENES = [f"G{i:03d}" for i in range(50)]
# the zarr objects of the arrays (the database's own files and the lock objects are written by others)
ARRAYS = r"/arrays/"


@pytest.fixture
def proxy(seaweed: Seaweed) -> Iterator[FaultProxy]:
    server = FaultProxy(seaweed.endpoint)
    yield server
    server.close()


def kwargs(seaweed: Seaweed, proxy: FaultProxy, retries: int | None = None, within: float = 30.0) -> dict:
    settings = seaweed.store_kwargs()
    settings["config"]["endpoint"] = proxy.endpoint
    if retries is not None:
        settings["retry_config"] = {"max_retries": retries, "retry_timeout": timedelta(seconds=within)}
    return settings


def adata(uid: str, seed: int) -> ad.AnnData:
    x = sp.random(70, len(GENES), density=0.3, random_state=seed, format="csr", dtype=np.float32)
    x.data = np.ceil(x.data * 20)
    obs = pd.DataFrame({"cell_type": ["T", "B"] * 35}, index=[f"{uid}_{i}" for i in range(70)])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=GENES))


def ingest(atlas: RaggedAtlas, uid: str, seed: int) -> None:
    add_from_anndata(
        atlas,
        adata(uid, seed),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid=uid),
        csc=True,
        progress=False,
    )


@pytest.mark.parametrize("fault", ["reset", "lost"])
def test_ingestion_goes_through_broken_writes(
    seaweed: Seaweed, proxy: FaultProxy, s3_root: str, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    atlas = gene_atlas(f"{s3_root}/db", f"{s3_root}/arrays", GENES, kwargs(seaweed, proxy))
    # the ingestion's first six writes of zarr objects broken (each the first time it is sent): the arrays'
    # and groups' metadata, zarr's writes of their parents' zarr.json among them
    proxy.faults = Faults(fault=fault, methods=("PUT",), path=ARRAYS, faults=6)
    broken = proxy.faults.broken
    with caplog.at_level(logging.WARNING, logger="lancell.storage.store_retries"):
        ingest(atlas, "d0", 1)
    assert len(broken) == 6
    assert sum("sent again" in message for message in caplog.messages) >= 1, "obstore retried every one"
    expected = adata("d0", 1)
    got = RaggedAtlas.open(f"{s3_root}/db", store_kwargs=kwargs(seaweed, proxy)).query().to_anndata()
    assert list(got.obs_names) == [f"d0:{name}" for name in expected.obs_names]
    assert (sp.csr_matrix(got.X) != expected.X).nnz == 0
    features = atlas.query().features(["G003", "G040"], "gene_expression").to_anndata()  # the CSC copy
    assert (sp.csr_matrix(features.X) != expected[:, ["G003", "G040"]].X).nnz == 0
    assert atlas.validate(checksums=True) == []


def test_deletion_and_vacuum_go_through_broken_deletes(
    seaweed: Seaweed, proxy: FaultProxy, s3_root: str
) -> None:
    atlas = gene_atlas(f"{s3_root}/db", f"{s3_root}/arrays", GENES, kwargs(seaweed, proxy))
    ingest(atlas, "d0", 1)
    ingest(atlas, "d1", 2)
    group = atlas.list_datasets().set_index("uid").loc["d1", "zarr_group"]
    atlas.delete_dataset("d1")
    # S3 deletes many objects in one POST (?delete); zarr deletes one by one
    locks = r"_lancell/locks/"
    proxy.faults = Faults(fault="lost", methods=("POST", "DELETE"), path="", spare=locks, faults=2)
    atlas.vacuum(grace=timedelta(0))
    assert proxy.faults.broken, "the vacuum deleted nothing through the proxy"
    store = seaweed.store()
    prefix = s3_root.split("/", 3)[3]
    assert not [m for batch in store.list(prefix=f"{prefix}/arrays/{group}/") for m in batch]
    assert atlas.query().count() == 70
    assert atlas.validate() == []


@pytest.mark.parametrize(("retries", "within"), [(0, 30.0), (3, 0.001)], ids=["max_retries", "retry_timeout"])
def test_the_retry_config_bounds_the_retries(
    seaweed: Seaweed, proxy: FaultProxy, s3_root: str, retries: int, within: float
) -> None:
    """``max_retries=0`` sends once; no retry starts past ``retry_timeout`` (the first waits 50-100 ms)."""
    settings = kwargs(seaweed, proxy, retries=retries, within=within)
    atlas = gene_atlas(f"{s3_root}/db", f"{s3_root}/arrays", GENES, settings)
    proxy.faults = Faults(fault="reset", methods=("PUT",), path=ARRAYS, skip=3, faults=1)
    with pytest.raises(StoreError, match=r"Connection reset|error sending request"):
        ingest(atlas, "d0", 1)
    assert len(proxy.faults.broken) == 1
    assert atlas.list_datasets().empty and atlas.query().count() == 0


def test_only_unretried_transport_failures_are_sent_again() -> None:
    sent = (
        "Generic S3 error: Error performing PUT http://127.0.0.1:4/b/a/zarr.json in 1.37ms - HTTP error: "
        "error sending request (Connection reset by peer)"
    )
    retried = (
        "Generic S3 error: Error performing PUT http://127.0.0.1:4/b/x in 282ms, after 2 retries, "
        "max_retries: 2, retry_timeout: 60s  - Server returned non-2xx status code: 503 Service Unavailable"
    )
    assert broken_connection(obs_errors.GenericError(sent))
    assert not broken_connection(obs_errors.GenericError(retried))  # obstore's own retries ran out
    assert not broken_connection(obs_errors.PreconditionError(sent))  # an answer, not a broken connection
    assert not broken_connection(OSError(sent))
    assert RETRIES >= 1


def test_cli_ingestion_broken_under_lancedb_is_run_again(
    seaweed: Seaweed,
    proxy: FaultProxy,
    s3_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reset under LanceDB's commit of the dataset record (lance's own write, not sent again): ``lancell
    ingest`` rolls the ingestion back and runs it again (lancell.ingest.landing_retries)."""
    settings = kwargs(seaweed, proxy)
    deployment_environment(monkeypatch, proxy.endpoint)
    monkeypatch.setattr(run_again, "STORE_RETRY_WAITS", (0.2, 0.2))
    gene_atlas(f"{s3_root}/db", f"{s3_root}/arrays", GENES, settings)
    path = tmp_path / "d0.h5ad"
    adata("d0", 1).write_h5ad(path)
    proxy.faults = Faults(fault="reset", methods=("PUT",), path=r"/db/datasets\.lance/_versions/", faults=1)
    assert cli.main(["ingest", f"{s3_root}/db", str(path), "--csc"]) == 0
    said = capsys.readouterr()
    assert (
        f"warning: {path} is ingested as dataset 'd0' again in 0.2 s: dataset 'd0': not ingested" in said.err
    )
    assert "d0: ingested (70 cells" in said.out
    assert len(proxy.faults.broken) == 1
    atlas = RaggedAtlas.open(f"{s3_root}/db", store_kwargs=settings)
    assert atlas.list_datasets()["uid"].tolist() == ["d0"] and atlas.query().count() == 70
    assert atlas.validate() == []


@pytest.mark.parametrize("fault", ["reset", "lost"])
def test_a_lock_take_whose_connection_broke_is_tried_again(
    seaweed: Seaweed, proxy: FaultProxy, s3_root: str, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A conditional create of a lock object whose connection broke: read back, it is this lease's (the
    reply lost) or not there (reset before it reached the server), and the take goes on either way."""
    store = open_store(f"{s3_root}/store", kwargs(seaweed, proxy))
    proxy.faults = Faults(fault=fault, methods=("PUT",), path=r"_lancell/locks/", faults=1)
    with caplog.at_level(logging.WARNING, logger="lancell.tables.locks"):
        with atlas_lock(store, "flaky") as lease:
            lease.check()
            held = json.loads(bytes(obstore.get(store, lease.path).bytes()))
            assert held["token"] == lease.token
    assert len(proxy.faults.broken) == 1


@pytest.mark.parametrize("fault", ["reset", "lost"])
def test_a_group_claim_whose_connection_broke_is_read_back(
    seaweed: Seaweed, proxy: FaultProxy, s3_root: str, fault: str
) -> None:
    """The claim of a new dataset's group name (a conditional create) whose connection broke: read back, it
    landed (the reply lost: that name is used) or it did not (another name is claimed); one claim each."""
    atlas = gene_atlas(f"{s3_root}/db", f"{s3_root}/arrays", GENES, kwargs(seaweed, proxy))
    proxy.faults = Faults(fault=fault, methods=("PUT",), path=CLAIMS_PREFIX, faults=1)
    ingest(atlas, "d0", 1)
    assert len(proxy.faults.broken) == 1
    prefix = s3_root.split("/", 3)[3]
    claims = [
        m["path"] for batch in seaweed.store().list(prefix=f"{prefix}/db/{CLAIMS_PREFIX}/") for m in batch
    ]
    group = atlas.list_datasets()["zarr_group"].tolist()
    assert len(claims) == 1 and claims[0].endswith(f"{group[0]}.json")
    assert atlas.query().count() == 70 and atlas.validate() == []


def test_a_failure_after_the_datasets_commit_is_reported_not_run_again(
    seaweed: Seaweed,
    proxy: FaultProxy,
    s3_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--on-conflict update``: the registry's update, after the dataset's commit, meets a reset under
    LanceDB's commit. The command fails naming it (run again, it found the dataset present and said nothing
    of the update never made)."""
    deployment_environment(monkeypatch, proxy.endpoint)
    monkeypatch.setattr(run_again, "STORE_RETRY_WAITS", (0.2, 0.2))
    gene_atlas(f"{s3_root}/db", f"{s3_root}/arrays", GENES, kwargs(seaweed, proxy))
    data = adata("d0", 1)
    data.var["gene_symbol"] = [f"NEW{i}" for i in range(len(GENES))]  # (registered with symbol = uid)
    data.write_h5ad(path := tmp_path / "d0.h5ad")
    manifests = r"/db/gene_expression_registry\.lance/_versions/"
    proxy.faults = Faults(fault="reset", methods=("PUT",), path=manifests, faults=1)
    assert cli.main(["ingest", f"{s3_root}/db", str(path), "--on-conflict", "update"]) == 1
    said = capsys.readouterr()
    assert "again in" not in said.err and "gene_expression_registry" in said.err
    assert len(proxy.faults.broken) == 1
    atlas = RaggedAtlas.open(f"{s3_root}/db", store_kwargs=kwargs(seaweed, proxy))
    assert atlas.list_datasets()["uid"].tolist() == ["d0"]  # (committed; the registry kept its values)
