"""Table commits that an interrupt (Ctrl-C, a notebook's "interrupt kernel", the CLI's SIGTERM) cannot cut
loose from lancell.

LanceDB's synchronous calls run on its own event-loop thread while the caller waits. A ``KeyboardInterrupt``
ends the wait, not the write: lancell's roll-back then ran while the write was still in flight, and the write
committed after it (a dataset record without cells, cell rows no record accounts for). Every committing call
made through a guarded table (:func:`lancell.storage.store_failures.guard`) runs under
:func:`held_interrupts`: an interrupt that arrives meanwhile is raised as soon as the call returns, so
lancell's own clean-up sees the table as it is.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["COMMITTING_CALLS", "held_interrupts"]

log = logging.getLogger(__name__)

# the methods of LanceDB and pylance objects (tables, merge builders, tags, datasets) that commit a version
COMMITTING_CALLS = frozenset(
    {
        "add",
        "add_columns",
        "alter_columns",
        "cleanup_old_versions",
        "create",
        "create_fts_index",
        "create_index",
        "create_scalar_index",
        "create_table",
        "delete",
        "drop_columns",
        "drop_index",
        "drop_table",
        "execute",
        "optimize",
        "restore",
        "update",
    }
)


@contextmanager
def held_interrupts(what: str) -> Iterator[None]:
    """Hold SIGINT, and SIGTERM where Python handles it (the CLI's, a run worker's), while the block runs
    (``what``: the call, for the log); raise the signal when the block ends. A second signal is not held: it
    is raised at once, the commit going on without lancell (as before).

    Only the main thread receives signals: elsewhere, and where Python has no handler of SIGINT to put back
    (a host program's own, in an embedded interpreter), the block runs as it is. Nested blocks hold one
    signal until the outermost ends.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    if callable(terminate := signal.getsignal(signal.SIGTERM)):  # (SIG_DFL ends the process, as a crash)
        previous[signal.SIGTERM] = terminate
    received: list[int] = []

    def put_back() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def hold(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            log.warning("interrupted during %s: stopping once it commits (interrupt again not to wait)", what)
            return
        log.warning("interrupted again during %s: not waiting for it (validate() the atlas)", what)
        put_back()
        signal.raise_signal(signum)

    try:
        for signum in previous:
            signal.signal(signum, hold)
    except ValueError:  # (a subinterpreter)
        yield
        return
    try:
        yield
    finally:
        put_back()
        if len(received) == 1:
            signal.raise_signal(received[0])  # to the handler there was before: KeyboardInterrupt, usually
