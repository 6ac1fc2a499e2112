"""An atlas whose LanceDB database and zarr arrays both live on a real S3 server (SeaweedFS), end to end.

create -> ingest (the bundled datasets, backed) -> optimize -> snapshot -> checkout_latest -> query, compared
with the same atlas built on local disk; credentials from kwargs or the environment, never persisted; a
public bucket read anonymously; the training loader; concurrent snapshots and locks from two processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import obstore
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import gene_atlas
from s3server import ACCESS_KEY, BUCKET, PUBLIC_BUCKET, SECRET_KEY, Seaweed

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, gene_features, ingest_bundled
from lancell.errors import StoreError

QUERIES = {
    "counts, union of human and mouse panels": lambda q: (
        q.where("organism IS NOT NULL").layers("gene_expression", "counts").on_unmeasured("drop")
    ),
    "log-normalized, one cell type": lambda q: q.where("cell_type = 'CD14+ Monocyte'"),
    "a few genes, intersection": lambda q: (
        q.where("organism = 'Homo sapiens'")
        .layers("gene_expression", "counts")
        .features(["CD3D", "LYZ", "MS4A1", "GNLY"], "gene_expression")
        .feature_join("intersection")
        .on_unmeasured("drop")
    ),
    "first 37 cells": lambda q: q.where("dataset_uid = 'mouse_10k'").limit(37),
}


def build(db_uri: str, store: str, store_kwargs: dict | None, datasets=BUNDLED) -> int:
    """Create an atlas, ingest ``datasets`` from backed files, optimize and snapshot; return the version."""
    atlas = gene_atlas(db_uri, store, gene_features(datasets), store_kwargs)
    for dataset in datasets:
        ingest_bundled(atlas, dataset, backed=True)
    atlas.optimize()
    return atlas.snapshot(note="bundled")


@pytest.fixture(scope="module")
def bundled_pair(seaweed: Seaweed, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The bundled atlas twice: on S3 (db and arrays under one prefix) and on local disk."""
    root = f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
    local = tmp_path_factory.mktemp("local_atlas")
    s3_version = build(f"{root}/db", f"{root}/arrays", seaweed.store_kwargs())
    local_version = build(str(local / "db"), str(local / "arrays"), None)
    return {"root": root, "local": local, "versions": (s3_version, local_version)}


def assert_same_anndata(a, b) -> None:
    assert a.shape == b.shape
    assert list(a.obs_names) == list(b.obs_names)
    assert list(a.var_names) == list(b.var_names)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert a.X.dtype == b.X.dtype
    x, y = sp.csr_matrix(a.X), sp.csr_matrix(b.X)
    assert np.array_equal(x.indptr, y.indptr)
    assert np.array_equal(x.indices, y.indices)
    assert np.array_equal(x.data, y.data)
    assert sorted(a.varm) == sorted(b.varm)
    for key in a.varm:
        assert np.array_equal(np.asarray(a.varm[key]), np.asarray(b.varm[key]))
    assert a.uns["lancell"] == b.uns["lancell"]


def test_s3_atlas_matches_local_disk(seaweed: Seaweed, bundled_pair: dict[str, object]) -> None:
    root, local = bundled_pair["root"], bundled_pair["local"]
    assert bundled_pair["versions"] == (0, 0)
    remote = RaggedAtlas.checkout_latest(f"{root}/db", store_kwargs=seaweed.store_kwargs())
    disk = RaggedAtlas.checkout_latest(str(local / "db"))
    assert remote.read_only and remote.snapshot_version == 0
    assert (
        remote.store.config["bucket"] == BUCKET and remote.store.prefix == f"{root.split('/', 3)[3]}/arrays"
    )
    drop = ["zarr_group", "created_at", "source"]
    datasets = remote.list_datasets().drop(columns=drop, errors="ignore").sort_values("uid")
    expected = disk.list_datasets().drop(columns=drop, errors="ignore").sort_values("uid")
    pd.testing.assert_frame_equal(datasets.reset_index(drop=True), expected.reset_index(drop=True))
    pd.testing.assert_frame_equal(
        remote.feature_registry("gene_expression"), disk.feature_registry("gene_expression")
    )
    assert remote.query().count() == disk.query().count() == sum(d.read(backed=True).n_obs for d in BUNDLED)
    for name, shape in QUERIES.items():
        got, want = shape(remote.query()).to_anndata(), shape(disk.query()).to_anndata()
        assert got.n_obs > 0, name
        assert_same_anndata(got, want)
    assert remote.validate() == []
    versions = RaggedAtlas.list_versions(f"{root}/db", store_kwargs=seaweed.store_kwargs())
    assert versions["store_url"].tolist() == [f"{root}/arrays"]


def test_no_credential_is_persisted(seaweed: Seaweed, bundled_pair: dict[str, object]) -> None:
    """Every object the atlas wrote (Lance manifests and data, atlas.json, zarr) is free of the keys."""
    root = str(bundled_pair["root"])
    store = seaweed.store()
    prefix = root.split("/", 3)[3]
    objects = [meta["path"] for batch in obstore.list(store, prefix=prefix + "/") for meta in batch]
    assert any(p.endswith("_lancell/atlas.json") for p in objects)
    assert any(".lance/" in p for p in objects) and any(p.endswith("zarr.json") for p in objects)
    for path in objects:
        body = bytes(obstore.get(store, path).bytes())
        assert SECRET_KEY.encode() not in body, path
        assert ACCESS_KEY.encode() not in body, path
    meta = json.loads(bytes(obstore.get(store, f"{prefix}/db/_lancell/atlas.json").bytes()))
    assert meta["store_url"] == f"{root}/arrays"
    assert meta["store_config"] == {
        "endpoint": seaweed.endpoint,
        "region": "us-east-1",
        "client_options": {"allow_http": "true"},
    }
    row = RaggedAtlas.list_versions(f"{root}/db", store_kwargs=seaweed.store_kwargs()).iloc[0]
    assert json.loads(row["store_config"]) == meta["store_config"]


def test_checkout_with_credentials_from_the_environment(
    seaweed: Seaweed, bundled_pair: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = bundled_pair["root"]
    expected = RaggedAtlas.checkout_latest(f"{root}/db", store_kwargs=seaweed.store_kwargs()).query().count()
    # a wrong secret is refused (the server really checks signatures)
    wrong = seaweed.store_kwargs()
    wrong["config"]["secret_access_key"] = "wrong"
    with pytest.raises(StoreError, match="SignatureDoesNotMatch"):
        RaggedAtlas.checkout_latest(f"{root}/db", store_kwargs=wrong)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    # endpoint in kwargs, keys from the standard AWS variables
    without_keys = {
        "config": {"endpoint": seaweed.endpoint, "region": "us-east-1"},
        "client_options": {"allow_http": True},
    }
    atlas = RaggedAtlas.checkout_latest(f"{root}/db", store_kwargs=without_keys)
    assert atlas.query().count() == expected
    # everything from the environment: no kwargs at all
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    atlas = RaggedAtlas.checkout_latest(f"{root}/db")
    assert atlas.query().where("dataset_uid = 'pbmc68k'").to_anndata().n_obs == 700


def test_public_bucket_read_anonymously_with_skip_signature(seaweed: Seaweed) -> None:
    root = f"s3://{PUBLIC_BUCKET}/{uuid.uuid4().hex[:12]}"
    build(f"{root}/db", f"{root}/arrays", seaweed.store_kwargs(), datasets=BUNDLED[:1])
    anonymous = seaweed.store_kwargs(credentials=False)
    assert "access_key_id" not in anonymous["config"] and anonymous["config"]["skip_signature"] is True
    atlas = RaggedAtlas.checkout_latest(f"{root}/db", store_kwargs=anonymous)
    assert atlas.store.config["skip_signature"] == "true"
    signed = RaggedAtlas.checkout_latest(f"{root}/db", store_kwargs=seaweed.store_kwargs())
    assert_same_anndata(atlas.query().to_anndata(), signed.query().to_anndata())
    # anonymous writes are refused: the lock object cannot even be created (a StoreError, caused by obstore's)
    writable = RaggedAtlas.open(f"{root}/db", store_kwargs=anonymous)
    with pytest.raises(StoreError, match="cannot take lock 'snapshot'") as refused:
        writable.snapshot()
    cause = refused.value.__cause__  # (the lock's StoreError, named within snapshot()'s, then obstore's)
    assert isinstance(cause.__cause__, obstore.exceptions.PermissionDeniedError)


def test_loader_epoch_on_s3_matches_local_disk(seaweed: Seaweed, bundled_pair: dict[str, object]) -> None:
    dataloader = pytest.importorskip("lancell.dataloader", reason="lancell.dataloader is not in this tree")
    root, local = bundled_pair["root"], bundled_pair["local"]
    remote = RaggedAtlas.checkout_latest(f"{root}/db", store_kwargs=seaweed.store_kwargs())
    disk = RaggedAtlas.checkout_latest(str(local / "db"))
    batches = []
    for atlas in (remote, disk):
        dataset = (
            atlas.query()
            .where("organism IS NOT NULL")
            .on_unmeasured("drop")
            .to_cell_dataset("gene_expression", "counts", features="union")
        )
        sampler = dataloader.CellSampler(dataset, 512, mode="random", seed=3)
        batches.append(list(dataloader.make_loader(dataset, sampler, num_workers=0)))
    remote_batches, disk_batches = batches
    assert len(remote_batches) == len(disk_batches) > 1
    cells = 0
    for got, want in zip(remote_batches, disk_batches, strict=True):
        x, y = got["X"], want["X"]
        assert x.shape == y.shape
        assert np.array_equal(x.crow_indices().numpy(), y.crow_indices().numpy())
        assert np.array_equal(x.col_indices().numpy(), y.col_indices().numpy())
        assert np.array_equal(x.values().numpy(), y.values().numpy())
        cells += x.shape[0]
    # every cell measured in counts (pbmc68k stores log-normalized values only and is dropped)
    assert cells == remote.query().where("organism IS NOT NULL AND dataset_uid != 'pbmc68k'").count()


_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from lancell.atlas import RaggedAtlas
    from lancell.tables.locks import atlas_lock
    from lancell.storage.stores import read_json, write_json

    db_uri, kwargs, barrier, me = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    atlas = RaggedAtlas.open(db_uri, store_kwargs=kwargs)
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.01)
    versions = [atlas.snapshot(note=f"{me}{i}") for i in range(3)]  # a note labels one snapshot
    for _ in range(10):  # read-modify-write of a shared counter, only correct under the lock
        with atlas_lock(atlas.core.meta_store, "counter"):
            value = (read_json(atlas.core.meta_store, "counter.json") or {"n": 0})["n"]
            write_json(atlas.core.meta_store, "counter.json", {"n": value + 1})
    print(json.dumps(versions))
    """
)


def test_concurrent_snapshots_and_locks_from_two_processes(seaweed: Seaweed, s3_root: str, tmp_path: Path):
    build(f"{s3_root}/db", f"{s3_root}/arrays", seaweed.store_kwargs(), datasets=BUNDLED[:1])
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    kwargs = json.dumps(seaweed.store_kwargs())
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), f"{s3_root}/db", kwargs, str(barrier), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    taken = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
        taken.append(json.loads(out.strip().splitlines()[-1]))
    numbers = sorted(taken[0] + taken[1])
    assert numbers == list(range(1, 7)), taken  # snapshot 0 was taken by build()
    frame = RaggedAtlas.list_versions(f"{s3_root}/db", store_kwargs=seaweed.store_kwargs())
    assert frame["version"].tolist() == list(range(7))
    assert [frame.set_index("version")["note"][n] for n in taken[0]] == ["a0", "a1", "a2"]
    meta_store = obstore.store.from_url(f"{s3_root}/db", **seaweed.store_kwargs())
    assert json.loads(bytes(obstore.get(meta_store, "counter.json").bytes())) == {"n": 20}
    for version in (1, 6):
        atlas = RaggedAtlas.checkout(f"{s3_root}/db", version, store_kwargs=seaweed.store_kwargs())
        assert atlas.query().count() == 700
