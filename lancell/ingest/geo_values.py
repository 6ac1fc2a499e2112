"""The values of a GEO sample characteristic (``key: value`` text) typed as numbers where that keeps every
value as written, else as text labels (:func:`lancell.ingest.geo.sample_table`)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

__all__ = ["MISSING_VALUES", "typed_values"]

MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "none", "null"})
_INTEGER = re.compile(r"^[+-]?\d+$")
_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def typed_values(values: pd.Series) -> pd.Series:
    """A characteristic's values typed: missing ones (``MISSING_VALUES``) missing; ``Int64`` if every other
    is an integer, ``float64`` if every one is a number, else ``category`` (also when an integer does not fit
    int64, and when a number is not written as it would read back: ``007``, ``1.10``, ``1e3``)."""
    text = values.astype(object).map(
        lambda v: None if v is None or str(v).strip().lower() in MISSING_VALUES else str(v).strip()
    )
    present = text.dropna()
    integer = present.map(lambda v: bool(_INTEGER.match(v)))
    if integer.any() and not present[integer].map(lambda v: _INT64_MIN <= int(v) <= _INT64_MAX).all():
        # an integer beyond int64 would overflow Int64 and be rounded by float64: the column stays text
        return text.astype("category")
    if not present.map(_written_as_number).all():  # donor 007 and 7, passage 1.10 and 1.1: one label each
        return text.astype("category")
    if len(present) and integer.all():
        return text.astype("Int64")
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) and numbers.notna().all():
        return pd.to_numeric(text, errors="coerce").astype(np.float64)
    return text.astype("category")


def _written_as_number(text: str) -> bool:
    """Whether ``text``, if a number, reads back as written once stored as one: no leading zero or plus
    sign (``007``), no trailing zero after the point (``1.10``), no exponent (text that is no number:
    True)."""
    if _INTEGER.match(text):
        return text == str(int(text))
    try:
        return repr(float(text)) == text
    except ValueError:
        return True
