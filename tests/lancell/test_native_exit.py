"""A process that imports lancell does not finalize while a native thread is inside a Python callback.

The child starts a thread with ``pthread_create`` (not ``threading``), whose Python callback gives the GIL
away in ``time.sleep``, as a tokio thread of LanceDB or obstore does in the socket write of
``call_soon_threadsafe``, then returns from the script. The callback must finish before the interpreter
finalizes: its file is written and the process exits 0. With lancell's exit handler removed, the same child
finalizes first and the callback never finishes, which shows what the test guards.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import atexit, ctypes, sys, time
from pathlib import Path

import lancell
from lancell.native_exit import wait_for_native_callbacks

if sys.argv[2] == "without":
    atexit.unregister(wait_for_native_callbacks)
marker, entered = Path(sys.argv[1]), []

def callback(_):
    entered.append(True)
    time.sleep(0.5)
    marker.write_text("finished")
    return None

START = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
start = START(callback)
thread = ctypes.c_ulong()
assert ctypes.CDLL(None).pthread_create(ctypes.byref(thread), None, start, None) == 0
while not entered:
    time.sleep(0.001)
"""


@pytest.mark.parametrize("handler", ["with", "without"])
def test_exit_waits_for_a_native_thread_inside_python(tmp_path: Path, handler: str) -> None:
    marker = tmp_path / "marker"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(marker), handler], capture_output=True, text=True, timeout=60
    )
    if handler == "with":
        assert result.returncode == 0, result.stderr
        assert marker.read_text() == "finished"
    else:  # the interpreter finalized first: the callback never finished
        assert not marker.exists()
