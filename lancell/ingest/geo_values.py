"""The values of a GEO sample characteristic (``key: value`` text) typed as numbers where no two labels
merge, else as text labels (:func:`lancell.ingest.geo.sample_table`)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

__all__ = ["MISSING_VALUES", "UNMEASURED_WORDS", "typed_values"]

MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "none", "null"})
# words for a value not measured: missing in a column whose other values are all numbers (age: 65 /
# unknown), a label of their own in a column of text (sex: unknown is an answer there)
UNMEASURED_WORDS = frozenset({"unknown", "not available", "not applicable", "not determined", "missing", "-"})
_INTEGER = re.compile(r"^[+-]?\d+$")
_LEADING_ZERO = re.compile(r"^[+-]?0\d")  # 007, 0012 (0.5 and 0 are numbers as written)
_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def typed_values(values: pd.Series) -> pd.Series:
    """A characteristic's values typed: missing ones (``MISSING_VALUES``, and ``UNMEASURED_WORDS`` next to
    numbers only) missing; ``Int64`` if every other is an integer, ``float64`` if every one is a number, else
    ``category``: also when an integer does not fit int64 (or, beside decimals, float64 exactly), when one
    has a leading zero (``007``: an identifier), and when two spellings are one number (``1.10`` and
    ``1.1``: they would merge). Fixed decimals (``8.20``) are numbers."""
    text = values.astype(object).map(
        lambda v: None if v is None or str(v).strip().lower() in MISSING_VALUES else str(v).strip()
    )
    unmeasured = text.map(lambda v: v is not None and v.lower() in UNMEASURED_WORDS)
    if unmeasured.any() and text[~unmeasured].notna().any():  # age: 65 / unknown: numbers, one missing
        numbers = _typed(text.where(~unmeasured, None))
        if numbers.dtype != "category":
            return numbers
    return _typed(text)


def _typed(text: pd.Series) -> pd.Series:
    """:func:`typed_values` of ``text`` (stripped strings, None where missing)."""
    present = text.dropna()
    integer = present.map(lambda v: bool(_INTEGER.match(v)))
    if integer.any() and not present[integer].map(lambda v: _INT64_MIN <= int(v) <= _INT64_MAX).all():
        # an integer beyond int64 would overflow Int64 and be rounded by float64: the column stays text
        return text.astype("category")
    if present.map(lambda v: bool(_LEADING_ZERO.match(v))).any():  # donor 007: an identifier, not 7
        return text.astype("category")
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) and numbers.notna().all() and numbers.nunique() < present.nunique():
        return text.astype("category")  # passage 1.10 and 1.1 (or 12 and 12.0): two labels, one number
    if len(present) and integer.all():
        return text.astype("Int64")
    exact = present[integer].map(lambda v: int(float(v)) == int(v)).all()
    if len(present) and numbers.notna().all() and exact:  # (an integer past 2**53 beside 0.5: text)
        return pd.to_numeric(text, errors="coerce").astype(np.float64)
    return text.astype("category")
