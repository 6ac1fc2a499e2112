"""obs -> Arrow: a categorical column stored as strings equals its values converted one by one."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from lancell.errors import ObsConversionError
from lancell.tables.obs import obs_to_arrow


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
