"""An atlas copied to another S3 prefix, or uploaded from local disk, never writes or vacuums the original's
groups: the store inside its location is found in the new one, and a store it cannot place is refused for
writing (the local case is in ``tests/reliability/test_vacuum.py``)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import obstore
import pandas as pd
import pytest
import scipy.sparse as sp
from s3server import Seaweed
from test_s3_vacuum import GENES, Cell, Gene, assert_exact, ingest

from lancell.atlas import RaggedAtlas
from lancell.errors import StoreError
from lancell.synthetic import synthetic_counts


def _build(db_uri: str, store_kwargs: dict | None) -> tuple[RaggedAtlas, dict[str, sp.csr_matrix]]:
    atlas = RaggedAtlas.create(
        db_uri, "cells", Cell, registry_schemas={"gene_expression": Gene}, store_kwargs=store_kwargs
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    x = {
        uid: synthetic_counts(20, len(GENES), 6, np.random.default_rng(seed)) for seed, uid in enumerate("ab")
    }
    for uid, matrix in x.items():
        ingest(atlas, uid, matrix)
    return atlas, x


def _copy_prefix(store: obstore.store.S3Store, source: str, target: str) -> None:
    for batch in obstore.list(store, prefix=f"{source}/"):
        for meta in batch:
            obstore.copy(store, meta["path"], target + meta["path"][len(source) :])


def _delete_and_vacuum(copy: RaggedAtlas) -> None:
    copy.delete_dataset("b")
    assert copy.vacuum(grace=timedelta(0))["groups"] == 1


def test_a_copy_to_another_prefix_uses_its_own_store(seaweed: Seaweed, s3_root: str) -> None:
    kwargs = seaweed.store_kwargs()
    _, x = _build(f"{s3_root}/a/db", kwargs)
    prefix = s3_root.removeprefix("s3://lancell/")
    _copy_prefix(seaweed.store(), f"{prefix}/a", f"{prefix}/b")
    copy = RaggedAtlas.open(f"{s3_root}/b/db", store_kwargs=kwargs)
    assert copy.store.prefix == f"{prefix}/b/db/_zarr"
    _delete_and_vacuum(copy)
    assert_exact(copy, {"a": x["a"]})
    assert_exact(RaggedAtlas.open(f"{s3_root}/a/db", store_kwargs=kwargs), x)  # the original is whole


def test_a_local_atlas_uploaded_to_s3_uses_the_uploaded_store(
    seaweed: Seaweed, s3_root: str, tmp_path: Path
) -> None:
    kwargs = seaweed.store_kwargs()
    local = tmp_path / "db"
    _, x = _build(str(local), None)
    prefix = s3_root.removeprefix("s3://lancell/")
    for path in local.rglob("*"):
        if path.is_file():
            obstore.put(seaweed.store(), f"{prefix}/db/{path.relative_to(local)}", path.read_bytes())
    uploaded = RaggedAtlas.open(f"{s3_root}/db", store_kwargs=kwargs)
    assert uploaded.store.prefix == f"{prefix}/db/_zarr"
    _delete_and_vacuum(uploaded)
    assert_exact(RaggedAtlas.open(str(local)), x)


def test_a_copy_of_an_atlas_that_recorded_no_creation_place_is_not_opened_writable(
    seaweed: Seaweed, s3_root: str
) -> None:
    # atlases on object stores created before the creation place was recorded for them
    kwargs = seaweed.store_kwargs()
    _, x = _build(f"{s3_root}/a/db", kwargs)
    prefix = s3_root.removeprefix("s3://lancell/")
    _copy_prefix(seaweed.store(), f"{prefix}/a", f"{prefix}/b")
    meta_path = f"{prefix}/b/db/_lancell/atlas.json"
    meta = json.loads(bytes(obstore.get(seaweed.store(), meta_path).bytes()))
    obstore.put(seaweed.store(), meta_path, json.dumps({**meta, "db_url": None}).encode())
    with pytest.raises(StoreError, match=r"\(copied or moved\).*pass store="):
        RaggedAtlas.open(f"{s3_root}/b/db", store_kwargs=kwargs)
    copy = RaggedAtlas.open(f"{s3_root}/b/db", store=f"{s3_root}/b/db/_zarr", store_kwargs=kwargs)
    _delete_and_vacuum(copy)
    assert_exact(RaggedAtlas.open(f"{s3_root}/a/db", store_kwargs=kwargs), x)
    assert_exact(copy, {"a": x["a"]})
    # the original, which recorded nothing either, still opens where it was created
    obstore.put(
        seaweed.store(), f"{prefix}/a/db/_lancell/atlas.json", json.dumps({**meta, "db_url": None}).encode()
    )
    assert RaggedAtlas.open(f"{s3_root}/a/db", store_kwargs=kwargs).store.prefix == f"{prefix}/a/db/_zarr"
