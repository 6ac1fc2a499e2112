"""A query terminal's boundary with the stores (:data:`terminal`) and its read of one version of every table
(:func:`one_version`): a live handle's tables pinned when it is called, read once more at the current
versions should a cleanup elsewhere remove the pinned ones while it reads."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Protocol, Self, TypeVar, cast

from lancell.errors import CommitConflictError, LancellError
from lancell.storage.store_failures import lance_removed
from lancell.tables.removed_versions import read_boundary, versions_removed

__all__ = ["one_version", "terminal"]

T = TypeVar("T")


class _PinnableQuery(Protocol):
    """What is used of a query (a :class:`lancell.query.terminals.QueryTerminals`, whose module imports
    this one)."""

    @property
    def atlas(self) -> Any: ...

    def pinned(self) -> Self: ...


# the terminals (and the builder calls that read) are the query's boundary with the stores: a store failure
# is a StoreError naming them, a checkout's removed versions a CommitConflictError
terminal = read_boundary(lambda query: f"the atlas at {query.atlas.db_uri!r}", lambda query: query.atlas)


def _failure(
    query: _PinnableQuery, pinned: _PinnableQuery, exc: Exception, *, again: bool
) -> Exception | None:
    """What a terminal whose read of ``pinned`` (``query`` at its versions) failed with ``exc`` raises: None
    to read ``again`` at the current versions (a live query whose pinned versions were removed), ``exc``
    itself for any other failure, for a live read whose versions are still the current ones (a cleanup never
    removes those: a table is damaged; a typed error stands) and for a nested terminal's read of a view a
    live one pinned (the outer one decides), else a :class:`~lancell.errors.CommitConflictError`."""
    if not lance_removed(exc):
        return exc
    snapshot = query.atlas.snapshot_version
    if query.atlas.core.tables.pinned is None:  # live
        current = query.atlas.core.tables.consistent_versions()
        if isinstance(exc, LancellError) and pinned.atlas.core.tables.pinned == current:
            return exc
        if again:
            return None
    elif snapshot is None:  # a view a live terminal pinned
        return exc
    if isinstance(exc, CommitConflictError):
        return exc
    return versions_removed(query.atlas.db_uri, snapshot, exc)  # (a checkout: reading again reads the same)


def one_version(method: Callable[..., T]) -> Callable[..., T]:
    """A terminal that reads through :meth:`QueryTerminals.pinned`: one version of every table per call (a
    generator's from its first batch on; it stays one for :func:`store_boundary`, which guards its
    iteration).

    A live handle's versions are not tagged: ``optimize(cleanup_older_than=...)`` in another process may
    remove them during the call. A call (or a stream that has yielded nothing yet) is then read once more at
    the current versions; otherwise :class:`~lancell.errors.CommitConflictError` is raised, never Lance's
    untyped "no longer exists" or "Not found" (:func:`_failure`).
    """
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(query: _PinnableQuery, *args: object, **kwargs: object) -> Iterator[object]:
            yielded = False
            pinned = query.pinned()  # (its own failures are read_view's to retry or raise)
            try:
                for item in method(pinned, *args, **kwargs):
                    yielded = True
                    yield item
                return
            except (ValueError, RuntimeError, OSError) as exc:  # (StoreError: OSError)
                if (error := _failure(query, pinned, exc, again=not yielded)) is not None:
                    raise error  # noqa: B904 (exc itself, or an error caused by it)
            pinned = query.pinned()
            try:
                yield from method(pinned, *args, **kwargs)
            except (ValueError, RuntimeError, OSError) as exc:
                raise _failure(query, pinned, exc, again=False)  # noqa: B904

        return cast(Callable[..., T], stream)

    @functools.wraps(method)
    def read(query: _PinnableQuery, *args: object, **kwargs: object) -> T:
        pinned = query.pinned()  # (its own failures are read_view's to retry or raise)
        try:
            return method(pinned, *args, **kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            if (error := _failure(query, pinned, exc, again=True)) is not None:
                raise error  # noqa: B904 (exc itself, or an error caused by it)
        pinned = query.pinned()
        try:
            return method(pinned, *args, **kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise _failure(query, pinned, exc, again=False)  # noqa: B904

    return read
