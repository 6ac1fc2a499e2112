"""How the ``lancell`` command shows counts and tables: nouns that agree with their number, and columns that
stay aligned when values hold wide (East Asian) characters."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported when a table is shown: `lancell --help` stays quick
    import pandas as pd

__all__ = ["counted", "plain_table"]


def counted(number: int, noun: str) -> str:
    """``number`` followed by ``noun``, plural unless the number is one: ``counted(1, "cell")`` is
    ``"1 cell"``, ``counted(0, "cell")`` is ``"0 cells"``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def plain_table(frame: pd.DataFrame) -> str:
    """``frame`` as text without its index, a wide character counted as two columns (a label in Japanese
    or Chinese shifted the columns after it), a character that prints nothing escaped (``\\x00``: a NUL
    in a snapshot's note went to the terminal as it was) and a text of more than ``MAX_WIDTH`` characters
    cut (one 5,000-character note widened every row)."""
    import pandas as pd

    shown = frame.copy()
    for column in shown.select_dtypes(include="object").columns:
        shown[column] = shown[column].map(_printable)
    with pd.option_context("display.unicode.east_asian_width", True):
        return shown.to_string(index=False, max_colwidth=MAX_WIDTH)


MAX_WIDTH = 120


def _printable(value: object) -> object:
    """``value``, where a str, with each character that prints nothing written as its escape."""
    if not isinstance(value, str) or value.isprintable():
        return value
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value)
