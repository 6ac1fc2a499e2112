"""A process exit that waits for native threads still inside a Python callback.

LanceDB and obstore complete their asyncio futures from their own (tokio) threads: such a thread takes the
GIL, calls ``loop.call_soon_threadsafe`` and, inside it, releases the GIL around the socket write that wakes
the event loop. The awaiting code may then go on and the interpreter start finalizing before that thread
takes the GIL back. CPython 3.11 ends a thread that asks for the GIL during finalization with
``pthread_exit``, whose forced unwind cannot cross the Rust frames below it, and the process dies of SIGABRT
after it did all its work (``Fatal Python error: Aborted``, ``<no Python frame>``). The same race is known
upstream (PyO3/pyo3-async-runtimes issue 40, lancedb's bindings).

:func:`wait_for_native_callbacks` runs at exit, before finalization: while a thread that Python's
``threading`` did not start is executing Python code, it gives the GIL away until that code returns, so no
such thread is left half-way through a callback. It gives the GIL away once even when none is, so that a
thread already waiting for the GIL to start its callback gets to run it. ``import lancell`` registers it
with :mod:`atexit`; it runs after the exit handlers of the libraries imported later (``atexit`` runs the
newest first).
"""

from __future__ import annotations

import logging
import sys
import threading
import time

__all__ = ["wait_for_native_callbacks"]

log = logging.getLogger(__name__)

_POLL_S = 0.001


def wait_for_native_callbacks(timeout: float = 1.0) -> int:
    """Wait until no thread that ``threading`` did not start is executing Python code.

    Parameters
    ----------
    timeout
        Seconds to wait at most; a thread still inside Python code after that is logged and left.

    Returns
    -------
    int
        How many such threads were still in Python code when the wait ended (0 unless it timed out).
    """
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(_POLL_S)  # gives the GIL away: a thread waiting for it enters (or finishes) its callback
        busy = _native_threads_in_python()
        if not busy or time.monotonic() > deadline:
            break
    if busy:
        log.info("exiting while %d native thread(s) still run Python code", len(busy))
    return len(busy)


def _native_threads_in_python() -> list[int]:
    """The ids of the threads with a current Python frame that ``threading`` did not start.

    A native thread that once asked for :func:`threading.current_thread` is listed by ``threading`` as a
    dummy thread; it counts as native.
    """
    started = {
        thread.ident
        for thread in threading.enumerate()
        if type(thread).__name__ != "_DummyThread"  # threading's stand-in for a thread it did not start
    }
    return [ident for ident in sys._current_frames() if ident not in started]  # noqa: SLF001
