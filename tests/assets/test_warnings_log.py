"""Each step's LancellWarnings go to its own run's log and metadata, also when steps overlap in threads of one
process (a Dask worker with several threads): ``warnings.catch_warnings`` is process-wide, and with it one
partition's warning was listed on another's run, its own on neither, and later warnings never shown."""

from __future__ import annotations

import threading
import warnings

import pytest

from lancell.errors import DroppedColumnsWarning, LancellWarning
from lancell_assets.warnings_log import logged_warnings


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, message: str) -> None:
        self.lines.append(message)


class _Context:
    def __init__(self) -> None:
        self.log = _Log()


def test_overlapping_steps_each_log_their_own_warnings() -> None:
    contexts, listed = {"a": _Context(), "b": _Context()}, {}
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def step_a() -> None:
        with logged_warnings(contexts["a"]) as warned:
            a_in.set()
            b_in.wait(10)
            warnings.warn("a: X_umap not stored", LancellWarning, stacklevel=1)
        listed["a"] = warned
        a_out.set()

    def step_b() -> None:
        a_in.wait(10)
        with logged_warnings(contexts["b"]) as warned:
            b_in.set()
            a_out.wait(10)  # a's step is over: b's is still collecting
            warnings.warn("b: antibodies not stored", LancellWarning, stacklevel=1)
            warnings.warn("b: antibodies not stored", LancellWarning, stacklevel=1)  # (again: once per step)
        listed["b"] = warned

    threads = [threading.Thread(target=step) for step in (step_a, step_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert listed == {"a": ["a: X_umap not stored"], "b": ["b: antibodies not stored"]}
    assert contexts["a"].log.lines == listed["a"] and contexts["b"].log.lines == listed["b"]
    later = _Context()  # the next partition's step in this process: its own, though said before
    with logged_warnings(later) as warned:
        warnings.warn("b: antibodies not stored", LancellWarning, stacklevel=1)
    assert warned == later.log.lines == ["b: antibodies not stored"]
    with pytest.warns(LancellWarning, match="outside any step"):  # shown as usual after the steps
        warnings.warn("outside any step", LancellWarning, stacklevel=1)


def test_a_failed_steps_warnings_are_logged_and_left_categories_shown() -> None:
    context = _Context()
    with pytest.raises(RuntimeError), pytest.warns(DroppedColumnsWarning, match="dropped"):
        with logged_warnings(context, leave=(DroppedColumnsWarning,)):
            warnings.warn("kept out", LancellWarning, stacklevel=1)
            warnings.warn("dropped", DroppedColumnsWarning, stacklevel=1)
            raise RuntimeError("the ingestion failed")
    assert context.log.lines == ["kept out"]
