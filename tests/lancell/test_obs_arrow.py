"""obs -> Arrow: a categorical column stored as strings equals its values converted one by one."""

from __future__ import annotations

import datetime as dt
import decimal
import tracemalloc
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lancell.errors import ObsConversionError
from lancell.tables.obs import obs_to_arrow
from lancell.tables.obs_notes import altered_obs_columns
from lancell.tables.obs_read import arrow_to_obs


@pytest.mark.parametrize("categories", [["T cell", "B cell"], [3, 11], [1.5, 2.0]])
@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
def test_a_categorical_column_is_stored_as_each_values_string(categories, string_type) -> None:
    values = [categories[1], None, categories[0], categories[1], None]
    obs = pd.DataFrame({"kind": pd.Categorical(values, categories=categories)}, index=list("abcde"))
    columns = obs_to_arrow("d", obs, [pa.field("kind", string_type, nullable=True)])
    expected = [None if v is None else str(v) for v in values]
    assert columns["kind"].type == string_type
    assert columns["kind"].to_pylist() == expected


def test_a_missing_category_in_a_required_column_is_refused() -> None:
    obs = pd.DataFrame({"kind": pd.Categorical(["a", None], categories=["a"])}, index=["x", "y"])
    with pytest.raises(ObsConversionError, match="1 missing values"):
        obs_to_arrow("d", obs, [pa.field("kind", pa.string(), nullable=False)])


REFUSED = {  # (values, schema type): stored as something else by Arrow without a word before
    "bool into float": ([True, False, None], pa.float64()),
    "bool objects into float": (pd.Series([True, None, 2.5], dtype=object), pa.float64()),
    "2 into bool": ([0, 1, 2], pa.bool_()),
    "0.5 into bool": ([0.5, 1.0], pa.bool_()),
    "2.0 into bool": ([2.0, None], pa.bool_()),
    "text into bool": (pd.Series(["yes", None], dtype=object), pa.bool_()),
    "integers into a timestamp": ([1, 2, 3], pa.timestamp("us")),
    "floats into a timestamp": ([1.5, None], pa.timestamp("us")),
    "text into an integer": (pd.Series(["3", " 4 ", "1e3"], dtype=object), pa.int64()),
    "string dtype into an integer": (pd.Series(["3", "4.0"], dtype="string"), pa.int32()),
    "bytes into text": (pd.Series([b"ab", b"\xff", None], dtype=object), pa.string()),
    # dates: a time of day was dropped, integers became days after 1970
    "times of day into a date": (pd.to_datetime(["2020-01-01 13:30", None]), pa.date32()),
    "a datetime object with a time into a date": (
        pd.Series([dt.date(2020, 1, 1), dt.datetime(2020, 1, 2, 23, 59)], dtype=object),
        pa.date32(),
    ),
    "integers into a date": (pd.Series([0, 1, 18262], dtype=object), pa.date32()),
    "integer dtype into a date": ([0, 1, 18262], pa.date32()),
    "integer categories into a date": (pd.Categorical([0, 18262]), pa.date32()),
    "text into a date": (pd.Series(["2020-01-02", None], dtype=object), pa.date32()),
}


def test_a_categorical_label_utf8_cannot_write_and_an_unsigned_value_above_int64_are_refused() -> None:
    """A categorical label decoded from bytes that are not UTF-8 raised a bare UnicodeEncodeError; UInt64's
    2**63 + 5 next to a missing value was stored in an int64 field as -9223372036854775803."""
    obs = pd.DataFrame({"v": pd.Categorical(["T\udcffcell", "B"])}, index=["a", "b"])
    with pytest.raises(ObsConversionError, match="column 'v': a label UTF-8 cannot write"):
        obs_to_arrow("d", obs, [pa.field("v", pa.string())])
    obs = pd.DataFrame({"v": pd.array([2**63 + 5, None], dtype="UInt64")}, index=["a", "b"])
    with pytest.raises(ObsConversionError, match="value outside the int64 range"):
        obs_to_arrow("d", obs, [pa.field("v", pa.int64())])


@pytest.mark.parametrize("categorical", [False, True])
def test_a_text_value_holding_a_nul_character_is_refused(categorical: bool) -> None:
    """It was stored; h5py could then not write any result holding it (an untyped ValueError), and the
    loader's categories listed 'T' and 'T\\x00' both as 'T'."""
    values = ["T", None, "T\x00", "B"]  # (pd.Categorical(values) drops a trailing NUL: codes are given)
    column = pd.Categorical.from_codes([0, -1, 1, 2], pd.Index(["T", "T\x00", "B"], dtype=object))
    obs = pd.DataFrame({"v": column if categorical else values}, index=["a", "b", "c", "d"])
    with pytest.raises(
        ObsConversionError, match=r"column 'v': a value holds a NUL character, at row 2 \(obs name 'c'"
    ):
        obs_to_arrow("d", obs, [pa.field("v", pa.string())])
    obs["v"] = ["T", None, "T ", "B"]
    assert obs_to_arrow("d", obs, [pa.field("v", pa.string())])["v"].to_pylist() == ["T", None, "T ", "B"]


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_values_of_another_kind_are_refused_not_converted(case: str) -> None:
    values, target = REFUSED[case]
    obs = pd.DataFrame({"v": pd.Series(values).set_axis([f"c{i}" for i in range(len(values))])})
    with pytest.raises(ObsConversionError, match=r"column 'v'.*(cannot be stored|value for a|a time of day)"):
        obs_to_arrow("d", obs, [pa.field("v", target, nullable=True)])


ACCEPTED = {  # (values, schema type, stored)
    "0 and 1 into bool": ([0, 1, None], pa.bool_(), [False, True, None]),
    "booleans with nulls into bool": (pd.array([True, None], dtype="boolean"), pa.bool_(), [True, None]),
    "integers into float": ([1, 2], pa.float64(), [1.0, 2.0]),
    "numeric objects into an integer": (pd.Series([3, 4.0, None], dtype=object), pa.int64(), [3, 4, None]),
    "digit strings into an integer": (pd.Categorical(["1", "-2", None]), pa.int32(), [1, -2, None]),
    "midnights into a date": (pd.to_datetime(["2020-01-02", None]), pa.date32(), [dt.date(2020, 1, 2), None]),
    # their own day (Arrow took the UTC date: the day before, east of UTC)
    "zoned midnights into a date": (
        pd.to_datetime(["2020-01-02", "2020-01-03"]).tz_localize("Europe/Berlin"),
        pa.date32(),
        [dt.date(2020, 1, 2), dt.date(2020, 1, 3)],
    ),
    "date objects into a date": (
        pd.Series([dt.date(2020, 1, 2), None, dt.datetime(2020, 1, 3)], dtype=object),
        pa.date32(),
        [dt.date(2020, 1, 2), None, dt.date(2020, 1, 3)],
    ),
    # beyond pandas' nanosecond times (an AttributeError): an open end, and a day as numpy writes it
    "dates after 2262 into a date": (
        pd.Series([dt.date(9999, 12, 31), None, np.datetime64("3000-01-01")], dtype=object),
        pa.date32(),
        [dt.date(9999, 12, 31), None, dt.date(3000, 1, 1)],
    ),
    # beyond float64's whole numbers next to a missing value (pd.to_numeric rounded 2**60 + 1 to 2**60)
    "large integer categories with a missing value": (
        pd.Categorical([2**60 + 1, None, 2**63 - 1]),
        pa.int64(),
        [2**60 + 1, None, 2**63 - 1],
    ),
    "large integers as text with a missing value": (
        pd.Series([str(2**60 + 1), None], dtype=object),
        pa.int64(),
        [2**60 + 1, None],
    ),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_values_that_convert_exactly_are_accepted(case: str) -> None:
    values, target, stored = ACCEPTED[case]
    obs = pd.DataFrame({"v": pd.Series(values).set_axis([f"c{i}" for i in range(len(values))])})
    assert obs_to_arrow("d", obs, [pa.field("v", target, nullable=True)])["v"].to_pylist() == stored


def test_zone_aware_times_and_ordered_categories_are_named() -> None:
    obs = pd.DataFrame(
        {
            "when": pd.to_datetime(["2020-01-01 10:00"] * 2).tz_localize("US/Eastern"),
            "level": pd.Categorical(["high", "low"], categories=["low", "high"], ordered=True),
            "kind": pd.Categorical(["a", "b"]),
        },
        index=["x", "y"],
    )
    fields = [
        pa.field("when", pa.timestamp("us")),
        pa.field("level", pa.string()),
        pa.field("kind", pa.string()),
    ]
    assert altered_obs_columns(obs, fields) == [
        "column 'when': times in zone US/Eastern are stored in UTC, zone dropped",
        "column 'level': the order of its ordered categories is not stored",
    ]
    assert obs_to_arrow("d", obs, fields)["when"].to_pylist()[0].hour == 15  # the instant is kept
    obs["when"] = obs["when"].astype("category")  # (its zone went without a word)
    assert altered_obs_columns(obs, fields[:1]) == [
        "column 'when': times in zone US/Eastern are stored in UTC, zone dropped"
    ]


def test_floats_booleans_and_times_under_a_text_field_are_named_as_stored_as_text() -> None:
    """Label 1 was stored as '1' from an int column and as '1.0' from one with a missing value (held as
    floats), with no word: ``where(cell_type='1')`` then missed cells."""
    obs = pd.DataFrame(
        {
            "whole": [1, 2],
            "gappy": [1.0, np.nan],
            "flag": [True, False],
            "numbered": pd.Categorical([3, 11]),
            "text": ["a", None],
        },
        index=["x", "y"],
    )
    fields = [pa.field(name, pa.string()) for name in obs.columns]
    assert altered_obs_columns(obs, fields) == [  # integers are stored as written ('1', '3'): not named
        "column 'gappy': float64 values are stored as their text (e.g. 1.0 as '1.0'); an integer column with "
        "missing values is held as floats: .astype('Int64') stores '1'",
        "column 'flag': bool values are stored as their text (e.g. True as 'True')",
    ]
    fixed = obs.assign(gappy=obs["gappy"].astype("Int64"))
    assert obs_to_arrow("d", fixed, fields)["gappy"].to_pylist() == ["1", None]


@pytest.mark.parametrize("kind", ["int8", "int16", "uint8", "uint32", "uint64"])
def test_every_integer_column_keeps_its_values_next_to_nulls(kind: str) -> None:
    top = int(np.iinfo(kind).max)
    table = pa.table({"uid": ["a", "b", "c"], "n": pa.array([top, None, 1], type=getattr(pa, kind)())})
    column = arrow_to_obs(table)["n"]
    assert column.dtype == pd.api.types.pandas_dtype(kind.capitalize().replace("Ui", "UI"))
    assert column.tolist() == [top, pd.NA, 1]


def test_booleans_and_floats_among_an_object_columns_text_are_named_as_stored_as_text() -> None:
    """An object column mixing text with True or 0.5 stored 'True' and '0.5' with no word (typed columns
    were named): ``where(treated='yes')`` then missed the cells written as True."""
    obs = pd.DataFrame(
        {
            "treated": np.array(["yes", True, None], dtype=object),
            "dose": np.array(["low", 0.5, "high"], dtype=object),
            "plate": np.array(["p1", 2, "p3"], dtype=object),  # an integer is stored as written
            "label": np.array(["a", "b", None], dtype=object),
            "donors": np.array(["d0", ["d1", "d2"], "d3"], dtype=object),  # stored as "['d1', 'd2']"
        },
        index=["x", "y", "z"],
    )
    fields = [pa.field(name, pa.string()) for name in obs.columns]
    assert altered_obs_columns(obs, fields) == [
        "column 'treated': bool values among its objects are stored as their text (e.g. True as 'True')",
        "column 'dose': float values among its objects are stored as their text (e.g. 0.5 as '0.5')",
        "column 'donors': list values among its objects are stored as their text (e.g. ['d1', 'd2'] as "
        "\"['d1', 'd2']\")",
    ]
    assert obs_to_arrow("d", obs, fields)["treated"].to_pylist() == ["yes", "True", None]


def test_fields_obs_values_are_not_converted_to_are_refused_and_enum_members_stored_as_their_values():
    """A list field stored "CD4" as its letters and 1.5 in list<int> as 1; an Enum member in a str field
    was stored as 'Color.red'."""
    import enum

    class Color(str, enum.Enum):  # noqa: UP042 (the mixin whose str() is 'Color.red')
        red = "red"

    obs = pd.DataFrame({"tags": ["CD4", "CD8"]}, index=["a", "b"])
    with pytest.raises(ObsConversionError, match=r"'tags'.*declares it as list<item: string>"):
        obs_to_arrow("d", obs, [pa.field("tags", pa.list_(pa.string()))])
    members = pd.DataFrame({"color": [Color.red, None]}, index=["a", "b"])
    for column in (members["color"], members["color"].astype("category")):
        stored = obs_to_arrow("d", column.to_frame(), [pa.field("color", pa.string())])["color"]
        assert stored.to_pylist() == ["red", None]


def test_an_old_enum_fields_dictionary_that_compaction_repeated_is_read_as_text():
    """pandas refused the column ("Categorical categories must be unique"): no query read obs."""
    repeated = pa.array(["red", "blue", "blue", "red"])  # the fragments' dictionaries, joined by compaction
    color = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 3, 2], pa.int32()), repeated)
    obs = arrow_to_obs(pa.table({"uid": ["a", "b", "c", "d", "e"], "color": color}), "uid")
    assert obs["color"].tolist() == ["red", "blue", "blue", "red", "blue"]


def test_dates_and_times_of_pandas_arrow_dtypes_are_stored_and_bytes_fields_still_filled():
    """pd.ArrowDtype dates (read_parquet(dtype_backend="pyarrow")) failed in pandas (NotImplementedError
    "dt.tz is not supported", TypeError "boolean value of NA is ambiguous"); a bytes field took its values."""
    dates = pd.Series(
        pd.array([dt.date(2020, 1, 1), None], dtype=pd.ArrowDtype(pa.date32())), index=["a", "b"], name="d"
    )
    times = pd.Series(
        pd.array([dt.datetime(2020, 1, 1), None], dtype=pd.ArrowDtype(pa.timestamp("us"))), index=["a", "b"]
    )
    for column in (dates, times):
        stored = obs_to_arrow("x", column.rename("d").to_frame(), [pa.field("d", pa.date32())])["d"]
        assert stored.to_pylist() == [dt.date(2020, 1, 1), None]
    raw = pd.DataFrame({"b": [b"AC", None]}, index=["a", "b"])
    assert obs_to_arrow("x", raw, [pa.field("b", pa.binary())])["b"].to_pylist() == [b"AC", None]


def test_one_long_cell_name_costs_its_own_length() -> None:
    """The index was built as a fixed-width numpy text array: 20,000 cells with one name of 5,000
    characters took 400 MB (cells x the longest name x 4 bytes) for ~1 MB of names."""
    names = [f"c{i}" for i in range(20_000)]
    names[7] = "x" * 5_000
    table = pa.table({"uid": pa.array(names), "n": pa.array(np.arange(20_000))})
    tracemalloc.start()
    try:
        obs = arrow_to_obs(table)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert list(obs.index) == names and obs.index.dtype == object
    assert peak < 20_000_000


def test_a_non_text_index_column_is_read_as_text() -> None:
    obs = arrow_to_obs(pa.table({"uid": pa.array([3, 11]), "kind": pa.array(["a", "b"])}))
    assert list(obs.index) == ["3", "11"]


def test_zoned_times_of_objects_and_arrow_are_named_and_zoned_beside_plain_ones_refused() -> None:
    """Only pandas' zoned dtype was named: an object column's zoned times (Berlin 12:00 stored as 11:00) and
    Arrow's went without a word, and a column mixing zoned and plain times stored two cells written 12:00
    hours apart."""
    berlin, tokyo = ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Tokyo")
    field = pa.field("when", pa.timestamp("us"))
    zoned = [dt.datetime(2020, 1, 1, 12, tzinfo=berlin), dt.datetime(2020, 1, 1, 12, tzinfo=tokyo), None]
    obs = pd.DataFrame({"when": pd.Series(zoned, dtype=object)})
    assert altered_obs_columns(obs, [field]) == [
        "column 'when': times in zones Asia/Tokyo, Europe/Berlin are stored in UTC, zones dropped"
    ]
    assert [t and t.hour for t in obs_to_arrow("d", obs, [field])["when"].to_pylist()] == [11, 3, None]
    arrow = pd.array(zoned[1:], dtype=pd.ArrowDtype(pa.timestamp("ns", tz="Asia/Tokyo")))
    assert altered_obs_columns(pd.DataFrame({"when": arrow}), [field]) == [
        "column 'when': times in zone Asia/Tokyo are stored in UTC, zone dropped"
    ]
    mixed = pd.DataFrame({"when": pd.Series([dt.datetime(2020, 1, 1, 12), zoned[1]], dtype=object)})
    with pytest.raises(
        ObsConversionError, match=r"times with a zone \(first at row 1 .* without \(first at row 0"
    ):
        obs_to_arrow("d", mixed, [field])
    plain = pd.DataFrame({"when": pd.Series([dt.datetime(2020, 1, 1, 12), None], dtype=object)})
    assert altered_obs_columns(plain, [field]) == []
    assert obs_to_arrow("d", plain, [field])["when"].to_pylist() == [dt.datetime(2020, 1, 1, 12), None]


def test_bytes_categories_are_refused_as_bytes_values_are() -> None:
    """A categorical of bytes labels was stored as the text "b'T'" (an object column of bytes is refused)."""
    field = pa.field("cell_type", pa.string())
    with pytest.raises(ObsConversionError, match=r"bytes category b'B' for a string field"):
        obs_to_arrow("d", pd.DataFrame({"cell_type": pd.Categorical([b"T", b"B"])}), [field])
    decoded = pd.DataFrame({"cell_type": pd.Categorical([b"T", b"B"]).rename_categories(bytes.decode)})
    assert obs_to_arrow("d", decoded, [field])["cell_type"].to_pylist() == ["T", "B"]


def test_a_nan_is_missing_in_every_float_dtype() -> None:
    """pandas' Float64 keeps 0/0 apart from NA: it was stored as a NaN value, which reads as missing but
    where(score=None) and IS NULL did not match, and count(group_by=...) gave two nan groups."""
    field = pa.field("score", pa.float64())
    nullable = pd.array([0.0, 1.0, None], dtype="Float64") / pd.array([0.0, 1.0, 1.0], dtype="Float64")
    for column in (nullable, np.array([np.nan, 1.0, np.nan]), pd.array([np.nan, 1.0, None], dtype="float32")):
        stored = obs_to_arrow("d", pd.DataFrame({"score": column}), [field])["score"]
        assert stored.to_pylist() == [None, 1.0, None] and stored.null_count == 2


def test_a_column_pandas_cannot_convert_is_an_obs_conversion_error() -> None:
    """A sparse column raised numpy's TypeError, a decimal one with a null pandas' ValueError."""
    field = pa.field("n", pa.int64())
    for column, dtype in (
        (pd.arrays.SparseArray([0, 0, 5]), r"Sparse\[int64, 0\]"),
        (pd.array([decimal.Decimal("1.00"), None], dtype=pd.ArrowDtype(pa.decimal128(5, 2))), "decimal128"),
    ):
        frame = pd.DataFrame({"n": column})
        with pytest.raises(ObsConversionError, match=f"obs column 'n': values of dtype {dtype}"):
            obs_to_arrow("d", frame, [field])


def test_the_note_on_float32_text_shows_what_is_stored() -> None:
    field = pa.field("label", pa.string())
    obs = pd.DataFrame({"label": pd.array([0.1, None], dtype="Float32")})
    assert obs_to_arrow("d", obs, [field])["label"].to_pylist() == ["0.1", None]
    assert "(e.g. 0.10000000149011612 as '0.1')" in altered_obs_columns(obs, [field])[0]


@pytest.mark.parametrize("type_", [pa.timestamp("us"), pa.date32(), pa.int64(), pa.bool_(), pa.string()])
def test_a_column_of_no_values_is_stored_as_nulls_under_every_type(type_) -> None:
    """A float64 column of NaN (pandas' column of no values) was refused under a time or date field ("cannot
    be stored without a change") and stored under the others."""
    for column in (np.full(3, np.nan), pd.array([None] * 3, dtype="Float64"), pd.Series([None] * 3)):
        stored = obs_to_arrow("d", pd.DataFrame({"c": column}), [pa.field("c", type_)])["c"]
        assert stored.type == type_ and stored.null_count == 3
    with pytest.raises(ObsConversionError, match="cannot be stored as"):  # a value is still refused
        obs_to_arrow("d", pd.DataFrame({"c": [np.nan, 1.0]}), [pa.field("c", pa.date32())])


def test_intervals_and_complex_numbers_under_a_text_field_are_named_as_stored_as_text() -> None:
    """pd.cut's bins ("(0, 1]") and complex numbers were stored as their text without the note floats and
    times get."""
    field = pa.field("c", pa.string())
    for column, example in (
        (pd.cut([0.5, 1.5], [0, 1, 2]), "Interval(0, 1, closed='right') as '(0, 1]'"),
        (pd.Series(pd.arrays.IntervalArray.from_breaks([0, 1, 2])), "as '(0, 1]'"),
        (np.array([1 + 0j, 2j]), "(1+0j) as '(1+0j)'"),
        (pd.Series([1 + 0j, "x"], dtype=object), "(1+0j) as '(1+0j)'"),
    ):
        obs = pd.DataFrame({"c": column})
        assert obs_to_arrow("d", obs, [field])["c"].to_pylist()[0] in ("(0, 1]", "(1+0j)")
        assert any(example in note for note in altered_obs_columns(obs, [field])), column


def test_a_nan_of_pandas_float64_in_a_required_field_is_refused_as_missing() -> None:
    """Float64's 0/0 is NaN, not NA: it passed the required-field check, became a null, and Lance refused the
    whole write with an untyped "declared as non-nullable but contains null values"."""
    column = pd.array([1.0, 0.0], dtype="Float64") / pd.array([1.0, 0.0], dtype="Float64")
    with pytest.raises(ObsConversionError, match=r"1 missing values .* not nullable, first at row 1"):
        obs_to_arrow("d", pd.DataFrame({"s": column}), [pa.field("s", pa.float64(), nullable=False)])


def test_zone_notes_pass_over_missing_times() -> None:
    """pd.NaT among zoned times raised NaTType's ValueError (no utcoffset) in every ingestion."""
    zoned = pd.Series([dt.datetime(2020, 1, 1, 12, tzinfo=ZoneInfo("Asia/Tokyo")), pd.NaT], dtype=object)
    field = pa.field("when", pa.timestamp("us"))
    assert altered_obs_columns(pd.DataFrame({"when": zoned}), [field]) == [
        "column 'when': times in zone Asia/Tokyo are stored in UTC, zone dropped"
    ]
    assert obs_to_arrow("d", pd.DataFrame({"when": zoned}), [field])["when"].to_pylist()[1] is None


def test_times_with_and_without_a_zone_are_refused_across_ingestion_batches(tmp_path, monkeypatch) -> None:
    """Ingestion converts obs in batches of 65,536 cells: zoned times in one batch and a plain one in the next
    were stored hours apart (each batch held one kind)."""
    import anndata as ad
    import scipy.sparse as sp

    from lancell.atlas import RaggedAtlas
    from lancell.ingest import cell_rows, plan
    from lancell.ingest.from_anndata import add_from_anndata
    from lancell.tables.schema import FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

    class Gene(FeatureBaseSchema):
        pass

    class TimedCells(LancellBaseSchema):
        when: dt.datetime | None = None
        rna: SparseZarrPointer | None = None

    atlas = RaggedAtlas.create(str(tmp_path / "db"), "cells", TimedCells, registry_schemas={"rna": Gene})
    atlas.register_features("rna", pd.DataFrame({"uid": ["g"]}))
    zoned = dt.datetime(2020, 1, 1, 12, tzinfo=ZoneInfo("Europe/Berlin"))
    when = pd.Series([zoned, zoned, dt.datetime(2020, 1, 1, 12)], dtype=object, index=["a", "b", "c"])
    cells = ad.AnnData(sp.csr_matrix(np.ones((3, 1), np.float32)), obs=pd.DataFrame({"when": when}))
    cells.var_names = ["g"]
    for module in (plan, cell_rows):  # (the check's batches and the written ones)
        monkeypatch.setattr(module, "CELL_BATCH", 2)
    with pytest.raises(
        ObsConversionError, match=r"times with a zone \(first at row 0 .* without \(first at row 2"
    ):
        add_from_anndata(atlas, cells, feature_space="rna", zarr_layer="counts", progress=False)
    assert atlas.list_datasets().empty and atlas.query().count() == 0
