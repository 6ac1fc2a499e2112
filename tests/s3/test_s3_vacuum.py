"""vacuum() on S3: the store's prefix one level above the database, shared by two atlases and other objects.

The layout of the local case in ``tests/reliability/test_vacuum.py`` on a real S3 server (SeaweedFS):
``s3://lancell/<prefix>`` is the zarr store of two atlases whose databases are ``<prefix>/first.lancedb`` and
``<prefix>/second.lancedb``; another project's objects live under the same prefix. Every snapshot must
check out with its exact values afterwards.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anndata as ad
import numpy as np
import obstore
import pandas as pd
import scipy.sparse as sp
from s3server import Seaweed

from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage.stores import location_in_store
from lancell.synthetic import synthetic_counts
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

GENES = [f"g{i}" for i in range(40)]
NOTHING = {"groups": 0, "cells": 0, "unclaimed": 0, "foreign": 0}


class Gene(FeatureBaseSchema):
    pass


class Cell(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def ingest(atlas: RaggedAtlas, uid: str, x: sp.csr_matrix) -> DatasetRecord:
    return add_from_anndata(
        atlas,
        ad.AnnData(
            X=x, obs=pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])]), var=pd.DataFrame(index=GENES)
        ),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid=uid),
        progress=False,
    )


def assert_exact(atlas: RaggedAtlas, expected: dict[str, sp.csr_matrix]) -> None:
    assert atlas.validate() == []
    adata = atlas.query().to_anndata()
    datasets = adata.obs["dataset_uid"].to_numpy()
    assert sorted(set(datasets)) == sorted(expected)
    for uid, x in expected.items():
        rows = np.flatnonzero(datasets == uid)
        order = np.argsort([int(name.rsplit(":", 1)[1][1:]) for name in adata.obs_names[rows]])
        got = sp.csr_matrix(adata.X[rows[order]])
        assert got.shape == x.shape and (got != x.astype(got.dtype)).nnz == 0, uid


def arrays(seaweed: Seaweed, prefix: str) -> dict[str, int]:
    """Path -> size of every object under ``prefix`` outside the two databases."""
    return {
        meta["path"]: meta["size"]
        for batch in obstore.list(seaweed.store(), prefix=prefix + "/")
        for meta in batch
        if not meta["path"].startswith((f"{prefix}/first.lancedb/", f"{prefix}/second.lancedb/"))
    }


def test_shared_prefix_above_the_databases_on_s3(seaweed: Seaweed, s3_root: str) -> None:
    kwargs: dict[str, Any] = seaweed.store_kwargs()
    prefix = s3_root.removeprefix("s3://lancell/")
    foreign = seaweed.store()
    obstore.put(foreign, f"{prefix}/notes/readme.txt", b"not lancell's")
    obstore.put(
        foreign, f"{prefix}/other_project/x.zarr/zarr.json", b'{"node_type": "group", "zarr_format": 3}'
    )
    atlases = {}
    for name in ("first", "second"):
        atlases[name] = RaggedAtlas.create(
            f"{s3_root}/{name}.lancedb",
            "cells",
            Cell,
            store=s3_root,
            registry_schemas={"gene_expression": Gene},
            store_kwargs=kwargs,
        )
        atlases[name].register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    first, second = atlases["first"], atlases["second"]
    assert location_in_store(first.store, first.db_uri) == "first.lancedb"
    x = {
        uid: synthetic_counts(30, len(GENES), 8, np.random.default_rng(seed))
        for seed, uid in enumerate("abcd")
    }
    ingest(first, "a", x["a"])
    ingest(first, "b", x["b"])
    v_first = first.snapshot()
    first.delete_dataset("b")  # kept: the snapshot references it
    ingest(second, "c", x["c"])
    v_second = second.snapshot()
    gone = ingest(second, "d", x["d"])
    second.delete_dataset("d")  # debris of the second atlas
    before = arrays(seaweed, prefix)
    assert f"{prefix}/notes/readme.txt" in before and f"{prefix}/{gone.zarr_group}/zarr.json" in before

    assert first.vacuum(grace=timedelta(0)) == NOTHING
    assert arrays(seaweed, prefix) == before
    assert second.vacuum(grace=timedelta(0)) == {**NOTHING, "groups": 1}
    assert arrays(seaweed, prefix) == {
        path: size for path, size in before.items() if not path.startswith(f"{prefix}/{gone.zarr_group}/")
    }
    assert obstore.list(seaweed.store(), prefix=f"{prefix}/first.lancedb/").collect()  # the databases stay
    assert obstore.list(seaweed.store(), prefix=f"{prefix}/second.lancedb/").collect()

    for name, version, expected in (
        ("first", v_first, {"a": x["a"], "b": x["b"]}),
        ("second", v_second, {"c": x["c"]}),
    ):
        assert_exact(
            RaggedAtlas.checkout(f"{s3_root}/{name}.lancedb", version, store_kwargs=kwargs), expected
        )
    assert_exact(RaggedAtlas.open(f"{s3_root}/first.lancedb", store_kwargs=kwargs), {"a": x["a"]})
    assert_exact(RaggedAtlas.open(f"{s3_root}/second.lancedb", store_kwargs=kwargs), {"c": x["c"]})
