"""Checks shared by the loader's parts: whole numbers, dataset positions, values a tensor dtype holds.

A bad argument is a :class:`~lancell.errors.QueryError` (a ``ValueError``) naming it, raised where it is
given rather than at the first batch (or at the second epoch, where workers first see it); so is a batch
holding a value its output dtype would change.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import numpy as np
import torch

from lancell.errors import OutOfBoundsError, QueryError

__all__ = ["EXACT_DTYPES", "check_exact", "flag", "integer", "positions", "real"]

# the largest whole number each output dtype holds exactly, and every smaller one
_EXACT_LIMIT = {
    torch.float32: 2**24,
    torch.float64: 2**53,
    torch.int32: 2**31 - 1,
    torch.int64: 2**63 - 1,
}
EXACT_DTYPES = tuple(_EXACT_LIMIT)


def integer(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, refusing a bool, a float (even a whole one) and anything below ``minimum``.

    Raises
    ------
    QueryError
        ``value`` is not an integer, or is below ``minimum``.
    """
    if isinstance(value, bool | np.bool_):
        raise QueryError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise QueryError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise QueryError(f"{name} must be >= {minimum}, got {number}")
    return number


def flag(name: str, value: object) -> bool:
    """``value`` as a bool: ``True``, ``False``, or the integers 1 and 0 (a string such as ``"False"`` is
    true to Python, and is refused).

    Raises
    ------
    QueryError
        ``value`` is none of these.
    """
    if isinstance(value, bool | np.bool_) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise QueryError(f"{name} must be True or False, got {value!r}")


def real(name: str, value: object) -> float:
    """``value`` as a finite float (an int or a float, not a bool).

    Raises
    ------
    QueryError
        ``value`` is not a real number, or is NaN or infinite.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise QueryError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise QueryError(f"{name} must be finite, got {value!r}")
    return float(value)


def positions(indices: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """int64 positions in ``[0, n)`` of ``indices``: integer positions in ``[-n, n)``, negatives from the end.

    Raises
    ------
    QueryError
        ``indices`` holds non-integers (floats, or booleans: a mask is not read as positions 0 and 1).
    OutOfBoundsError
        A position outside ``[-n, n)``.
    """
    index = np.asarray(indices).reshape(-1)
    if index.size == 0:
        return np.zeros(0, dtype=np.int64)
    if index.dtype.kind not in "iu":
        hint = "; for a boolean mask pass np.flatnonzero(mask)" if index.dtype.kind == "b" else ""
        raise QueryError(f"dataset positions must be integers, got {index.dtype} values{hint}")
    if index.min() < -n or index.max() >= n:
        if not n:
            raise OutOfBoundsError(f"the dataset has no cells: no position is valid; got {indices!r}")
        raise OutOfBoundsError(f"dataset positions must lie in [-{n}, {n}); got {indices!r}")
    index = index.astype(np.int64, copy=False)
    return np.where(index < 0, index + n, index)


def _check_narrowed(values: np.ndarray, dtype: torch.dtype, output: str, limit: int) -> None:
    """Raise unless float ``values`` wider than ``dtype`` convert to it exactly: all within ``limit`` in
    magnitude (whole numbers and a narrower float's values alike), else each one equal to itself narrowed."""
    if max(float(values.max()), -float(values.min())) <= limit:
        return
    narrow = np.dtype(str(dtype).removeprefix("torch."))
    changed = values.astype(narrow).astype(values.dtype) != values
    changed &= ~np.isnan(values)  # (NaN narrows to NaN, unequal to itself)
    if changed.any():
        value = float(values.ravel()[np.flatnonzero(changed)[0]])  # (a dense batch is 2-D)
        shown = int(value) if value.is_integer() else value
        raise QueryError(
            f"{output} holds the value {shown}, which {dtype} does not hold exactly (only whole numbers up "
            f"to {limit:,} in magnitude); read it with SparseCollate(dtype=torch.float64) or dtype=None"
        )


def check_exact(values: np.ndarray, dtype: torch.dtype, output: str) -> None:
    """Raise unless every one of ``values`` (a layer's values in one batch, for the batch's ``output``, e.g.
    ``"X"``) converts to ``dtype`` exactly: floats never to an integer dtype, whole numbers only within the
    dtype's exact range.

    Costs a pass over ``values`` (its max, or min) only where the stored dtype's range exceeds that exact
    range (uint32 counts to float32 or int32, float64 to float32); none otherwise.

    Raises
    ------
    QueryError
        A float layer to an integer dtype, or a whole number the dtype would round or wrap around.
    """
    limit = _EXACT_LIMIT[dtype]
    if values.dtype.kind == "f":
        if not dtype.is_floating_point:
            raise QueryError(f"{output} holds {values.dtype} values, which {dtype} would truncate")
        if values.dtype.itemsize > dtype.itemsize and values.size:  # float64 (a layer of integer and float
            _check_narrowed(values, dtype, output, limit)  # datasets: its counts too) to float32
        return
    if values.dtype.kind not in "iu" or values.size == 0:
        return
    info = np.iinfo(values.dtype)
    if -limit <= info.min and info.max <= limit:
        return
    high = int(values.max()) if info.max > limit else 0
    low = int(values.min()) if info.min < -limit else 0
    if low < -limit or high > limit:
        value = high if high > limit else low
        raise QueryError(
            f"{output} holds the value {value}, which {dtype} does not hold exactly (only whole numbers up "
            f"to {limit:,} in magnitude); read it with SparseCollate(dtype=torch.float64) or dtype=None"
        )


def check_normalizable(values: np.ndarray, output: str) -> None:
    """Raise unless ``values`` (the layer a collate normalizes, for the batch's ``output``) are all at least
    0: a cell's total is its library size only for counts (a negative total scaled the row to zeros, and
    ``log1p`` of a value below -1 is NaN).

    Raises
    ------
    QueryError
        A negative value.
    """
    if values.size and values.dtype.kind in "if" and float(values.min()) < 0:
        raise QueryError(
            f"{output} holds the negative value {float(values.min()):g}, and normalize=True scales each cell "
            "to its total (counts): read a layer of other values as stored (DenseCollate(normalize=False))"
        )
