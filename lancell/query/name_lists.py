"""Lists of names a query takes (cell columns, features, layers, metadata columns), checked once.

A bare string is one name where one is allowed, else refused (``list("cat")`` read three columns); where
the order given is the order returned (features, layers, metadata columns), a set is refused (its order is
arbitrary; a dict's keys keep theirs); any other iterable of strings (a list, tuple, generator,
``pandas.Index``, NumPy array) is read once into a list.
"""

from __future__ import annotations

from collections.abc import Iterable, KeysView, Mapping, Set

from lancell.errors import QueryError

__all__ = ["name_list"]


def name_list(call: str, names: object, *, one: bool = False, ordered: bool = True) -> list[str]:
    """``names`` (argument of ``call``, e.g. ``"select()"``) as a list of strings; with ``one``, a bare string
    is a list of one name; without ``ordered`` (the call does not keep the order given), a set is taken.

    Raises
    ------
    QueryError
        A bare string where ``one`` is false, a set where ``ordered``, a mapping, something not iterable, or
        an entry that is not a string.
    """
    if isinstance(names, str):
        if one:
            return [str.__str__(names)]
        raise QueryError(f"{call} needs a list of names, got the string {names!r}")
    unordered = ordered and isinstance(names, Set) and not isinstance(names, KeysView)
    if unordered or isinstance(names, Mapping) or not isinstance(names, Iterable):
        raise QueryError(
            f"{call} needs a list of names in the order wanted, got {type(names).__name__} {names!r}"
            + (" (a set has no order)" if unordered else "")
        )
    listed = list(names)
    if bad := [name for name in listed if not isinstance(name, str)]:
        raise QueryError(f"{call} needs names (strings), got {bad[:5]!r}")
    # plain strings: NumPy's np.str_ names read "np.str_('CD3D')" in messages; str() of a (str, Enum)
    # member is its qualified name, str.__str__ its value
    return [str.__str__(name) for name in listed]
