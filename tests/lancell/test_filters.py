"""Filters people write: keyword conditions, SOMA/Census-style filters refused with the SQL to write, and
features named ignoring case (query and loader), on the bundled atlas."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED
from lancell.errors import FeatureSpaceError, LancellWarning, QueryError
from lancell.query.cell_table import keyword_filter, sql_suggestion
from lancell.query.feature_names import resolve_features


@pytest.fixture(scope="module")
def bundled(bundled_root) -> RaggedAtlas:
    return RaggedAtlas.checkout_latest(str(bundled_root / "db"))


@pytest.fixture(scope="module")
def pbmc_obs():
    return BUNDLED[0].read(backed=True).obs


def _uids(query) -> list[str]:
    return query.to_pandas()["uid"].tolist()


def test_keyword_conditions_equal_the_sql_they_stand_for(bundled, pbmc_obs):
    keyword = bundled.query().where(cell_type=["Dendritic", "CD56+ NK"], n_counts=(2000.0, None))
    sql = bundled.query().where("cell_type IN ('Dendritic', 'CD56+ NK') AND n_counts >= 2000.0")
    expected = pbmc_obs[
        pbmc_obs["cell_type"].isin(["Dendritic", "CD56+ NK"]).to_numpy() & (pbmc_obs["n_counts"] >= 2000.0)
    ]
    assert _uids(keyword) == _uids(sql)
    assert len(_uids(keyword)) == len(expected) > 0
    closed = bundled.query().where(n_counts=(1500.0, 2500.0)).count()
    assert closed == int(pbmc_obs["n_counts"].between(1500.0, 2500.0).sum())


def test_keyword_and_sql_combine_with_and(bundled, pbmc_obs):
    q = bundled.query().where("dataset_uid = 'pbmc68k'", cell_type="Dendritic").where(louvain="1")
    expected = ((pbmc_obs["cell_type"] == "Dendritic") & (pbmc_obs["louvain"] == "1")).sum()
    assert q.count() == int(expected) > 0
    assert bundled.query().where(cell_type=None).count() == 559 + 10_000  # celltypist and mouse: no label


def test_keyword_values_are_quoted_safely(bundled):
    schema = bundled.core.tables.cells.schema
    sql = keyword_filter(schema, {"cell_type": "O'Brien cell) OR (1 = 1"})
    assert sql == "(`cell_type` = 'O''Brien cell) OR (1 = 1')"
    assert bundled.query().where(cell_type="O'Brien cell) OR (1 = 1").count() == 0
    assert keyword_filter(schema, {"n_counts": (None, 3.5)}) == "(`n_counts` <= 3.5)"


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"celltype": "T cell"}, r"unknown cell columns \['celltype'\]"),
        ({"n_counts": "many"}, r"'many' \(str\) cannot be compared with the cell column 'n_counts'"),
        ({"cell_type": 3}, r"3 \(int\) cannot be compared with the cell column 'cell_type'"),
        ({"cell_type": []}, r"empty list matches no cell"),
        ({"n_counts": (1.0, 2.0, 3.0)}, r"a range is \(low, high\)"),
        ({"n_counts": (None, None)}, r"a range is \(low, high\)"),
        ({"n_counts": float("nan")}, r"nan is no number \(a NaN is stored as missing: None selects"),
        ({}, r"needs a SQL string or column=value conditions"),
    ],
)
def test_bad_keyword_conditions_are_named(bundled, conditions, message):
    query = bundled.query()
    with pytest.raises(QueryError, match=message):
        query.where(**conditions)
    assert query.selection.filters == ()  # nothing was added


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        (
            {"donor": 2**63},
            r"9223372036854775808 \(int\) .* it holds whole numbers from -9223372036854775808",
        ),
        ({"donor": (2**63, None)}, r"9223372036854775808 \(int\) cannot be compared"),
        ({"donor": [5, -(2**63) - 1]}, r"-9223372036854775809 \(int\) cannot be compared"),
        (
            {"age": 2**31},
            r"2147483648 \(int\) .* int32: it holds whole numbers from -2147483648 to 2147483647",
        ),
        ({"donor": 10**400}, r"100000000000\.\.\.\(401 digits\) \(int\) cannot be compared"),
        ({"score": 10**400}, r"100000000000\.\.\.\(401 digits\) is beyond float64's range"),
        ({"donor": float("inf")}, r"inf \(float\) cannot be compared .* int64: it holds whole numbers"),
        ({"donor": 1e19}, r"1e\+19 \(float\) .* it holds whole numbers from -9223372036854775808"),
        ({"age": (None, -3e9)}, r"-3000000000.0 \(float\) .* int32: it holds whole numbers from"),
    ],
)
def test_numbers_no_cell_column_can_hold_are_named(conditions, message):
    """Lance's parser error was quoted for an int beyond int64 (and a whole float beyond it), and float()
    overflowed (OverflowError)."""
    schema = pa.schema([("donor", pa.int64()), ("age", pa.int32()), ("score", pa.float64())])
    with pytest.raises(QueryError, match=message):
        keyword_filter(schema, conditions)
    assert keyword_filter(schema, {"donor": 2**63 - 1, "age": -(2**31)}) == (
        f"(`donor` = {2**63 - 1}) AND (`age` = {-(2**31)})"
    )


@pytest.mark.parametrize(
    ("census", "sql"),
    [
        ("cell_type in ['Dendritic','CD56+ NK']", "cell_type IN ('Dendritic', 'CD56+ NK')"),
        ('cell_type == "Dendritic"', "cell_type == 'Dendritic'"),
        ("cell_type not in ['a]', \"b's\"]", "cell_type NOT IN ('a]', 'b''s')"),
    ],
)
def test_census_style_filters_show_the_sql_to_write(bundled, census, sql):
    assert sql_suggestion(census, bundled.core.tables.cells.schema.names) == sql
    with pytest.raises(QueryError) as info:
        bundled.query().where(census)
    assert f"write {sql} (SQL: lists as IN (...), strings in single quotes)" in str(info.value)
    bundled.query().where(sql).count()  # the suggestion is valid as written


def test_valid_double_quoted_identifier_is_left_alone(bundled):
    assert sql_suggestion("\"cell_type\" = 'x'", ["cell_type"]) is None
    assert bundled.query().where("\"cell_type\" = 'Dendritic'").count() == 240


def test_features_ignoring_case_in_query_and_loader(bundled, pbmc_obs):
    exact = bundled.query().where(dataset_uid="pbmc68k").features(["LYZ", "CD3D"], "gene_expression")
    with pytest.raises(QueryError, match=r"\['lyz', 'cd3d'\]") as info:
        bundled.query().features(["lyz", "cd3d"], "gene_expression").to_anndata()
    hint = "ignoring case, 'lyz' is 'LYZ', 'cd3d' is 'CD3D': name them so, or pass case_sensitive=False to "
    assert hint + "query.features()" in str(info.value)
    with pytest.raises(QueryError) as info:
        bundled.query().features(["no_such_gene"], "gene_expression").to_anndata()
    assert "ignoring case" not in str(info.value)
    folded = (
        bundled.query()
        .where(dataset_uid="pbmc68k")
        .features(["lyz", "cd3d"], "gene_expression", case_sensitive=False)
    )
    a, b = exact.to_anndata(), folded.to_anndata()
    assert list(b.var_names) == ["LYZ", "CD3D"]
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    both = bundled.query().layers("gene_expression", "counts").on_unmeasured("drop")
    both = both.features(["sox17"], "gene_expression", case_sensitive=False).to_anndata()
    assert sorted(both.var["gene_symbol"]) == ["SOX17", "Sox17"]
    with pytest.raises(QueryError) as info:  # the hint named one spelling, the other column unforeseen
        bundled.query().features(["sox17"], "gene_expression").to_anndata()
    assert "'sox17' is 'SOX17' or 'Sox17'" in str(info.value) or "'sox17' is 'Sox17' or 'SOX17'" in str(
        info.value
    )

    dataset = folded.to_cell_dataset("gene_expression", "log_normalized")
    assert list(dataset.feature_uids) == ["LYZ", "CD3D"]
    # the loader asked for the query's own list keeps its case-insensitive matching
    named = folded.to_cell_dataset("gene_expression", "log_normalized", features=["lyz", "cd3d"])
    assert list(named.feature_uids) == ["LYZ", "CD3D"]
    batch = dataset.__getitems__(np.arange(len(dataset)))
    dense = np.zeros((len(batch), batch.n_features), dtype=np.float32)
    rows = np.repeat(np.arange(len(batch)), np.diff(batch.offsets))
    dense[rows, batch.indices] = batch.values
    np.testing.assert_array_equal(dense, a.X.toarray())


def test_feature_spaces_is_the_earlier_name_of_feature_space(bundled):
    with pytest.warns(DeprecationWarning, match="named feature_space"):
        query = bundled.query().feature_spaces("gene_expression")
    query = query.where(dataset_uid="pbmc68k")
    assert query.plan(columns=[]).plan.feature_space == "gene_expression"
    with pytest.warns(DeprecationWarning), pytest.raises(FeatureSpaceError, match="'protein'"):
        bundled.query().feature_spaces("protein")  # checked as feature_space() checks it


@pytest.mark.parametrize("live", [False, True])
def test_a_double_quoted_column_selects_the_same_cells_in_every_reader(bundled_root, pbmc_obs, live):
    db = str(bundled_root / "db")
    atlas = RaggedAtlas.open(db) if live else RaggedAtlas.checkout_latest(db)
    query = atlas.query().where("\"cell_type\" = 'Dendritic'").layers("gene_expression", "log_normalized")
    expected = int((pbmc_obs["cell_type"] == "Dendritic").sum())
    assert expected > 0
    assert query.count() == expected
    assert len(query.to_pandas()) == expected  # pylance reads "cell_type" as a column, not a string
    assert query.to_anndata().n_obs == expected
    assert query.count(group_by="cell_type").to_dict() == {"Dendritic": expected}
    assert len(query.to_cell_dataset("gene_expression", "log_normalized")) == expected  # the loader's stream


def test_a_registry_keyed_two_ways_is_warned_about_and_a_shadowed_symbol_named(atlas):
    """An atlas keyed by symbols, given a standardized dataset's Ensembl ids: ``CD3E`` named the symbol-keyed
    feature only, and the Ensembl-keyed one whose symbol is also CD3E came back as unmeasured, unannounced."""
    ensembl = pd.DataFrame(
        {"uid": ["ENSG00000198851"], "gene_symbol": ["CD3E"], "organism": ["Homo sapiens"]}
    )
    made_unique = pd.DataFrame({"uid": ["SOX4-1"], "gene_symbol": ["SOX4"], "organism": ["Homo sapiens"]})
    with warnings.catch_warnings():  # a symbol-keyed registry's made-unique name is no second keying
        warnings.filterwarnings("error", message=".*another feature's uid")
        atlas.register_features("gene_expression", made_unique)
    atlas.register_features("gene_expression", made_unique.assign(uid=["SOX4.2"]))  # R's make.unique
    with warnings.catch_warnings():  # nor is a query of its symbol, a uid too, told of a second keying
        warnings.simplefilter("error")
        resolve_features(atlas.core, "gene_expression", ["SOX4"])
    with pytest.warns(LancellWarning, match="1 features have a symbol that is another feature's uid") as told:
        atlas.register_features("gene_expression", ensembl)
    assert told[0].filename == __file__  # (it named lancell's store boundary)
    with pytest.warns(LancellWarning, match=r"\('CD3E': \['ENSG00000198851'\]\); name those uids too"):
        named = resolve_features(atlas.core, "gene_expression", ["CD3E", "LYZ"])
    by_uid = atlas.feature_registry("gene_expression").set_index("uid")["global_index"]
    assert named.tolist() == [by_uid["CD3E"], by_uid["LYZ"]]
    both = resolve_features(atlas.core, "gene_expression", ["CD3E"], case_sensitive=False)
    assert sorted(both.tolist()) == sorted([by_uid["CD3E"], by_uid["ENSG00000198851"]])
    with warnings.catch_warnings():  # a uid no other feature has as its symbol: no warning
        warnings.simplefilter("error")
        resolve_features(atlas.core, "gene_expression", ["ENSG00000198851", "LYZ"])
    # whatever the other's uid looks like (only an Ensembl id's was named: this one was left out unsaid)
    atlas.register_features("gene_expression", made_unique.assign(uid=["panel_7"], gene_symbol=["LYZ"]))
    with pytest.warns(LancellWarning, match=r"\('LYZ': \['panel_7'\]\)"):
        assert resolve_features(atlas.core, "gene_expression", ["LYZ"]).tolist() == [by_uid["LYZ"]]
