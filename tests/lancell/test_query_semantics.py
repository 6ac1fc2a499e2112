"""What a query means, on a small atlas with awkward columns: builders that return new queries, keyword
columns named like SQL keywords, integers beyond float precision, counts and batches of a search, search
embeddings that are refused, and layers or features of another feature space."""

from __future__ import annotations

import enum
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from lancedb.pydantic import Vector

from lancell.atlas import RaggedAtlas
from lancell.errors import LancellWarning, QueryError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.ingest.modalities import attach_modality
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

N = 10
BIG = 2**53 + 1  # the first integer float64 cannot hold


class Feature(FeatureBaseSchema):
    pass


class AwkwardCells(LancellBaseSchema):
    null: str | None = None
    true: bool | None = None
    select: str | None = None
    k: int | None = None
    desc: str | None = None
    weight: float | None = None
    emb: Vector(4) | None = None
    gene_expression: SparseZarrPointer | None = None
    protein: SparseZarrPointer | None = None


@pytest.fixture(scope="module")
def obs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "null": ["x", None, "y", None, "x", "x", None, "y", "y", "x"],
            "true": [True, False, False, None, True, False, True, None, False, False],
            "select": list("pqpqpqpqpp"),
            "k": pd.array([BIG, None, -(2**63), 7, 7, 2**63 - 1, 0, 1, 2, 3], dtype="Int64"),
            "desc": ["monocyte"] * 3 + ["t cell"] * 7,
            "weight": [-0.0, 0.0, 0.0, None, 1.5, -0.0, -np.inf, -0.0, 0.0, np.inf],
        },
        index=[f"c{i}" for i in range(N)],
    )


@pytest.fixture(scope="module")
def atlas(tmp_path_factory, obs) -> RaggedAtlas:
    root = tmp_path_factory.mktemp("awkward")
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        AwkwardCells,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": Feature, "protein": Feature},
        layers={"gene_expression": ["counts", "log_normalized"], "protein": ["counts"]},
        fts_columns=["desc"],
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": ["g0", "g1"]}))
    atlas.register_features("protein", pd.DataFrame({"uid": ["p0", "p1"]}))
    x = sp.csr_matrix(np.arange(2 * N, dtype=np.float32).reshape(N, 2))
    genes = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=["g0", "g1"]))
    genes.obsm["X_emb"] = np.random.default_rng(0).normal(size=(N, 4)).astype(np.float32)
    add_from_anndata(
        atlas,
        genes,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="d"),
        obsm_columns={"X_emb": "emb"},
        progress=False,
    )
    proteins = ad.AnnData(x, obs=pd.DataFrame(index=obs.index), var=pd.DataFrame(index=["p0", "p1"]))
    attach_modality(
        atlas,
        proteins,
        cells_of="d",
        feature_space="protein",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="dp"),
        progress=False,
    )
    atlas.optimize()
    return atlas


def _state(query) -> tuple[object, object]:
    return query.selection, query._reads


def test_builder_calls_return_new_queries_and_leave_theirs_unchanged(atlas):
    base = atlas.query().on_unmeasured("drop")
    monocytes, t_cells = base.where(desc="monocyte"), base.where(desc="t cell")
    assert (monocytes.count(), t_cells.count(), base.count()) == (3, 7, N)
    before = _state(base)
    derived = [
        base.where("k > 0"),
        base.search("monocyte"),
        base.limit(2),
        base.select(["desc"]),
        base.feature_space("gene_expression"),
        base.layers("gene_expression", "counts"),
        base.features(["g0"], "gene_expression"),
        base.all_features("gene_expression"),
        base.feature_join("intersection"),
        base.on_unmeasured("keep"),
        base.reading("gene_expression", "counts", ["g1"]),
    ]
    assert all(query is not base for query in derived)
    assert _state(base) == before
    out = base.to_anndata()
    assert out.shape == (N, 2) and out.uns["lancell"]["on_unmeasured"] == "drop"
    assert list(base.features(["g1"], "gene_expression").to_anndata().var_names) == ["g1"]
    assert list(base.to_anndata().var_names) == ["g0", "g1"]


def test_keyword_columns_named_like_sql_keywords_are_columns(atlas, obs):
    assert atlas.query().where(null=None).count() == int(obs["null"].isna().sum())
    assert atlas.query().where(null="x").count() == int((obs["null"] == "x").sum())
    assert atlas.query().where(true=False).count() == int((obs["true"] == False).sum())  # noqa: E712
    assert atlas.query().where(true=True).count() == int((obs["true"] == True).sum())  # noqa: E712
    assert atlas.query().where(select="p").count() == int((obs["select"] == "p").sum())


def test_keyword_int64_extremes(atlas):
    assert atlas.query().where(k=-(2**63)).to_pandas()["k"].tolist() == [-(2**63)]
    assert atlas.query().where(k=2**63 - 1).to_pandas()["k"].tolist() == [2**63 - 1]
    assert atlas.query().where(k=(-(2**63), 0)).count() == 2
    assert atlas.query().where(k=[-(2**63), BIG]).count() == 2


def test_to_pandas_keeps_integers_beyond_float_precision_next_to_nulls(atlas, obs):
    frame = atlas.query().to_pandas()
    assert frame["k"].dtype == pd.Int64Dtype()
    assert frame["k"].tolist() == obs["k"].tolist()  # BIG would be rounded by a float64 column
    assert frame["k"].tolist() == atlas.query().to_anndata().obs["k"].tolist()


def test_count_by_a_column_keeps_its_values_and_dtype_next_to_nulls(atlas, obs):
    """``count(group_by=)`` built its index from Python values: integers beyond float precision next to a
    null were rounded (a float64 index), booleans an object index; it is the obs column's dtype."""
    for column, dtype in (("k", pd.Int64Dtype()), ("true", pd.BooleanDtype())):
        counted = atlas.query().count(group_by=column)
        assert counted.index.dtype == dtype
        expected = obs[column].astype(dtype).value_counts(dropna=False)
        assert counted.sort_index().to_dict() == expected.sort_index().to_dict()
    assert BIG in atlas.query().count(group_by="k").index


def test_count_by_a_float_column_groups_as_its_filters_compare(atlas):
    """-0.0 and 0.0 were two groups (Arrow groups floats by their bits) where where(weight=0.0), where(
    weight=-0.0) and "weight = 0" all match both."""
    counted = atlas.query().count(group_by="weight")
    assert counted.index.dtype == np.float64 and counted[counted.index.isna()].tolist() == [1]  # the null
    assert counted[counted.index.notna()].to_dict() == {0.0: 6, 1.5: 1, -np.inf: 1, np.inf: 1}
    zeros = [
        atlas.query().where(weight=0.0),
        atlas.query().where(weight=-0.0),
        atlas.query().where("weight = 0"),
    ]
    assert [query.count() for query in zeros] == [6, 6, 6]


def test_keyword_filters_select_the_infinities_ingestion_stores(atlas):
    """where(weight=float("inf")) was refused as "not a finite number" (and SQL has no literal for it) while
    ingestion stores infinities."""
    assert atlas.query().where(weight=np.inf).to_pandas()["uid"].tolist() == ["d:c9"]
    assert atlas.query().where(weight=-np.inf).count() == 1
    assert atlas.query().where(weight=[np.inf, 1.5]).count() == 2
    assert atlas.query().where(weight=(1.0, np.inf)).count() == 2  # a range up to infinity holds it


def test_a_boolean_column_stays_boolean_next_to_nulls_and_writes_to_h5ad(atlas, obs, tmp_path):
    """A boolean column came back as objects (True/False/None) where a cell read held a null, and
    ``write_h5ad`` refused it; it is pandas' nullable ``boolean`` whichever cells are read."""
    everything = atlas.query().to_anndata()
    without_nulls = atlas.query().where("true IS NOT NULL").to_anndata()
    for frame in (everything.obs, without_nulls.obs, atlas.query().to_pandas()):
        assert frame["true"].dtype == pd.BooleanDtype()
    assert everything.obs["true"].array.equals(pd.array(obs["true"].tolist(), dtype="boolean"))
    everything.write_h5ad(tmp_path / "out.h5ad")
    assert ad.read_h5ad(tmp_path / "out.h5ad").obs["true"].tolist() == everything.obs["true"].tolist()


def test_count_counts_the_rows_of_a_search(atlas):
    text = atlas.query().search("monocyte")
    assert text.count() == len(text.to_pandas()) == text.to_anndata().n_obs == 3
    assert text.count(group_by="desc").to_dict() == {"monocyte": 3}
    vector = atlas.query().where(desc="t cell").search(np.zeros(4)).limit(4)
    assert vector.count() == len(vector.to_pandas()) == 4
    assert vector.count(group_by="desc").to_dict() == {"t cell": 4}


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        (np.zeros(3), r"one vector of 4 values \(the width of 'emb'\), got an array of shape \(3,\)"),
        (np.zeros((2, 4)), r"got an array of shape \(2, 4\)"),
        (np.full(4, np.nan), r"holds 4 NaN or infinite values"),
        (np.array([0.0, np.inf, 0.0, 0.0]), r"holds 1 NaN or infinite values"),
        ([0.0, "a", 0.0, 0.0], r"must be numbers"),
    ],
)
def test_search_embedding_is_one_finite_vector_of_the_column_width(atlas, embedding, message):
    with pytest.raises(QueryError, match=message):
        atlas.query().search(embedding)
    with pytest.raises(QueryError, match=message):
        atlas.query().search((embedding, "monocyte"))


def test_options_a_search_does_not_use_are_refused(atlas):
    with pytest.raises(QueryError, match="not text search"):
        atlas.query().search("monocyte", exact=True)
    with pytest.raises(QueryError, match="not text search"):
        atlas.query().search("monocyte", vector_column_name="emb")
    with pytest.raises(QueryError, match="not vector search"):
        atlas.query().search(np.zeros(4), fts_columns="desc")
    with pytest.raises(QueryError, match="text search needs a string"):
        atlas.query().search(np.zeros(4), query_type="fts")


def test_embedding_and_text_is_a_hybrid_search(atlas):
    auto = atlas.query().search((np.zeros(4), "monocyte")).limit(5).to_pandas()
    hybrid = atlas.query().search((np.zeros(4), "monocyte"), query_type="hybrid").limit(5).to_pandas()
    assert auto["uid"].tolist() == hybrid["uid"].tolist() and "score" in auto.columns


@pytest.mark.parametrize(
    "search",
    [
        lambda q: q.search("monocyte"),
        lambda q: q.search(np.zeros(4)).limit(5),
        lambda q: q.search((np.zeros(4), "monocyte")).limit(5),
    ],
    ids=["text", "vector", "hybrid"],
)
def test_to_batches_of_a_search_equal_to_anndata(atlas, search):
    query = search(atlas.query())
    whole = query.to_anndata()
    batches = list(query.to_batches(2))
    assert [b.n_obs for b in batches] == [2] * (whole.n_obs // 2) + [1] * (whole.n_obs % 2)
    joined = ad.concat(batches)
    assert list(joined.obs_names) == list(whole.obs_names)
    pd.testing.assert_frame_equal(joined.obs, whole.obs, check_categorical=False)
    np.testing.assert_array_equal(joined.X.toarray(), whole.X.toarray())


def test_layers_and_features_of_another_feature_space_are_refused(atlas):
    with pytest.raises(
        QueryError, match="features\\(\\) names feature space 'protein' but layers\\(\\) chose"
    ):
        atlas.query().layers("gene_expression", "log_normalized").features(["p0"], "protein")
    with pytest.raises(
        QueryError, match="layers\\(\\) names feature space 'protein' but features\\(\\) chose"
    ):
        atlas.query().features(["g0"], "gene_expression").layers("protein", "counts")
    with pytest.raises(QueryError, match="one feature space"):
        atlas.query().layers("gene_expression", "counts").feature_space("protein")
    with pytest.raises(QueryError, match="one feature space"):
        atlas.query().feature_space("protein").all_features("gene_expression")
    same = atlas.query().layers("protein", "counts").features(["p1"], "protein").to_anndata()
    assert same.shape == (N, 1) and same.uns["lancell"]["feature_space"] == "protein"
    both = atlas.query().features(["p1"], "protein").to_mudata()
    assert both["protein"].shape == (N, 1) and both["gene_expression"].shape == (N, 2)


def test_every_registry_feature_joined_by_intersection_is_refused(atlas):
    """all_features() with feature_join("intersection") returned the intersection: column j no longer global
    index j (to_cell_dataset(features="registry") too)."""
    message = r"all_features\(\) keeps every registry feature .* would keep only"
    with pytest.raises(QueryError, match=message):
        atlas.query().all_features("gene_expression").feature_join("intersection")
    with pytest.raises(QueryError, match=message):
        atlas.query().feature_join("intersection").all_features("gene_expression")
    with pytest.raises(QueryError, match=message):
        atlas.query().feature_join("intersection").reading("gene_expression", "counts", "registry")


def test_a_feature_named_twice_is_refused(atlas):
    """A repeated name gave one column fewer than the names given: every column after it one place off."""
    query = atlas.query().layers("gene_expression", "counts")
    with pytest.raises(QueryError, match=r"features named twice .*: 'g1' \(as 'g1'\)"):
        query.features(["g1", "g0", "g1"], "gene_expression").to_anndata()
    with pytest.raises(QueryError, match=r"'G0' \(as 'g0'\)"):
        query.features(["g0", "G0"], "gene_expression", case_sensitive=False).to_anndata()
    assert list(query.features(["g1", "g0"], "gene_expression").to_anndata().var_names) == ["g1", "g0"]


def test_a_text_search_asks_lance_for_its_score(atlas, capfd):
    """A text search reading chosen columns (count(), select()) left Lance to add ``_score`` by a deprecated
    default, which printed a warning to stderr on every call."""
    text = atlas.query().select("desc").search("monocyte")
    assert text.count() == 3 and "score" in text.to_pandas().columns
    assert "_score" not in capfd.readouterr().err


def test_a_limit_is_a_count_not_a_bool(atlas):
    """limit(True) was limit(1), and count() then returned True."""
    for flag in (True, False):
        with pytest.raises(QueryError, match=f"limit must be a non-negative integer, got {flag!r}"):
            atlas.query().limit(flag)


def test_a_limit_counts_the_cells_drop_returns(tmp_path):
    # the limit was taken before the unmeasured cells were dropped: the first rows were all unmeasured and
    # limit(2) returned no cell
    class Cells(LancellBaseSchema):
        gene_expression: SparseZarrPointer | None = None

    atlas = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", Cells, registry_schemas={"gene_expression": FeatureBaseSchema}
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": ["g0", "g1"]}))
    for uid, layer, value in [("a", "log_normalized", 0.5), ("b", "counts", 3.0)]:
        x = sp.csr_matrix(np.full((3, 2), value, np.float32))
        adata = ad.AnnData(
            x, obs=pd.DataFrame(index=["c0", "c1", "c2"]), var=pd.DataFrame(index=["g0", "g1"])
        )
        add_from_anndata(
            atlas,
            adata,
            feature_space="gene_expression",
            zarr_layer=layer,
            dataset_record=DatasetRecord(uid=uid),
            progress=False,
        )
    dropped = atlas.query().layers("gene_expression", "counts").on_unmeasured("drop")
    limited = dropped.limit(2)
    out = limited.to_anndata()
    assert out.obs["dataset_uid"].tolist() == ["b", "b"] and (out.X.toarray() == 3).all()
    assert len(limited.to_cell_dataset("gene_expression", "counts")) == 2
    assert dropped.limit(0).to_anndata().n_obs == 0
    both = atlas.query().layers("gene_expression", ["counts", "log_normalized"]).on_unmeasured("drop")
    assert both.limit(2).to_anndata().n_obs == 0  # no dataset stores both
    # the datasets not selected do not matter: a's layer is the only one selected
    assert atlas.query().where(dataset_uid="a").on_unmeasured("drop").limit(2).to_anndata().n_obs == 2
    with pytest.raises(QueryError, match=r"choose with .layers\(\)"):
        atlas.query().on_unmeasured("drop").limit(6).to_anndata()
    # count() and the metadata terminals return the rows the readers return (they counted a's cells too)
    for query in (dropped, limited):
        n = query.to_anndata().n_obs
        assert query.count() == len(query.to_pandas()) == query.to_arrow().num_rows == n
        assert query.count(group_by="dataset_uid")["cells"].to_dict() == {"b": n}
        assert sum(batch.n_obs for batch in query.to_batches(1)) == n


def test_query_arguments_of_another_kind_are_refused(atlas):
    """to_batches("10") raised a builtin TypeError, to_batches(True) read one cell per batch, and grouping by
    a pointer column raised pyarrow's ArrowNotImplementedError."""
    for size in ("10", None, 2.5, True, 0):
        with pytest.raises(QueryError, match=f"batch_size must be a positive integer, got {size!r}"):
            next(atlas.query().to_batches(size))
    with pytest.raises(QueryError, match="cannot group by 'gene_expression', a feature space's pointer"):
        atlas.query().count(group_by="gene_expression")


def test_a_batch_size_beyond_32_bits_reads_every_cell_in_one_batch(atlas):
    """to_batches(2**32) raised Lance's OverflowError (it reads a batch size of 32 bits)."""
    n = atlas.query().count()
    for size in (2**32, 2**63, 2**70):
        assert [batch.n_obs for batch in atlas.query().to_batches(size)] == [n]
        assert [batch.n_obs for batch in atlas.query().search("monocyte").to_batches(size)] == [3]


def test_lists_of_names_are_read_as_lists_in_their_order(atlas):
    """select("null") read the column names "n", "u", "l"; features() of a set took its arbitrary order and
    of a generator raised a builtin TypeError; limit() refused a NumPy integer that to_batches() took."""
    kept = {"uid", "dataset_uid", "gene_expression", "protein"}  # identity and pointers are always kept
    assert set(atlas.query().select("null").to_pandas().columns) == kept | {"null"}
    assert set(atlas.query().select(pd.Index(["k", "null"])).to_pandas().columns) == kept | {"null", "k"}
    with pytest.raises(QueryError, match=r"features\(\) needs a list of names in the order wanted, got set"):
        atlas.query().features({"g1", "g0"}, "gene_expression")
    assert set(atlas.query().select({"k", "null"}).to_pandas().columns) == kept | {"null", "k"}  # table order
    ordered = atlas.query().features({"g1": 0, "g0": 1}.keys(), "gene_expression")
    assert ordered.to_anndata().var_names.tolist() == ["g1", "g0"]
    with pytest.raises(QueryError, match=r"features\(\) needs a list of names, got the string 'g0'"):
        atlas.query().features("g0", "gene_expression")
    with pytest.raises(QueryError, match=r"select\(\) needs names \(strings\), got \[3\]"):
        atlas.query().select(["k", 3])
    with pytest.raises(QueryError, match="metadata_columns needs a list of names in the order wanted"):
        atlas.query().to_cell_dataset("gene_expression", "counts", metadata_columns=None)
    generated = atlas.query().features((name for name in ["g1", "g0"]), "gene_expression")
    assert generated.to_anndata().var_names.tolist() == ["g1", "g0"]
    assert atlas.query().limit(np.int64(2)).count() == 2
    with pytest.raises(QueryError, match=r"registry: \['nope'\]"):  # (it read [np.str_('nope')])
        atlas.query().features(np.array(["g1", "nope"]), "gene_expression").to_anndata()

    class Gene(str, enum.Enum):  # noqa: UP042 (its str() is "Gene.G1", unlike a StrEnum's)
        G1 = "g1"

    named = atlas.query().features([Gene.G1, "g0"], "gene_expression").to_anndata()  # (not 'Gene.G1')
    assert named.var_names.tolist() == ["g1", "g0"]


def test_a_second_choice_never_silently_replaces_the_first(atlas):
    """features(["a"]).features(["b"]) read only b, layers() twice the last; a second search() replaced the
    first. The same choice again is no conflict (the loader's reading() repeats the query's)."""
    query = atlas.query().features(["p1"], "protein")
    with pytest.raises(QueryError, match=r"features\(\) would replace the features \['p1'\]"):
        query.features(["p0"], "protein")
    assert query.features(["p1"], "protein").to_anndata().var_names.tolist() == ["p1"]
    counts = atlas.query().layers("gene_expression", "counts")
    with pytest.raises(QueryError, match=r"layers\(\) would replace the layers \['counts'\]"):
        counts.layers("gene_expression", "log_normalized")
    with pytest.raises(QueryError, match="the query already has a search"):
        atlas.query().search("monocyte").search("t cell")


def test_arguments_given_the_other_way_round_are_typed_errors(atlas):
    """A list as the feature space raised TypeError (unhashable), case_sensitive="no" was taken for True, and
    features(space, names) said only that it needs a list of names."""
    from lancell.errors import FeatureSpaceError

    space = next(iter(atlas.feature_spaces))
    with pytest.raises(QueryError, match=rf"the names come first, features\(\['A'\], '{space}'\)"):
        atlas.query().features(space, ["A"])
    for call in (
        lambda: atlas.query().layers([space], "counts"),
        lambda: atlas.query().all_features([space]),
    ):
        with pytest.raises(FeatureSpaceError, match="a feature space is named by a str"):
            call()
    with pytest.raises(QueryError, match=r"case_sensitive=...\) takes True or False, got .no."):
        atlas.query().features(["A"], space, case_sensitive="no")


def test_a_dataset_uid_the_atlas_lacks_is_warned_about(atlas):
    """where(dataset_uid="S1") for "s1" read as no cells, an empty AnnData, without a word."""
    uid = atlas.list_datasets()["uid"].iloc[0]
    with pytest.warns(LancellWarning, match=rf"dataset_uid: \['{uid.upper()}X'\] name no dataset") as told:
        assert atlas.query().where(dataset_uid=[uid, f"{uid.upper()}X"]).count() > 0
    assert told[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atlas.query().where(dataset_uid=uid).count()


def test_a_list_with_none_selects_missing_values_too(atlas, obs):
    """where(column=["x", None]) was refused, though None alone means a missing value."""
    column = next(c for c in obs.columns if obs[c].dtype == object and obs[c].isna().any())
    value = obs[column].dropna().iloc[0]
    both = atlas.query().where(**{column: [value, None]}).count()
    assert (
        both == atlas.query().where(**{column: value}).count() + atlas.query().where(**{column: None}).count()
    )
    assert atlas.query().where(**{column: [None]}).count() == atlas.query().where(**{column: None}).count()
