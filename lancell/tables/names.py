"""What a stored name may hold: obs names and feature uids are stored as UTF-8 text, and content fingerprints
digest them NUL-separated (:mod:`lancell.ingest.fingerprint`), so no name may hold a NUL character or a
character UTF-8 cannot write (a lone surrogate, as Python decodes bytes that are not UTF-8 with
``surrogateescape``)."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

import numpy as np
import pandas as pd

from lancell.errors import IngestError, LancellError

__all__ = ["check_obs_names", "named_characters", "names_as_text", "not_utf8", "with_nul"]

# what a character no font shows is, by its Unicode category
_UNSEEN = {
    "Cc": "control character",
    "Cs": "lone surrogate",
    "Cf": "format character",
    "Co": "private-use character",
    "Cn": "unassigned",
    "Zs": "space",
}


def names_as_text(values: pd.Index | pd.Series, what: str, error: type[LancellError]) -> pd.Index | pd.Series:
    """``values`` (names) as text, ``astype(str)``: bytes are decoded as UTF-8.

    Raises
    ------
    LancellError
        ``error``, naming ``what`` and the first value that is bytes UTF-8 cannot decode.
    """
    try:
        return values.astype(str)
    except UnicodeDecodeError:
        for position, value in enumerate(values):
            try:
                str(value, "utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                raise error(
                    f"{what}: {value!r} (position {position}) is bytes that are not UTF-8: decode the names "
                    "from their encoding first (e.g. name.decode('latin-1'))"
                ) from None
        raise


def named_characters(characters: Iterable[str]) -> str:
    """``characters`` as a reader can tell them apart in a message: a printable one quoted, any other by code
    point and name (``U+00A0 NO-BREAK SPACE``, ``U+DCFF (lone surrogate)``; a combining mark too, which
    prints on the character before it): an invisible character or one that looks like another reads as
    itself."""
    shown = []
    for c in sorted(set(characters)):
        if c.isprintable() and not unicodedata.category(c).startswith("M"):
            shown.append(repr(c))
        else:
            what = unicodedata.name(c, "") or f"({_UNSEEN.get(unicodedata.category(c), 'unassigned')})"
            shown.append(f"U+{ord(c):04X} {what}")
    return ", ".join(shown)


def with_nul(names: pd.Index | pd.Series) -> np.ndarray:
    """Positions of ``names`` (text) holding a NUL character. Object text is searched joined (3x faster)."""
    if names.dtype == object and "\0" not in "".join(np.asarray(names).tolist()):
        return np.empty(0, np.int64)
    return np.flatnonzero(names.str.contains("\0", regex=False))


def not_utf8(names: pd.Index | pd.Series) -> np.ndarray:
    """Positions of ``names`` (text) that UTF-8 cannot encode. Searched joined first (one encode)."""
    values = np.asarray(names, dtype=object).tolist()
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        return np.flatnonzero([not _encodes(value) for value in values])
    return np.empty(0, np.int64)


def _encodes(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_obs_names(dataset: str, obs_names: pd.Index) -> None:
    """Refuse obs names that cannot name one cell each once stored as text (the cell uid is
    ``<dataset>:<name>``, and the content fingerprint digests the names NUL-separated). A categorical index
    is checked through its categories and codes; text already is not converted.

    Raises
    ------
    IngestError
        A missing name (None, NaN), one holding a NUL character or a character UTF-8 cannot write, or
        names equal as text (``1`` and ``"1"`` included).
    """
    missing = np.flatnonzero(pd.isna(obs_names))
    if missing.size:
        raise IngestError(
            f"dataset {dataset!r}: {missing.size} cells have no obs name (None or NaN), first at row "
            f"{int(missing[0])}; name every cell (adata.obs_names = ...)"
        )
    categorical = isinstance(obs_names, pd.CategoricalIndex)
    values = obs_names.categories if categorical else obs_names
    text = (
        values
        if values.inferred_type == "string"
        else names_as_text(values, f"dataset {dataset!r}: obs names", IngestError)
    )
    nul = with_nul(text)
    if nul.size:
        rows = np.flatnonzero(np.isin(obs_names.codes, nul)) if categorical else nul
        raise IngestError(
            f"dataset {dataset!r}: {rows.size} obs names hold a NUL character, first at row {int(rows[0])}: "
            f"{text[nul[0]]!r}"
        )
    unwritable = not_utf8(text)
    if unwritable.size:
        rows = np.flatnonzero(np.isin(obs_names.codes, unwritable)) if categorical else unwritable
        raise IngestError(
            f"dataset {dataset!r}: {rows.size} obs names hold characters UTF-8 cannot write (text decoded "
            f"from bytes that are not UTF-8), first at row {int(rows[0])}: {text[unwritable[0]]!r}"
        )
    if text.has_duplicates or (categorical and pd.Index(obs_names.codes).has_duplicates):
        if categorical:
            text = pd.Index(text.to_numpy(dtype=object)[obs_names.codes])
        repeated = text[text.duplicated()].unique()[:5].tolist()
        raise IngestError(
            f"dataset {dataset!r}: duplicate obs names {repeated} (as text); call "
            "adata.obs_names_make_unique() first"
        )
