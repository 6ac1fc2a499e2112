"""Processes contending for one lock, for the lock tests on local disk and on S3.

    python lock_race.py race URL KWARGS BARRIER N ROUNDS OUT   in each round r, once all N processes are
                                                                 ready, take lock ``race-<r>``; append
                                                                 ``r enter leave`` to OUT
    python lock_race.py wait URL KWARGS NAME READY OUT         touch READY, take lock NAME, write the time it
                                                                 was taken to OUT

Times are ``time.monotonic()``, which is one clock for every process of a Linux host. The parent-side
helpers start these processes and check what they recorded.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import obstore
import obstore.store as obs_store

from lancell.storage.stores import open_store
from lancell.tables.locks import atlas_lock

CHILD = Path(__file__)
STALE_AFTER = 1.0  # what the contenders record: renewed every 0.25 s
HOLD = 0.02  # how long a racer holds the lock


def dead_lock(store: obs_store.ObjectStore, name: str) -> None:
    """Write lock ``name`` as a process on another host would have left it when it died a minute ago."""
    then = time.time() - 60
    body = {"token": "dead", "host": "another-host.invalid", "pid": 1, "taken_at": then, "renewed_at": then}
    obstore.put(
        store, f"_lancell/locks/{name}.lock", json.dumps(body | {"stale_after": STALE_AFTER}).encode()
    )


def race(url: str, kwargs: dict[str, Any], tmp: Path, *, n: int = 8, rounds: int = 3) -> list[list[tuple]]:
    """Run ``n`` processes through ``rounds`` races, each for a lock a dead process left; their intervals."""
    store = open_store(url, kwargs)
    for r in range(rounds):
        dead_lock(store, f"race-{r}")
    barrier = tmp / "barrier"
    barrier.mkdir()
    outs = [tmp / f"racer-{i}.txt" for i in range(n)]
    args = [url, json.dumps(kwargs), str(barrier), str(n), str(rounds)]
    racers = [_start("race", *args, str(out)) for out in outs]
    for racer in racers:
        _finish(racer)
    intervals: list[list[tuple]] = [[] for _ in range(rounds)]
    for out in outs:
        for line in out.read_text().splitlines():
            r, enter, leave = line.split()
            intervals[int(r)].append((float(enter), float(leave)))
    return intervals


def assert_exclusive(intervals: list[tuple[float, float]]) -> None:
    """No two ``(enter, leave)`` intervals overlap."""
    ordered = sorted(intervals)
    for (_, leave), (enter, _) in itertools.pairwise(ordered):
        assert enter >= leave, f"two holders at once: {ordered}"


def start_waiter(url: str, kwargs: dict[str, Any], name: str, tmp: Path) -> tuple[subprocess.Popen, Path]:
    """Start a process that takes lock ``name``; return it once it is trying, and the file it records in."""
    ready, out = tmp / "waiter-ready", tmp / "waiter.txt"
    waiter = _start("wait", url, json.dumps(kwargs), name, str(ready), str(out))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert waiter.poll() is None, waiter.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the waiting process did not start"
        time.sleep(0.01)
    return waiter, out


def finish_waiter(waiter: subprocess.Popen, out: Path) -> float:
    """When the waiting process took its lock."""
    _finish(waiter)
    return float(out.read_text())


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]


def _race(url: str, kwargs: str, barrier: str, n: str, rounds: str, out: str) -> None:
    store = open_store(url, json.loads(kwargs))
    me = Path(out).stem
    for r in range(int(rounds)):
        (Path(barrier) / f"{r}-{me}").touch()
        while len(list(Path(barrier).glob(f"{r}-*"))) < int(n):
            time.sleep(0.01)
        with atlas_lock(store, f"race-{r}", timeout=60, stale_after=STALE_AFTER) as lease:
            enter = time.monotonic()
            time.sleep(HOLD)
            lease.check()
            leave = time.monotonic()
        with open(out, "a") as file:
            file.write(f"{r} {enter} {leave}\n")


def _wait(url: str, kwargs: str, name: str, ready: str, out: str) -> None:
    store = open_store(url, json.loads(kwargs))
    Path(ready).touch()
    with atlas_lock(store, name, timeout=60, stale_after=STALE_AFTER):
        Path(out).write_text(repr(time.monotonic()))


if __name__ == "__main__":
    {"race": _race, "wait": _wait}[sys.argv[1]](*sys.argv[2:])
