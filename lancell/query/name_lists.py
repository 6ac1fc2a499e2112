"""Lists of names a query takes (cell columns, features, layers, metadata columns), checked once.

A bare string is one name where one is allowed, else refused (``list("cat")`` read three columns); a set is
refused (its order is arbitrary, and the order given is the order returned); any other iterable of strings
(a list, tuple, generator, ``pandas.Index``, NumPy array) is read once into a list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

from lancell.errors import QueryError

__all__ = ["name_list"]


def name_list(call: str, names: object, *, one: bool = False) -> list[str]:
    """``names`` (argument of ``call``, e.g. ``"select()"``) as a list of strings; with ``one``, a bare string
    is a list of one name.

    Raises
    ------
    QueryError
        A bare string where ``one`` is false, a set or mapping, something not iterable, or an entry that is
        not a string.
    """
    if isinstance(names, str):
        if one:
            return [names]
        raise QueryError(f"{call} needs a list of names, got the string {names!r}")
    if isinstance(names, Set | Mapping) or not isinstance(names, Iterable):
        raise QueryError(
            f"{call} needs a list of names in the order wanted, got {type(names).__name__} {names!r}"
            + (" (a set has no order)" if isinstance(names, Set) else "")
        )
    listed = list(names)
    if bad := [name for name in listed if not isinstance(name, str)]:
        raise QueryError(f"{call} needs names (strings), got {bad[:5]!r}")
    return listed
