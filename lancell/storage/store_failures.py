"""Where a store's I/O failures become :class:`~lancell.errors.StoreError`: the one rule and the one boundary.

obstore raises its own exception classes, LanceDB a ``RuntimeError`` (``"lance error: LanceError(IO): ..."``)
or an ``OSError``, and pylance an ``OSError`` or, from inside an Arrow stream, pyarrow's ``ArrowInvalid``
(``"External error: LanceError(IO): ..."``). None of them is a lancell error. :func:`is_store_failure` tells
such an I/O failure from everything else (lancell's own errors, bad input, commit conflicts, programming
errors), and :class:`StoreFailures` raises it again as a ``StoreError`` naming what failed and where.

Every LanceDB connection and pylance dataset lancell opens is wrapped by :func:`guard`
(:mod:`lancell.tables.atlas_tables`), so every table, query builder, dataset, scanner and batch stream made
from them raises a store failure as a ``StoreError``; locks and ingestion use :class:`StoreFailures` around
their own obstore calls, and the public entry points that read zarr groups are decorated with
:func:`store_boundary`. A guarded call that commits holds an interrupt until it returns
(:mod:`lancell.storage.held_interrupts`).
"""

from __future__ import annotations

import errno
import functools
import html
import inspect
import os
import re
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast

import obstore.exceptions as obs_errors
import pyarrow as pa

from lancell.errors import LancellError, StoreError
from lancell.storage.held_interrupts import COMMITTING_CALLS, held_interrupts
from lancell.storage.small_pages import numpy_small_pages, on_small_pages

__all__ = [
    "StoreFailures",
    "guard",
    "is_store_failure",
    "one_line",
    "os_errno",
    "said_within",
    "store_boundary",
    "store_error",
    "store_failed",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# How Lance names an I/O error of its object store (lance-core's Error::IO), in LanceDB's RuntimeError and in
# the ArrowInvalid of a pylance stream; its other errors (invalid input, commit conflicts, a missing table or
# version) are named otherwise and are not store failures.
_LANCE_IO = "LanceError(IO)"
# Where obstore's debug dump of an error starts (its message precedes it).
_DEBUG_DUMP = re.compile(r"\n\s*Debug source:")
_DUMP_MESSAGE = re.compile(r'message: "([^"]+)"')
# Where Lance's Rust debug rendering of an error's cause starts ("... namespace: IO { source: Generic {"),
# and what an S3 error body and status say inside it.
_RUST_CAUSE = re.compile(r"\s\w+ \{ source: ")
_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]+)</Message>")
_S3_DETAILS = re.compile(r"<Details>([^<]+)</Details>")  # (Google Cloud Storage's, naming the account)
# A whole S3 error document, as obstore quotes a refused request's body ("<?xml ...?> <Error>...</Error>")
_S3_BODY = re.compile(r"(?:<\?xml[^>]*\?>\s*)?<Error>.*?</Error>")
_STATUS = re.compile(r"status: (\d{3})")
# Where in Lance's Rust sources an error was made (", /root/.cargo/registry/src/.../writer.rs:258:9")
_RUST_SOURCE = re.compile(r",? \S+\.rs:\d+:\d+")
# How Rust renders a system error's number (std::io::Error's Display)
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# Objects of these packages are guarded when a guarded call returns them.
_GUARDED_PACKAGES = frozenset({"lance", "lancedb"})
# Where a guarded object reads and writes (an instance attribute), and the guarded subclass of each class.
_WHERE = "_lancell_store_location"
_GUARDED: dict[type, type | None] = {}


def is_store_failure(exc: BaseException | None) -> bool:
    """Whether ``exc`` is an I/O failure of a store raised outside lancell.

    That is any of obstore's errors but an invalid path (a programming error), any ``OSError`` but a
    ``BrokenPipeError`` (stores' connections report theirs in their own errors), and a
    ``RuntimeError`` or ``ValueError`` (pyarrow's ``ArrowInvalid``) that reports a Lance I/O error. lancell's
    own errors (a ``StoreError`` included) are not: they are raised as they are.
    """
    if exc is None or isinstance(exc, LancellError | obs_errors.InvalidPathError | BrokenPipeError):
        return False  # (a broken pipe: a pipe of the process's own, stderr's say, whose reader left)
    if isinstance(exc, obs_errors.BaseError | OSError):
        return True
    return isinstance(exc, RuntimeError | ValueError) and _LANCE_IO in str(exc)


def store_failed(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a store failure (:func:`is_store_failure`), raw or as guards and store boundaries
    raised it: a plain ``StoreError`` it caused, directly or through others (``StoreError``'s subclasses, a
    lost lock say, are not)."""
    while type(exc) is StoreError:
        exc = exc.__cause__
    return is_store_failure(exc)


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line: up to the debug dump obstore appends, lines joined (an S3 error's code
    follows the first line), and the innermost cause the dump names ("Connection refused"); without the
    places in Lance's Rust sources it names."""
    message, *dump = _DEBUG_DUMP.split(str(exc), maxsplit=1)
    text = _RUST_SOURCE.sub("", _without_rust_debug(" ".join(message.split()))) or type(exc).__name__
    # (its request id, bucket and key: noise beside the message)
    text = _S3_BODY.sub(lambda body: _s3_said(body.group(0)) or body.group(0), text)
    # the system's own words for a refused connection or an unknown host are only in the dump
    causes = _DUMP_MESSAGE.findall(dump[0]) if dump else []
    if causes and causes[-1] not in text:
        text += f" ({causes[-1]})"
    return text + "".join(hint() for pattern, hint in _HINTS if pattern.search(text))


def _s3_said(text: str) -> str | None:
    """The S3 error in ``text`` as its code and message (``SignatureDoesNotMatch (The request signature
    ...)``, entities decoded), or None where it names no code."""
    code, message = _S3_CODE.search(text), _S3_MESSAGE.search(text)
    if code is None:
        return None
    words = [html.unescape(found.group(1).strip()) for found in (message, _S3_DETAILS.search(text)) if found]
    return html.unescape(code.group(1).strip()) + (f" ({': '.join(words)})" if words else "")


def _without_rust_debug(text: str) -> str:
    """``text`` up to Lance's Rust debug rendering of its cause (source files, retry settings, backtrace),
    with what matters of it: an S3 error's code and message, else the HTTP status."""
    cut = _RUST_CAUSE.search(text)
    if cut is None:
        return text
    head, rest = text[: cut.start()].rstrip(" :"), text[cut.start() :]
    said = _s3_said(rest)
    if said is None and (status := _STATUS.search(rest)):
        said = f"HTTP status {status.group(1)}"
    if said is None:
        return text
    return f"{head}: {said}"


def _allow_http_hint() -> str:
    """What a plain-HTTP endpoint refused for want of ``allow_http`` needs: the environment variable is
    offered only where it is not already set (a given ``allow_http`` wins over it)."""
    if os.environ.get("AWS_ALLOW_HTTP", "").strip().lower() in _TRUE:
        return (
            "; an endpoint over plain HTTP needs allow_http: AWS_ALLOW_HTTP is set, but an allow_http given "
            "in store_kwargs' client_options (or in LanceDB's storage_options) wins over it: give it True "
            "there, or leave it out"
        )
    return (
        "; an endpoint over plain HTTP needs client_options={'allow_http': True} in store_kwargs (or "
        "AWS_ALLOW_HTTP=true)"
    )


# how object_store reads a boolean setting as true
_TRUE = ("true", "1", "yes", "on", "y")
# what the words of an S3 client's error mean, where they do not say it themselves
_HINTS: tuple[tuple[re.Pattern[str], Callable[[], str]], ...] = (
    (re.compile(r"performing \w+ http://.*builder error"), _allow_http_hint),
    (
        re.compile(r"169\.254\.169\.254"),
        lambda: (
            "; no credentials were found (it then asked the cloud instance's metadata service): set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_id / secret_access_key in "
            "store_kwargs' config"
        ),
    ),
)


# how Lance says that a table version, or a data file of one, is no longer in the store
# (as the error's own kind, after its prefixes: a filter's error quoting 'Not found: x' is a filter's)
_REMOVED = re.compile(
    r"(?:[^:'\"\n]*: )*?(?:Not found: |Dataset at path \S+ was not found|Version \d+ no longer exists)"
)


def lance_removed(exc: BaseException) -> bool:
    """Whether ``exc`` (or the Lance error a lancell error wraps) says a table version or one of its data
    files is no longer in the store: a cleanup pruned it (``optimize(cleanup_older_than=...)``), or it was
    lost. A lancell error of its own (a missing zarr node, a missing dataset) is not: its cause is no Lance
    error. A lancell error caused by another (a store failure said within an operation) is judged by the
    first cause that is not one."""
    lance: BaseException | None = exc
    while isinstance(lance, LancellError):
        lance = lance.__cause__
    return isinstance(lance, ValueError | RuntimeError | OSError) and _REMOVED.match(str(lance)) is not None


def store_error(exc: BaseException, what: str) -> StoreError:
    """A ``StoreError`` saying that ``what`` failed because of ``exc``, on one line (:func:`one_line`; the
    whole error stays chained as the cause), with ``exc``'s ``errno`` (:func:`os_errno`)."""
    error = StoreError(f"{what}: {one_line(exc)}")
    error.errno = os_errno(exc)
    if error.errno == errno.ENOSPC:  # (vacuum() and delete_dataset() too must write their lock first)
        error.args = (f"{error.args[0]}; the disk is full: free some space first, even to delete",)
    elif error.errno == errno.EROFS:  # (a shared atlas on a read-only mount: every write takes a lock first)
        error.args = (
            f"{error.args[0]}; the file system is read-only: open the atlas with read_only=True to read it "
            "(lancell's read commands do); writing needs a writable place",
        )
    elif error.errno in (errno.EMFILE, errno.ENFILE):  # (a login node's or a container's low limit)
        error.args = (
            f"{error.args[0]}; this process may open no more files: raise its limit (`ulimit -n`; lancell "
            "needs a few per open table and dataset, 1,024 is ample)",
        )
    elif error.errno == errno.EDQUOT:  # (a cluster's per-user quota: the disk itself has room)
        error.args = (f"{error.args[0]}; the disk quota is used up: free some space first, even to delete",)
    return error


def said_within(what: str, exc: StoreError) -> StoreError:
    """``exc`` said within ``what`` (``"<what>: <exc>"``), with its ``errno``; the caller chains it."""
    error = StoreError(f"{what}: {exc}")
    error.errno = exc.errno
    return error


def os_errno(exc: BaseException) -> int | None:
    """The system's error number behind ``exc``: that of the first ``OSError`` of its chain of causes that
    has one, else the one a Rust I/O error names in its message ("... (os error 28)"), else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    named = _OS_ERROR.findall(str(exc))
    return int(named[-1]) if named else None


_EXTERNAL = re.compile(r"External error: (\w+):")


def wrapped_interrupt(exc: BaseException | None) -> KeyboardInterrupt | None:
    """A Ctrl-C (``KeyboardInterrupt``, or a subclass: the CLI's SIGTERM) that arrived while Lance or Arrow
    called back into Python and that they raised again as an error of their own ("External error:
    KeyboardInterrupt:"), as a ``KeyboardInterrupt`` again; else None."""
    found = _EXTERNAL.search(str(exc)) if isinstance(exc, Exception) else None
    if found is None or found.group(1) not in _interrupt_names(KeyboardInterrupt):
        return None
    interrupt = KeyboardInterrupt(found.group(1))
    interrupt.__cause__ = exc
    return interrupt


def _interrupt_names(kind: type[BaseException]) -> set[str]:
    return {kind.__name__}.union(*(_interrupt_names(sub) for sub in kind.__subclasses__()))


class StoreFailures:
    """Context manager: a store failure (:func:`is_store_failure`) raised in its block, raw or as a guard
    raised it, is raised again as a ``StoreError`` (caused by it) saying that ``what`` failed; every other
    exception passes unchanged.

    Parameters
    ----------
    what
        The operation and its location, e.g. ``"cannot take lock 'snapshot' at s3://bucket/db/..."``.
    """

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if (interrupt := wrapped_interrupt(exc)) is not None:
            raise interrupt
        if is_store_failure(exc):
            raise store_error(exc, self.what) from exc
        # a guard's (naming its call): said within what failed, once (its cause is no raw failure); not
        # twice by guards of one stream nested (a scanner's batches read through a dataset's)
        if type(exc) is StoreError and is_store_failure(exc.__cause__) and not str(exc).startswith(self.what):
            raise said_within(self.what, exc) from exc
        return False


def store_boundary(location: Callable[[Any], str]) -> Callable[[F], F]:
    """Decorator of a public method: a store failure escaping it is raised as a ``StoreError`` naming the
    method and ``location(self)`` (:class:`StoreFailures`); a generator method is guarded while iterated.
    The method runs under :func:`~lancell.storage.small_pages.numpy_small_pages` (its arrays on small pages;
    a generator's body only, not while it is suspended).

    Parameters
    ----------
    location
        Where the method's object reads and writes, e.g. ``lambda query: f"the atlas at {query.db_uri!r}"``.
    """

    def decorate(method: F) -> F:
        def what(self: Any) -> str:
            return f"{method.__qualname__} on {location(self)} failed"

        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def generator(self: Any, *args: Any, **kwargs: Any) -> Any:
                with StoreFailures(what(self)):
                    yield from on_small_pages(method(self, *args, **kwargs))

            return cast(F, generator)

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with StoreFailures(what(self)), numpy_small_pages():
                return method(self, *args, **kwargs)

        return cast(F, call)

    return decorate


def guard(target: T, where: str) -> T:
    """``target`` (a LanceDB connection, a pylance dataset...) guarded in place, and returned.

    Its class becomes a subclass of its own (made once per class, :func:`_guarded_class`) whose public
    methods and properties raise a store failure as a ``StoreError`` naming the call and ``where``, and guard
    in turn what they return from LanceDB or pylance (tables, query and merge builders, datasets, scanners,
    tags) and the streams of batches they return. The object stays an instance of its own class
    (``isinstance`` and everything else unchanged); an object whose class cannot be subclassed (a native
    one) is returned as it is.
    """
    cls = type(target)
    guarded = cls if cls in _GUARDED.values() else _guarded_class(cls)
    if guarded is None:
        return target
    try:
        target.__class__ = guarded
        object.__setattr__(target, _WHERE, where)
    except (TypeError, AttributeError):  # a layout __class__ cannot change, or no instance attributes
        pass
    return target


def _guarded_class(cls: type) -> type | None:
    """The subclass of ``cls`` whose public methods and property getters are guarded (made once); None when
    ``cls`` cannot be subclassed."""
    if cls not in _GUARDED:
        namespace: dict[str, Any] = {
            "__slots__": (),
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        }
        for name in (name for name in dir(cls) if not name.startswith("_")):
            attribute = inspect.getattr_static(cls, name, None)
            if getattr(attribute, "__final__", False):  # lancedb's @final: not to be overridden
                continue
            if isinstance(attribute, property) and attribute.fget is not None:
                getter = _guarded_call(attribute.fget, f"reading {name} of")
                namespace[name] = property(getter, attribute.fset, attribute.fdel, attribute.__doc__)
            elif inspect.isfunction(attribute):
                namespace[name] = _guarded_call(attribute, f"{name}() on")
        try:  # made by the class's own metaclass (lancedb's checks that an override says it is one)
            made: type | None = type(cls)(cls.__name__, (cls,), namespace)
        except TypeError:  # not an acceptable base type (a native class)
            made = None
        _GUARDED.setdefault(cls, made)  # two threads may make one each: the first made is kept
    return _GUARDED[cls]


def _guarded_call(function: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``function`` (a method or a property getter) raising store failures as ``StoreError`` and guarding
    what it returns."""

    @functools.wraps(function)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        where = _location(self)
        with StoreFailures(f"{what} {where} failed"):
            if function.__name__ in COMMITTING_CALLS:  # an interrupt waits for the commit (held_interrupts)
                with held_interrupts(f"{function.__name__}() on {where}"):
                    result = function(self, *args, **kwargs)
            else:
                result = function(self, *args, **kwargs)
        if function.__name__ in ("open_table", "create_table") and args and isinstance(args[0], str):
            where = f"table {args[0]!r} of {where}"
        return _guarded_value(result, where)

    call.__override__ = True  # type: ignore[attr-defined]  # what lancedb's EnforceOverrides asks of one
    return call


def _location(guarded: object) -> str:
    try:
        return object.__getattribute__(guarded, "__dict__").get(_WHERE, "the LanceDB database")
    except AttributeError:  # no instance attributes
        return "the LanceDB database"


def _guarded_value(value: Any, where: str) -> Any:
    """``value`` guarded when it is an object of LanceDB or pylance or a stream of batches (as the same kind
    of stream), else as it is."""
    if isinstance(value, types.GeneratorType):
        return _guarded_iteration(value, where)
    if isinstance(value, pa.RecordBatchReader):
        return pa.RecordBatchReader.from_batches(value.schema, _guarded_iteration(value, where))
    if type(value).__module__.partition(".")[0] in _GUARDED_PACKAGES and not isinstance(value, type):
        return guard(value, where)
    return value


def _guarded_iteration(iterable: Iterable[Any], where: str) -> Iterator[Any]:
    """The items of ``iterable``; a store failure while they are read is a ``StoreError``."""
    with StoreFailures(f"reading {where} failed"):
        yield from iterable
