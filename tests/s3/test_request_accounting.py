"""Request accounting on a real S3 server: a query costs GETs per shard touched, not per chunk decoded.

The arrays live alone in the ``lancell-arrays`` bucket, so SeaweedFS's per-bucket request counters
(``SeaweedFS_s3_request_total``) count exactly the zarr reads of a query (the LanceDB reads go to another
bucket). The batched shard reader reads a shard's index once and all its needed chunks with one
``obstore.get_ranges``, which the client merges into one ranged GET when the ranges are close.
"""

from __future__ import annotations

import uuid

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from s3server import ARRAYS_BUCKET, BUCKET, Seaweed

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage import groups
from lancell.storage.groups import GroupGeometry
from lancell.storage.reader import array_reader
from lancell.synthetic import synthetic_counts
from lancell.tables.schema import DatasetRecord

N_CELLS, N_GENES, NNZ_PER_CELL = 3000, 5000, 1000
ARRAYS = ("csr/indices", "csr/layers/counts")


@pytest.fixture(scope="module")
def sharded_atlas(seaweed: Seaweed) -> dict[str, object]:
    """3,000 synthetic cells, ~3M nnz: three 2^20-element shards of 64 chunks per array."""
    root = uuid.uuid4().hex[:12]
    db_uri = f"s3://{BUCKET}/{root}/db"
    atlas = RaggedAtlas.create(
        db_uri,
        "cells",
        CellSchema,
        store=f"s3://{ARRAYS_BUCKET}/{root}",
        registry_schemas={"gene_expression": GeneFeature},
        store_kwargs=seaweed.store_kwargs(),
    )
    genes = [f"G{i:05d}" for i in range(N_GENES)]
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    x = synthetic_counts(N_CELLS, N_GENES, NNZ_PER_CELL, np.random.default_rng(0))
    obs = pd.DataFrame(index=[f"c{i}" for i in range(N_CELLS)])
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))
    with pytest.MonkeyPatch.context() as patch:  # a geometry that gives this small atlas three shards
        patch.setattr(groups, "DEFAULT_GEOMETRY", GroupGeometry(sparse_chunk=16_384, sparse_shard=2**20))
        record = add_from_anndata(
            atlas,
            adata,
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid="s"),
        )
    atlas.optimize()
    atlas.snapshot()
    return {"db_uri": db_uri, "group": record.zarr_group, "expected": x}


def _measure(seaweed: Seaweed, atlas_info: dict[str, object], uids: np.ndarray) -> dict[str, object]:
    atlas = RaggedAtlas.checkout_latest(atlas_info["db_uri"], store_kwargs=seaweed.store_kwargs())
    query = atlas.query().where("uid IN (" + ", ".join(f"'{u}'" for u in uids) + ")")
    before = seaweed.request_counts(ARRAYS_BUCKET)
    adata = query.to_anndata()
    after = seaweed.request_counts(ARRAYS_BUCKET)
    requests = after - before
    group = atlas.core.zarr_root[atlas_info["group"]]
    readers = [array_reader(group[path]) for path in ARRAYS]
    rows = np.array([int(u.split(":c")[1]) for u in adata.obs_names])
    assert np.array_equal(adata.X.toarray(), atlas_info["expected"][rows].toarray())
    return {
        "cells": adata.n_obs,
        "gets": sum(n for key, n in requests.items() if key.startswith("GET")),
        "ranged_gets": requests["GET 206"],
        "other": {k: n for k, n in requests.items() if not k.startswith("GET")},
        "shards": sum(r.shards_touched for r in readers),
        "chunks": sum(r.chunks_decoded for r in readers),
    }


def test_gets_scale_with_shards_touched_not_chunks(seaweed: Seaweed, sharded_atlas: dict[str, object]):
    atlas = RaggedAtlas.checkout_latest(sharded_atlas["db_uri"], store_kwargs=seaweed.store_kwargs())
    cells = atlas.query().select(["uid", "gene_expression"]).to_arrow()
    uids = np.asarray(cells.column("uid").to_pylist())
    ends = np.asarray([p["end"] for p in cells.column("gene_expression").to_pylist()])
    first_shard = np.flatnonzero(ends <= 2**20)
    few = first_shard[:: first_shard.size // 20][:20]
    measured = {
        "20 cells, 1 shard": _measure(seaweed, sharded_atlas, uids[few]),
        f"{first_shard.size} cells, 1 shard": _measure(seaweed, sharded_atlas, uids[first_shard]),
        f"{uids.size} cells, 3 shards": _measure(seaweed, sharded_atlas, uids),
    }
    small, whole_shard, everything = measured.values()
    assert (small["shards"], whole_shard["shards"], everything["shards"]) == (2, 2, 6)  # x 2 arrays
    assert small["chunks"] == 40 and whole_shard["chunks"] == 128 and everything["chunks"] > 360
    for m in measured.values():
        assert m["other"] == {}  # reads only: no PUT, LIST or DELETE
        # one index read + one merged get_ranges per (array, shard)
        assert m["ranged_gets"] == 2 * m["shards"]
    # the same GETs for 20 cells as for the whole shard (64 chunks of each array); 3 shards: 3x the data GETs
    # metadata GETs (zarr.json) are a small fixed cost that varies by one or two with caching
    assert abs(small["gets"] - whole_shard["gets"]) <= 2
    assert abs((everything["gets"] - everything["ranged_gets"]) - (small["gets"] - small["ranged_gets"])) <= 2
    assert everything["gets"] < everything["chunks"] / 10
