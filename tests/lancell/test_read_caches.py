"""The read path's per-process caches (lancell.storage.bounded_cache) bound memory, never answers: a query
over more layouts than the layout cache holds failed ("layout ... is not stored": the call evicted what it had
just read), and so did two threads whose queries together read more."""

from __future__ import annotations

import gc
import threading
import weakref

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage import reader
from lancell.storage.bounded_cache import BoundedCache
from lancell.storage.opened_nodes import OpenedNodes
from lancell.tables import registry
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

GENES = [f"G{i}" for i in range(12)]


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class Cells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def _panel(k: int) -> list[str]:
    return GENES[k : k + 5]  # dataset k measures genes k..k+4: a layout of its own


@pytest.fixture(scope="module")
def atlas(tmp_path_factory: pytest.TempPathFactory) -> RaggedAtlas:
    root = tmp_path_factory.mktemp("caches")
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        Cells,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES, "gene_symbol": GENES}))
    for k in range(6):
        x = sp.csr_matrix(np.arange(1, 16, dtype=np.int32).reshape(3, 5) + 100 * k)
        obs = pd.DataFrame(index=[f"c{j}" for j in range(3)])
        add_from_anndata(
            atlas,
            ad.AnnData(x, obs=obs, var=pd.DataFrame(index=_panel(k))),
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=f"d{k}"),
            progress=False,
        )
    return atlas


def _check(out: ad.AnnData) -> None:
    """Every cell's values under its dataset's genes, zeros elsewhere."""
    dense = pd.DataFrame(out.X.toarray(), index=out.obs["dataset_uid"].astype(str), columns=out.var_names)
    for k in sorted({int(uid[1:]) for uid in dense.index}):
        rows = dense.loc[f"d{k}"].to_numpy()
        expected = np.arange(1, 16).reshape(3, 5) + 100 * k
        np.testing.assert_array_equal(rows[:, [out.var_names.get_loc(g) for g in _panel(k)]], expected)
        others = [g for g in out.var_names if g not in _panel(k)]
        assert not rows[:, [out.var_names.get_loc(g) for g in others]].any()


def test_a_query_over_more_layouts_than_the_cache_holds_reads_them_all(atlas, monkeypatch):
    monkeypatch.setattr(registry, "_GLOBAL_INDICES", BoundedCache(2))
    out = atlas.query().to_anndata()
    assert out.n_obs == 18
    _check(out)


def test_threads_whose_queries_read_more_layouts_than_the_cache_holds_get_exact_answers(atlas, monkeypatch):
    monkeypatch.setattr(registry, "_GLOBAL_INDICES", BoundedCache(3))
    failures: list[BaseException] = []

    def run(where: str) -> None:
        try:
            for _ in range(15):
                _check(atlas.query().where(where).to_anndata())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in ("dataset_uid < 'd3'", "dataset_uid >= 'd3'")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_the_cache_keeps_the_entries_used_last():
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # now the last used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)


def test_a_closed_handle_leaves_no_store_behind_in_the_reader_cache(atlas):
    """The shard readers' cache held every handle's obstore store until 16,384 arrays were cached: a service
    opening the atlas for each request kept every store and, on S3, its connections (out of file descriptors
    after ~250 requests). A handle's readers now go soon after it; one handle still reuses its own."""
    gone = []
    for _ in range(3):
        handle = RaggedAtlas.open(atlas.db_uri, read_only=True)
        _check(handle.query().to_anndata())
        gone.append(weakref.ref(handle.store))
        del handle
    gc.collect()
    kept = RaggedAtlas.open(atlas.db_uri, read_only=True)
    _check(kept.query().to_anndata())  # (the next read forgets what the collected handles cached)
    assert [ref() for ref in gone] == [None, None, None]
    reads = []
    with pytest.MonkeyPatch.context() as patch:
        original = reader.ShardedArrayReader

        def counted(*args, **kwargs):
            reads.append(args[1])
            return original(*args, **kwargs)

        patch.setattr(reader, "ShardedArrayReader", counted)
        reused = RaggedAtlas.open(atlas.db_uri, read_only=True)
        for _ in range(3):
            _check(reused.query().to_anndata())
    assert reads and len(reads) == len(set(reads))  # each array's reader built once, then reused


def test_opened_nodes_forget_a_group_with_what_lies_under_it_only():
    """Forgetting a group's nodes scanned every node the handle had opened (quadratic in the datasets a query
    plans: ~0.8 s of a fresh plan at 1,500 datasets); it must still forget exactly what lies under it."""
    nodes = OpenedNodes()
    for path in ("a", "a/csr/indices", "a/csc/indptr[:]", "a[listed]", "ab", "ab/csr/indices", "b/csr"):
        nodes.put(path, path.upper())
    nodes.forget_under("a")
    assert [p for p in ("a", "a/csr/indices", "a/csc/indptr[:]") if p in nodes] == []
    assert [nodes.get(p) for p in ("a[listed]", "ab", "ab/csr/indices", "b/csr")] == [
        "A[LISTED]",
        "AB",
        "AB/CSR/INDICES",
        "B/CSR",
    ]
    nodes.forget("ab")
    assert "ab" not in nodes and nodes.get("ab/csr/indices") == "AB/CSR/INDICES"
    nodes.put("a/csr/indices", 1)  # opened again after it was forgotten
    nodes.forget_under("a")
    assert "a/csr/indices" not in nodes


def test_an_open_and_a_query_ask_the_store_for_zarr_v3_metadata_only(atlas, monkeypatch):
    """zarr probed v2's .zgroup, .zattrs and .zmetadata beside zarr.json at every root open: three requests
    more per handle (and per loader worker) on an object store."""
    import zarr.storage

    asked = []
    get = zarr.storage.ObjectStore.get

    async def recorded(store, key, *args, **kwargs):
        asked.append(key)
        return await get(store, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.ObjectStore, "get", recorded)
    for read_only in (True, False):
        opened = RaggedAtlas.open(atlas.db_uri, read_only=read_only)
        _check(opened.query().to_anndata())
    assert asked and not [
        key for key in asked if key.rsplit("/", 1)[-1] in (".zgroup", ".zattrs", ".zmetadata")
    ]
