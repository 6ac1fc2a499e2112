"""Reads of a checked-out snapshot whose table versions were removed: the snapshot was deleted
(``delete_snapshot``) and ``optimize(cleanup_older_than=...)`` pruned its versions, or a table file is
missing.

Lance says so in untyped errors (``ValueError: Version 2 no longer exists``, pyarrow's ``ArrowInvalid:
... Not found: ...lance``); a read of such a handle raises :class:`~lancell.errors.CommitConflictError` saying
what happened instead, wherever it reads: the handle's own calls, a query's builder and terminals, the
loader's dataset (:func:`read_boundary`). A live handle's reads are judged by the query terminals
(:mod:`lancell.query.one_version`): they read again at the current versions.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from lancell.errors import CommitConflictError
from lancell.storage.store_failures import lance_removed, store_boundary

__all__ = ["read_boundary", "versions_removed"]

F = TypeVar("F", bound=Callable[..., Any])


class _Handle(Protocol):
    """What is judged of an atlas handle: where it is, and the snapshot it checked out (None: live)."""

    @property
    def db_uri(self) -> str: ...

    @property
    def snapshot_version(self) -> int | None: ...


def versions_removed(db_uri: str, snapshot: int | None, exc: BaseException) -> CommitConflictError:
    """The error a read of the atlas at ``db_uri`` raises for Lance's ``exc`` (a version or a data file no
    longer there), caused by it: a read of snapshot ``snapshot``, or (None) of a live handle's versions
    pinned for one call."""
    first = str(exc).splitlines()[0][:200]
    if snapshot is not None:
        said = (
            f"the table versions of snapshot {snapshot} of the atlas at {db_uri!r} were removed: the "
            "snapshot was deleted (delete_snapshot) and optimize(cleanup_older_than=...) pruned them, so it "
            f"can no longer be read; or a table file is missing (atlas.validate()) ({first})"
        )
    else:
        said = (
            f"the table versions this read of the atlas at {db_uri!r} was pinned to were removed while it "
            "read them (optimize(cleanup_older_than=...) elsewhere?), or a table file is missing "
            f"(atlas.validate()): read again ({first})"
        )
    error = CommitConflictError(said)
    error.__cause__ = exc
    return error


def _said(handle: _Handle, exc: BaseException) -> BaseException:
    """``exc`` as a read of ``handle`` raises it: :func:`versions_removed` for a checkout's removed
    versions."""
    snapshot = handle.snapshot_version
    if snapshot is None or isinstance(exc, CommitConflictError) or not lance_removed(exc):
        return exc
    return versions_removed(handle.db_uri, snapshot, exc)


def read_boundary(location: Callable[[Any], str], handle: Callable[[Any], _Handle]) -> Callable[[F], F]:
    """Decorator of a public method: :func:`~lancell.storage.store_failures.store_boundary` (``location``),
    and, where the object's atlas ``handle(self)`` is a checkout, its removed versions said as
    :func:`versions_removed`."""
    bound = store_boundary(location)

    def decorate(method: F) -> F:
        guarded = bound(method)
        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def generator(self: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    yield from guarded(self, *args, **kwargs)
                except (ValueError, RuntimeError, OSError) as exc:  # (StoreError: OSError)
                    if (error := _said(handle(self), exc)) is exc:
                        raise
                    raise error from exc

            return cast(F, generator)

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return guarded(self, *args, **kwargs)
            except (ValueError, RuntimeError, OSError) as exc:
                if (error := _said(handle(self), exc)) is exc:
                    raise
                raise error from exc

        return cast(F, call)

    return decorate
