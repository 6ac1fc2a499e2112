"""An S3 server that goes away or freezes under an open atlas: every failure is a ``StoreError`` naming what
failed and where (never LanceDB's ``RuntimeError``, pyarrow's ``ArrowInvalid`` or obstore's own errors), a
roll-back that fails as well never replaces the call's own error, and the client's timeout and retry
settings bound how long LanceDB waits for a frozen server.

Each test runs its own SeaweedFS server (the session's stays up for the other tests), with few retries so
that a dead server fails fast.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import gene_atlas
from s3server import BUCKET, WEED, Seaweed, run_seaweed

import lancell.ingest.add_layer as add_layer_module
import lancell.ingest.write_transaction as write_transaction
from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.errors import DataValueError, StoreError
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord

GENES = [f"G{i:03d}" for i in range(60)]


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[Seaweed, ExitStack]]:
    """A SeaweedFS server of this test alone, and the stack whose ``close()`` stops it."""
    if not WEED.exists():
        pytest.skip(f"no seaweedfs binary at {WEED}")
    with ExitStack() as stack:
        yield stack.enter_context(run_seaweed(tmp_path)), stack


def fast_kwargs(server: Seaweed) -> dict:
    """The server's store settings with one retry and 1 s timeouts (a dead server fails in seconds)."""
    kwargs = server.store_kwargs()
    kwargs["client_options"] |= {"timeout": "1s", "connect_timeout": "1s"}
    kwargs["retry_config"] = {"max_retries": 1, "retry_timeout": timedelta(seconds=2)}
    return kwargs


def small_adata(uid: str, seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = sp.random(40, len(GENES), density=0.2, random_state=seed, format="csr", dtype=np.float32)
    x.data = np.ceil(x.data * 10)
    obs = pd.DataFrame({"cell_type": rng.choice(["T", "B"], 40)}, index=[f"{uid}_{i}" for i in range(40)])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=GENES))


def ingest(atlas: RaggedAtlas, uid: str, seed: int) -> None:
    add_from_anndata(
        atlas,
        small_adata(uid, seed),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid=uid),
        progress=False,
    )


def s3_atlas(server: Seaweed, kwargs: dict) -> tuple[RaggedAtlas, str]:
    """An atlas on the server (database and arrays), one dataset ingested and a snapshot taken."""
    root = f"s3://{BUCKET}/outage-{time.time_ns()}"
    atlas = gene_atlas(f"{root}/db", f"{root}/arrays", GENES, kwargs)
    ingest(atlas, "d0", 0)
    atlas.snapshot()
    return atlas, f"{root}/db"


def test_a_server_gone_mid_ingestion_is_a_store_error_naming_the_dataset(own_server, monkeypatch):
    server, stack = own_server
    atlas, _ = s3_atlas(server, fast_kwargs(server))
    ensure_layout = write_transaction.ensure_layout

    def dying(*args, **kwargs):  # the arrays are written; the layout commit meets a dead server
        stack.close()
        return ensure_layout(*args, **kwargs)

    monkeypatch.setattr(write_transaction, "ensure_layout", dying)
    with pytest.raises(StoreError, match="dataset 'd1': not ingested") as raised:
        ingest(atlas, "d1", 1)
    assert "LanceError(IO)" in str(raised.value)  # LanceDB's I/O failure, as its cause says


def test_every_operation_of_open_handles_is_a_store_error_once_the_server_is_gone(own_server):
    server, stack = own_server
    kwargs = fast_kwargs(server)
    atlas, db_uri = s3_atlas(server, kwargs)
    snapshot = RaggedAtlas.checkout_latest(db_uri, store_kwargs=kwargs)
    matrix = sp.csr_matrix(small_adata("d0", 0).X)
    stack.close()
    operations: dict[str, Callable[[], object]] = {
        "query().count()": lambda: atlas.query().count(),
        "snapshot query().to_anndata()": lambda: snapshot.query().to_anndata(),
        "list_datasets()": atlas.list_datasets,
        "validate()": atlas.validate,
        "register_features()": lambda: atlas.register_features(
            "gene_expression", pd.DataFrame({"uid": ["X1"], "gene_symbol": ["X1"]})
        ),
        "delete_dataset()": lambda: atlas.delete_dataset("d0"),
        "vacuum()": atlas.vacuum,
        "snapshot()": atlas.snapshot,
        "optimize()": atlas.optimize,
        "add_layer()": lambda: add_layer(atlas, "d0", "normalized", matrix),
    }
    raised = {}
    for name, operation in operations.items():
        try:
            operation()
        except Exception as exc:  # what each one raises is the point
            raised[name] = exc
    assert set(raised) == set(operations)
    untyped = {name: f"{type(exc).__module__}.{type(exc).__name__}" for name, exc in raised.items()}
    assert {name: kind for name, kind in untyped.items() if kind != "lancell.errors.StoreError"} == {}
    assert all("127.0.0.1" in str(exc) or db_uri in str(exc) for exc in raised.values()), raised


def test_a_failed_roll_back_of_add_layer_keeps_the_calls_own_error(own_server, monkeypatch, caplog):
    server, stack = own_server
    atlas, _ = s3_atlas(server, fast_kwargs(server))

    def refused(*args, **kwargs):  # the layer is refused, and the server dies before the roll-back
        stack.close()
        raise DataValueError("dataset 'd0', layer 'normalized': refused for the test")

    monkeypatch.setattr(add_layer_module, "_write_values", refused)
    with caplog.at_level(logging.ERROR), pytest.raises(DataValueError, match="refused for the test"):
        add_layer(atlas, "d0", "normalized", sp.csr_matrix(small_adata("d0", 0).X))
    assert "roll-back of layer normalized left debris" in caplog.text


def test_the_retry_settings_bound_how_long_lancedb_waits_for_a_frozen_server(own_server):
    """lance retries a failed listing 5 times (fixed): with a 1 s timeout and no retry of a request a query
    gives up after about 6 s; LanceDB's own 3 retries (retry_config not passed) made it ~25 s."""
    server, _ = own_server
    kwargs = server.store_kwargs()
    kwargs["client_options"] |= {"timeout": "1s", "connect_timeout": "1s"}
    kwargs["retry_config"] = {"max_retries": 0, "retry_timeout": timedelta(seconds=1)}
    atlas, _ = s3_atlas(server, kwargs)
    outcome: dict[str, object] = {}

    def count() -> None:
        started = time.monotonic()
        try:
            atlas.query().count()
        except Exception as exc:  # the type is checked below
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    os.kill(server.pid, signal.SIGSTOP)
    try:
        worker = threading.Thread(target=count, daemon=True)
        worker.start()
        worker.join(40)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert "seconds" in outcome, "query().count() still blocked after 40 s"
    assert outcome["seconds"] < 15, outcome
    assert isinstance(outcome["error"], StoreError)


def test_a_zarr_store_gone_under_a_local_database_is_a_store_error(own_server, tmp_path):
    """The database on local disk, the arrays on the server: obstore's own errors escaped."""
    server, stack = own_server
    kwargs = fast_kwargs(server)
    db = str(tmp_path / "db")
    atlas = RaggedAtlas.create(
        db,
        "cells",
        CellSchema,
        store=f"s3://{BUCKET}/outage-{time.time_ns()}/arrays",
        registry_schemas={"gene_expression": GeneFeature},
        store_kwargs=kwargs,
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES, "gene_symbol": GENES}))
    ingest(atlas, "d0", 0)
    atlas.snapshot()
    group = atlas.list_datasets()["zarr_group"][0]
    stack.close()
    operations: dict[str, Callable[[], object]] = {
        "query().to_anndata()": lambda: atlas.query().to_anndata(),
        "validate()": atlas.validate,
        "group_attributes()": lambda: atlas.group_attributes(group),
        "vacuum()": atlas.vacuum,
        "open()": lambda: RaggedAtlas.open(db, store_kwargs=kwargs),
        "checkout_latest()": lambda: RaggedAtlas.checkout_latest(db, store_kwargs=kwargs),
    }
    kinds = {}
    for name, operation in operations.items():
        try:
            operation()
        except Exception as exc:  # what each one raises is the point
            kinds[name] = f"{type(exc).__module__}.{type(exc).__name__}"
    assert kinds == dict.fromkeys(operations, "lancell.errors.StoreError")
