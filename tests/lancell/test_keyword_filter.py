"""Keyword conditions on times, days and integers are written as literals Lance compares with the column
(``where(when=(datetime(2020, 1, 1), None))`` was refused, ``where(n_genes=4.0)`` failed inside Lance), and
values that cannot be compared, or a range upside down (it matched nothing, silently), are refused."""

from __future__ import annotations

import datetime as dt

import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lancell.errors import QueryError
from lancell.query.keyword_filter import keyword_filter

UTC = dt.UTC


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rows = pa.table(
        {
            "when": pa.array(
                [
                    dt.datetime(2020, 1, 1),
                    dt.datetime(2020, 6, 1, 12, 30, 0, 123456),
                    None,
                    dt.datetime(2019, 5, 5),
                ],
                pa.timestamp("us"),
            ),
            "zoned": pa.array(
                [dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2020, 6, 1, tzinfo=UTC), None, None],
                pa.timestamp("us", tz="UTC"),
            ),
            "day": pa.array(
                [dt.date(2020, 1, 1), dt.date(2021, 1, 1), None, dt.date(2020, 1, 1)], pa.date32()
            ),
            "n": pa.array([1, 4, None, 7], pa.int64()),
        }
    )
    return lancedb.connect(str(tmp_path_factory.mktemp("kw"))).create_table("t", rows)


def _rows(table, **conditions) -> list[int]:
    sql = keyword_filter(table.schema, conditions)
    found = table.search().where(sql).with_row_id(True).to_arrow()
    return sorted(found.column("_rowid").to_pylist())


@pytest.mark.parametrize(
    ("conditions", "rows"),
    [
        ({"when": (dt.datetime(2020, 1, 1), None)}, [0, 1]),
        ({"when": (pd.Timestamp("2019-01-01"), pd.Timestamp("2020-01-01"))}, [0, 3]),
        ({"when": dt.datetime(2020, 6, 1, 12, 30, 0, 123456)}, [1]),  # microseconds kept
        ({"when": np.datetime64("2019-05-05")}, [3]),
        ({"when": [dt.datetime(2020, 1, 1), dt.datetime(2019, 5, 5)]}, [0, 3]),
        ({"zoned": (pd.Timestamp("2020-03-01", tz="Europe/Berlin"), None)}, [1]),
        ({"zoned": dt.datetime(2020, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))}, [0]),  # 00:00 UTC
        ({"day": dt.date(2020, 1, 1)}, [0, 3]),
        ({"day": (dt.date(2020, 6, 1), None)}, [1]),
        ({"n": 4.0}, [1]),
        ({"n": (1.0, np.float32(4))}, [0, 1]),
        ({"n": [np.int64(7), 1]}, [0, 3]),
        # two documented forms of a time that Python does not compare (a builtins TypeError)
        ({"when": (dt.datetime(2019, 1, 1), np.datetime64("2020-01-01"))}, [0, 3]),
        ({"when": None, "n": None}, [2]),
    ],
)
def test_conditions_select_the_rows_they_name(table, conditions, rows):
    assert _rows(table, **conditions) == rows


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"n": 4.5}, r"4\.5 \(float\) cannot be compared .* 'n' of type int64: it holds whole numbers"),
        ({"n": (5, 2)}, r"where\(n=\(5, 2\)\): the range's low end is above its high end"),
        ({"when": (dt.datetime(2021, 1, 1), dt.datetime(2020, 1, 1))}, r"low end is above its high end"),
        ({"when": (np.datetime64("2021-01-01"), dt.datetime(2020, 1, 1))}, r"low end is above its high end"),
        ({"when": "2020-01-01"}, r"'2020-01-01' \(str\) cannot be compared .* 'when' of type timestamp"),
        ({"when": pd.Timestamp("2020-01-01", tz="UTC")}, r"the column's times have no time zone"),
        ({"zoned": dt.datetime(2020, 1, 1)}, r"give a time in a time zone \(the column's is UTC\)"),
        ({"when": pd.NaT}, r"NaT is not a time; a missing value is None"),
        (  # a literal of nanoseconds was cut to the column's microseconds: another time
            {"when": (pd.Timestamp("2020-03-01 00:00:00.000000500"), None)},
            r"finer than the column's unit \(us\); round it to that unit",
        ),
        (
            {"zoned": pd.Timestamp("2020-03-01 00:00:00.000000001", tz="UTC")},
            r"finer than the column's unit \(us\)",
        ),
        (
            {"day": dt.datetime(2020, 1, 1)},
            r"cannot be compared .* 'day' of type date32\[day\]: give a datetime\.date",
        ),
    ],
)
def test_values_that_do_not_fit_the_column_are_named(table, conditions, message):
    with pytest.raises(QueryError, match=message):
        keyword_filter(table.schema, conditions)
