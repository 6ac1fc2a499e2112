"""The library's warnings during an asset's work, written to the run's event log (not stderr alone).

Warnings are process-wide in Python (``warnings.catch_warnings`` is not thread-safe), and steps may overlap
in the threads of one process (a Dask worker with several threads). So each step collects into a sink of its
own thread: a display hook, installed in the process once (again if something replaced it), hands each
:class:`~lancell.errors.LancellWarning` given on a thread that holds a sink to that sink, and every other
warning to the display it wraps; LancellWarnings are always shown (not once per place), so that a second
partition's run in a process gets its own; a step logs each message once.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import dagster as dg

__all__ = ["logged_warnings"]

_sinks = threading.local()  # .sink: the running step's list of (category, message), on its thread
_install = threading.Lock()


def _hook(wrapped: Any, kind: type[Warning]) -> Any:
    """A ``warnings.showwarning`` that hands a warning of ``kind`` to the thread's sink, if any, else to
    ``wrapped``."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        sink = getattr(_sinks, "sink", None)
        if sink is not None and issubclass(category, kind):
            if (category, str(message)) not in sink:  # (one per message: a kernel's, of each block, repeats)
                sink.append((category, str(message)))
            return
        wrapped(message, category, filename, lineno, file, line)

    show.lancell_sink_hook = True  # type: ignore[attr-defined]
    return show


def _installed() -> None:
    from lancell.errors import LancellWarning  # (loading the definitions imports dagster alone)

    with _install:
        if not getattr(warnings.showwarning, "lancell_sink_hook", False):
            warnings.showwarning = _hook(warnings.showwarning, LancellWarning)
        warnings.filterwarnings("always", category=LancellWarning)  # (an equal filter is replaced, not added)


@contextmanager
def logged_warnings(
    context: dg.OpExecutionContext | dg.AssetExecutionContext, leave: tuple[type[Warning], ...] = ()
) -> Iterator[list[str]]:
    """Log each :class:`~lancell.errors.LancellWarning` given on this thread inside (what was not stored or
    not used) on ``context.log`` as a warning and add its message to the yielded list (for the
    materialization's metadata), but those of the ``leave`` categories (reported otherwise: shown as
    usual)."""
    _installed()
    messages: list[str] = []
    given: list[tuple[type[Warning], str]] = []
    outer = getattr(_sinks, "sink", None)
    _sinks.sink = given
    try:
        yield messages
    finally:  # (a failure's warnings too: what it did not store before it failed)
        _sinks.sink = outer
        for category, message in given:
            if issubclass(category, leave):
                warnings.warn(message, category, stacklevel=1)
                continue
            context.log.warning(message)
            messages.append(message)
