"""Ctrl-C during a table commit: LanceDB's synchronous calls commit on their own thread, and a
KeyboardInterrupt ended the wait, not the write; the roll-back then ran before the write landed (a record
without cells; cell rows no record accounts for, which vacuum could not remove). A committing call through a
guarded table now holds the interrupt until it returns (lancell.storage.held_interrupts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lancell.storage.held_interrupts import held_interrupts
from lancell.storage.store_failures import guard

CHILD = Path(__file__).with_name("interrupt_child.py")


@pytest.fixture(autouse=True)
def _python_handles_sigint():
    """Python's own SIGINT handler (a pytest-xdist worker ignores SIGINT), put back as it was after."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("table", ["datasets", "cells"])
def test_an_interrupted_ingestion_leaves_nothing_of_it(tmp_path: Path, table: str):
    run = subprocess.run(
        [sys.executable, str(CHILD), str(tmp_path), table], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    state = json.loads(run.stdout.strip().splitlines()[-1])
    assert state["problems"] == []
    # all or nothing: rolled back, or (the interrupt came once the record was committed, while the locks were
    # released, or after the ingestion returned: a machine under load delays the timer) all there
    assert (state["records"], state["rows"]) in (([], 0), (["d"], 20_000))
    if not state["interrupted"]:
        assert state["records"] == ["d"]


class _Table:
    """A stand-in with a committing method (``add``) and a reading one (``count_rows``)."""

    def __init__(self) -> None:
        self.committed = False

    def add(self) -> str:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the interrupt is delivered meanwhile
        self.committed = True
        return "done"

    def count_rows(self) -> int:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return 0


def test_a_guarded_commit_finishes_before_the_interrupt_is_raised():
    table = guard(_Table(), "a stand-in table")
    with pytest.raises(KeyboardInterrupt):
        table.add()
    assert table.committed
    with pytest.raises(KeyboardInterrupt):  # a read is interrupted where it is
        table.count_rows()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_held_interrupts_nest_and_raise_once_after_the_outermost():
    seen = []
    with pytest.raises(KeyboardInterrupt):
        with held_interrupts("outer"):
            with held_interrupts("inner"):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                seen.append("inner done")
            seen.append("outer done")
    assert seen == ["inner done", "outer done"]
    with held_interrupts("nothing"):
        pass  # no interrupt: nothing raised


def test_a_second_interrupt_is_raised_at_once():
    """Three Ctrl-C during a stalled commit: the call could not be interrupted at all."""
    seen = []
    with pytest.raises(KeyboardInterrupt):
        with held_interrupts("a stalled commit"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            seen.append("held")
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            seen.append("not reached")
    assert seen == ["held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_python_handler_to_put_back_nothing_is_held(monkeypatch):
    """An embedded interpreter whose host handles SIGINT (signal.getsignal is None): putting None back was a
    TypeError on every table write, and the holding handler stayed."""
    monkeypatch.setattr(signal, "getsignal", lambda signum: None)
    set_to = []
    monkeypatch.setattr(signal, "signal", lambda signum, handler: set_to.append(handler))
    with held_interrupts("a commit"):
        pass
    assert set_to == []


def test_a_sigterm_python_handles_is_held_too():
    """The CLI (and a run worker) turns SIGTERM into an exception: it cut a commit loose as Ctrl-C did."""

    class Stopped(Exception):
        pass

    def stop(signum, frame):
        raise Stopped

    before = signal.signal(signal.SIGTERM, stop)
    try:
        seen = []
        with pytest.raises(Stopped):
            with held_interrupts("a commit"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                seen.append("committed")
        assert seen == ["committed"] and signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGTERM, before)
