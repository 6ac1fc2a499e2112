"""Vector and full-text search: exact neighbours, rank order, embeddings in obsm, no silent cap."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from lancedb.pydantic import Vector

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, GeneFeature
from lancell.errors import DataValueError, IngestError, QueryError, ShapeMismatchError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord, LancellBaseSchema, SparseZarrPointer


class EmbeddedCells(LancellBaseSchema):
    cell_type: str | None = None
    embedding: Vector(16) | None = None
    gene_expression: SparseZarrPointer | None = None


@pytest.fixture(scope="module")
def searchable(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    pbmc = BUNDLED[0].read()
    rng = np.random.default_rng(3)
    pbmc.obsm["X_emb"] = rng.normal(size=(pbmc.n_obs, 16)).astype(np.float32)
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        EmbeddedCells,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
        fts_columns=["cell_type"],
    )
    atlas.register_features(
        "gene_expression", pd.DataFrame({"uid": pbmc.var_names, "gene_symbol": pbmc.var_names})
    )
    add_from_anndata(
        atlas,
        pbmc,
        feature_space="gene_expression",
        zarr_layer="log_normalized",
        dataset_record=DatasetRecord(uid="pbmc"),
        obsm_columns={"X_emb": "embedding"},
        progress=False,
    )
    atlas.optimize()
    atlas.snapshot()
    return RaggedAtlas.checkout_latest(str(root / "db")), pbmc


def test_vector_search_returns_exact_nearest_neighbours(searchable):
    atlas, pbmc = searchable
    emb = pbmc.obsm["X_emb"]
    probe = emb[17] + 0.01
    out = atlas.query().search(probe).limit(25).to_anndata()
    expected = np.argsort(((emb - probe) ** 2).sum(axis=1), kind="stable")[:25]
    assert list(out.obs_names) == [f"pbmc:{pbmc.obs_names[i]}" for i in expected]
    assert np.all(np.diff(out.obs["distance"].to_numpy()) >= 0)
    np.testing.assert_array_equal(out.obsm["embedding"], emb[expected])
    np.testing.assert_array_equal(out[:, pbmc.var_names].X.toarray(), pbmc.X[expected].toarray())


SELECTED_SEARCH = """
import sys
import numpy as np
from lancell.atlas import RaggedAtlas

atlas = RaggedAtlas.checkout_latest(sys.argv[1])
query = atlas.query().search(np.zeros(16, np.float32)).limit(5).select(["cell_type"])
assert "distance" in query.to_pandas().columns and "distance" in query.to_anndata().obs.columns
"""


def test_a_vector_search_with_selected_columns_names_its_distance(searchable):
    """Lance warned on every such search that it adds ``_distance`` to selected columns only while a
    deprecated default lasts: the distance would vanish from select()ed answers after an upgrade."""
    import subprocess
    import sys

    atlas, _ = searchable
    done = subprocess.run(
        [sys.executable, "-c", SELECTED_SEARCH, atlas.db_uri],
        capture_output=True,
        text=True,
        env={**os.environ, "LANCE_LOG": "warn"},
        check=True,
    )
    assert "did not include `_distance`" not in done.stderr


def test_vector_search_with_filter_and_required_limit(searchable):
    atlas, pbmc = searchable
    emb = pbmc.obsm["X_emb"]
    mask = (pbmc.obs["cell_type"] == "Dendritic").to_numpy()
    probe = emb[0]
    out = atlas.query().where("cell_type = 'Dendritic'").search(probe).limit(5).to_arrow()
    candidates = np.flatnonzero(mask)
    expected = candidates[np.argsort(((emb[candidates] - probe) ** 2).sum(axis=1), kind="stable")[:5]]
    assert out.column("uid").to_pylist() == [f"pbmc:{pbmc.obs_names[i]}" for i in expected]
    with pytest.raises(QueryError, match="limit"):
        atlas.query().search(probe).to_arrow()
    with pytest.raises(QueryError):
        atlas.query().search("monocyte", query_type="vector")


def test_full_text_search_finds_cells_by_word(searchable):
    atlas, pbmc = searchable
    hits = atlas.query().search("monocyte").to_arrow()
    expected = int(pbmc.obs["cell_type"].str.contains("Monocyte").sum())
    assert hits.num_rows == expected > 10  # every match, not lancedb's default 10
    assert set(hits.column("cell_type").to_pylist()) == {"CD14+ Monocyte"}
    assert "score" in hits.column_names


def test_bad_embeddings_are_rejected(tmp_path):
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        EmbeddedCells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    pbmc = BUNDLED[0].read()
    atlas.register_features("gene_expression", pd.DataFrame({"uid": pbmc.var_names, "gene_symbol": "x"}))
    pbmc.obsm["X_bad"] = np.zeros((pbmc.n_obs, 3), np.float32)
    with pytest.raises(ShapeMismatchError):
        add_from_anndata(
            atlas,
            pbmc,
            feature_space="gene_expression",
            zarr_layer="log_normalized",
            obsm_columns={"X_bad": "embedding"},
        )
    with pytest.raises(IngestError, match="X_missing"):
        add_from_anndata(
            atlas,
            pbmc,
            feature_space="gene_expression",
            zarr_layer="log_normalized",
            obsm_columns={"X_missing": "embedding"},
        )
    huge = np.ones((pbmc.n_obs, 16))
    huge[3, 5] = 1e300  # finite, but not as float32: it was stored as inf
    pbmc.obsm["X_huge"] = huge
    with pytest.raises(DataValueError, match=r"obsm\['X_huge'\] holds 1e\+300, which does not fit float32"):
        add_from_anndata(
            atlas,
            pbmc,
            feature_space="gene_expression",
            zarr_layer="log_normalized",
            obsm_columns={"X_huge": "embedding"},
        )
    assert atlas.query().count() == 0
    # a sparse embedding was refused as "has shape ()"; it is read as the matrix it is
    pbmc.obsm["X_sparse"] = sp.csr_matrix(np.eye(pbmc.n_obs, 16, dtype=np.float32))
    add_from_anndata(
        atlas,
        pbmc,
        feature_space="gene_expression",
        zarr_layer="log_normalized",
        obsm_columns={"X_sparse": "embedding"},
        progress=False,
    )
    stored = np.stack(atlas.query().select(["embedding"]).to_pandas()["embedding"].to_numpy())
    assert np.array_equal(stored, np.eye(pbmc.n_obs, 16, dtype=np.float32))


def test_ann_index_built_above_threshold(searchable, tmp_path):
    import lancedb
    import pyarrow as pa

    from lancell.tables.indexes import build_indexes

    _, pbmc = searchable
    emb = np.tile(pbmc.obsm["X_emb"], (10, 1))
    table = lancedb.connect(str(tmp_path)).create_table(
        "cells",
        data=pa.table(
            {
                "cell_type": ["x"] * len(emb),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 16),
            }
        ),
    )
    assert build_indexes(table, [], vector_min_rows=len(emb) + 1) == []
    assert build_indexes(table, ["cell_type"], vector_min_rows=len(emb)) == ["cell_type", "embedding"]
    assert {i.index_type for i in table.list_indices()} == {"FTS", "IvfPq"}
    hits = table.search(emb[3], vector_column_name="embedding").limit(10).to_arrow()
    assert hits.num_rows == 10
    # cells deleted below the threshold: the index goes (it stayed, and searches stayed approximate where
    # exact ones are documented), the text index stays
    table.delete("cell_type = 'x'")
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb[:3].ravel()), 16)
    table.add(pa.table({"cell_type": ["y"] * 3, "embedding": vectors}))
    assert build_indexes(table, ["cell_type"], vector_min_rows=len(emb)) == ["cell_type"]
    assert {i.index_type for i in table.list_indices()} == {"FTS"}


def test_misuse_of_an_embedding_column_or_a_huge_limit_is_a_query_error(searchable):
    """count(group_by=<embedding>) raised pyarrow's ArrowNotImplementedError, limit(2**63) an OverflowError
    on reading, and a search's limit of 2**32 or more an OverflowError in Lance."""
    atlas, pbmc = searchable
    with pytest.raises(QueryError, match="cannot group by 'embedding', an embedding column"):
        atlas.query().count(group_by="embedding")
    with pytest.raises(
        QueryError, match=r"limit must be at most 9,223,372,036,854,775,807, got 9223372036854775808"
    ):
        atlas.query().limit(2**63)
    probe = pbmc.obsm["X_emb"][0]
    assert atlas.query().search(probe).limit(2**63 - 1).count() == pbmc.n_obs  # every cell, ranked
    assert atlas.query().search("monocyte").limit(2**32).count() == 129  # (text search too)
    with warnings.catch_warnings():  # the column indexed, named as one str: no warning of single letters
        warnings.simplefilter("error")
        assert atlas.query().search("monocyte", fts_columns="cell_type").count() == 129
    assert atlas.query().limit(2**63 - 1).count() == pbmc.n_obs


def test_hybrid_search_fuses_vector_and_text_rankings(searchable):
    atlas, pbmc = searchable
    emb = pbmc.obsm["X_emb"]
    out = atlas.query().search((emb[3], "monocyte"), query_type="hybrid").limit(10).to_arrow()
    uids = out.column("uid").to_pylist()
    assert out.num_rows == 10 and len(set(uids)) == 10
    assert uids[0] == f"pbmc:{pbmc.obs_names[3]}"  # the exact vector match ranks first in both lists' fusion
    nearest = {f"pbmc:{pbmc.obs_names[i]}" for i in np.argsort(((emb - emb[3]) ** 2).sum(axis=1))[:10]}
    types = out.column("cell_type").to_pylist()
    from_text = [t for uid, t in zip(uids, types, strict=True) if uid not in nearest]
    assert from_text and set(from_text) == {"CD14+ Monocyte"}  # the rest come from the text ranking
    assert np.all(np.diff(out.column("score").to_numpy()) <= 0)
    filtered = atlas.query().where("cell_type = 'Dendritic'")
    filtered = filtered.search((emb[3], "monocyte"), query_type="hybrid")
    assert set(filtered.limit(10).to_arrow().column("cell_type").to_pylist()) == {"Dendritic"}
    with pytest.raises(QueryError, match="embedding, text"):
        atlas.query().search("monocyte", query_type="hybrid")


def test_indexed_search_returns_exact_distances_and_exact_bypasses_the_index(searchable):
    from lancell.tables.indexes import build_indexes

    checkout, pbmc = searchable
    atlas = RaggedAtlas.open(checkout.db_uri)  # the live table: the checkout stays pinned before the index
    assert build_indexes(atlas.core.tables.cells, [], vector_min_rows=1) == ["embedding"]  # IVF-PQ
    emb, names = pbmc.obsm["X_emb"], np.array([f"pbmc:{n}" for n in pbmc.obs_names])
    rows = {uid: i for i, uid in enumerate(names)}
    for probe in np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32):
        true = ((emb - probe) ** 2).sum(axis=1)
        approximate = atlas.query().search(probe).limit(10).to_pandas()
        found = [rows[uid] for uid in approximate["uid"]]
        np.testing.assert_allclose(approximate["distance"], true[found], rtol=1e-5)  # re-ranked: exact
        exact = atlas.query().search(probe, exact=True).limit(10).to_pandas()
        assert exact["uid"].tolist() == names[np.argsort(true, kind="stable")[:10]].tolist()


@pytest.mark.parametrize("kind", ["scan", "vector", "text", "hybrid"])
def test_limit_zero_selects_no_cell_on_every_path(searchable, kind):
    """LanceDB reads ``limit(0)`` as no limit: ``to_batches`` and every search returned every row."""
    atlas, pbmc = searchable
    probe = pbmc.obsm["X_emb"][3]
    query = {
        "scan": atlas.query(),
        "vector": atlas.query().search(probe),
        "text": atlas.query().search("monocyte"),
        "hybrid": atlas.query().search((probe, "monocyte"), query_type="hybrid"),
    }[kind].limit(0)
    assert query.count() == 0
    assert query.to_arrow().num_rows == 0 and len(query.to_pandas()) == 0
    assert query.to_anndata().n_obs == 0
    assert sum(batch.n_obs for batch in query.to_batches(100)) == 0
    assert query.count(group_by="cell_type").sum() == 0
    assert len(query.to_cell_dataset("gene_expression", "log_normalized")) == 0


def test_a_hybrid_search_matching_nothing_has_the_columns_of_one_matching_something(searchable):
    """An empty hybrid answer held LanceDB's ``_distance``, ``_score`` and ``_relevance_score``: two
    columns named ``score``, and ``to_anndata()`` failed with a bare KeyError."""
    atlas, pbmc = searchable
    query = atlas.query().search((pbmc.obsm["X_emb"][3], "monocyte"), query_type="hybrid").limit(5)
    empty = query.where("cell_type = 'no such type'")
    assert empty.to_arrow().schema.names == query.to_arrow().schema.names
    assert empty.to_anndata().obs.columns.tolist() == query.to_anndata().obs.columns.tolist()


def test_text_search_errors_say_what_to_do(searchable, tmp_path):
    """Without an index, or on a misspelled column, Lance's words came back as a query that "failed for
    filter None", one of them ending in the place in Lance's Rust source that raised it."""
    atlas, _ = searchable
    with pytest.raises(QueryError, match=r"fts_columns \['celltype'\] are not cell columns"):
        atlas.query().search("monocyte", fts_columns=["celltype"])
    plain = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", EmbeddedCells, registry_schemas={"gene_expression": GeneFeature}
    )
    with pytest.raises(
        QueryError, match=r"^query failed: .* fts_columns=\[\.\.\.\] .* optimize\(\)"
    ) as raised:
        plain.query().search("monocyte").count()
    assert "filter None" not in str(raised.value) and ".rs:" not in str(raised.value)
    assert "search(..., fts_columns=[...]) reads them without an index" in str(raised.value)
    assert plain.query().search("monocyte", fts_columns="cell_type").count() == 0  # (that remedy runs)


def test_text_search_without_its_index_warns_that_words_match_as_written(tmp_path):
    """Before optimize() built the index (and in a snapshot taken then), search("monocyte",
    fts_columns=[...]) matched "monocyte" as written; with the index, lower-cased stems (129 cells): other
    cells for the same call, without a word."""
    from lancell.errors import LancellWarning

    pbmc = BUNDLED[0].read()
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        EmbeddedCells,
        registry_schemas={"gene_expression": GeneFeature},
        fts_columns=["cell_type"],
    )
    atlas.register_features(
        "gene_expression", pd.DataFrame({"uid": pbmc.var_names, "gene_symbol": pbmc.var_names})
    )
    add_from_anndata(
        atlas,
        pbmc,
        feature_space="gene_expression",
        zarr_layer="log_normalized",
        dataset_record=DatasetRecord(uid="pbmc"),
        progress=False,
    )
    before = atlas.snapshot()
    unindexed = r"text search on \['cell_type'\] without a full-text index"
    with pytest.warns(LancellWarning, match=unindexed) as said:
        assert atlas.query().search("monocyte", fts_columns=["cell_type"]).count() == 0  # "Monocyte" only
    assert said[0].filename == __file__
    atlas.optimize()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)
        assert atlas.query().search("monocyte", fts_columns=["cell_type"]).count() == 129
    # a quoted phrase: its words in order, with the index as without it (it was refused once indexed)
    assert atlas.query().search('"CD14+ Monocyte"').count() == 129
    assert atlas.query().search('"Monocyte CD14+"').count() == 0
    atlas.core.tables.cells.create_fts_index("cell_type", replace=True)  # an older lancell's, no positions
    with pytest.raises(QueryError, match=r"no word positions .*: optimize\(\) of the live atlas builds it"):
        atlas.query().search('"CD14+ Monocyte"').count()  # (Lance's advice named an index option)
    pinned = RaggedAtlas.checkout(str(tmp_path / "db"), before)  # that version has no index
    with pytest.warns(LancellWarning, match="without a full-text index"):
        pinned.query().search("monocyte", fts_columns=["cell_type"]).to_pandas()
