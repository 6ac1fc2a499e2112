"""Cross-process locks on local disk: exclusive under racing breakers, kept by renewal, fenced when lost.

The S3 variants are in ``tests/s3/test_s3_locks.py``; both start the processes of ``tests/lock_race.py``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import obstore
import pytest
from lock_race import STALE_AFTER, assert_exclusive, finish_waiter, race, start_waiter

import lancell.snapshots
from lancell.atlas import RaggedAtlas
from lancell.core import AtlasCore
from lancell.errors import LockLostError, LockTimeoutError, StoreError
from lancell.processes import this_process
from lancell.storage.stores import open_store
from lancell.tables.lock_objects import LocalLockObjects
from lancell.tables.locks import atlas_lock
from lancell.tables.schema import FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer


class Gene(FeatureBaseSchema):
    pass


class Cell(LancellBaseSchema):
    genes: SparseZarrPointer | None = None


def _heartbeats() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("lancell-lock-")]


def _steal(store: obstore.store.LocalStore, name: str) -> bytes:
    """Overwrite lock ``name`` as a process that judged it stale and took it over would; return its bytes."""
    body = {"token": "thief", "host": "another-host.invalid", "pid": 1, "renewed_at": time.time()}
    data = json.dumps(body | {"taken_at": time.time(), "stale_after": 0.5}).encode()
    obstore.put(store, f"_lancell/locks/{name}.lock", data)
    return data


def test_racing_breakers_of_a_dead_lock_hold_it_one_at_a_time(tmp_path: Path) -> None:
    intervals = race(str(tmp_path / "store"), {}, tmp_path, n=8, rounds=3)
    for held in intervals:
        assert len(held) == 8
        assert_exclusive(held)


def test_a_holder_renewing_past_stale_after_keeps_the_lock(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    with atlas_lock(open_store(url), "long", stale_after=STALE_AFTER) as lease:
        waiter, out = start_waiter(url, {}, "long", tmp_path)
        time.sleep(2.5 * STALE_AFTER)  # the waiter tries all along
        lease.check()
        released = time.monotonic()
    assert finish_waiter(waiter, out) > released


def test_a_stolen_lease_fails_its_check_and_release_leaves_the_thief_alone(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    with atlas_lock(store, "stolen", stale_after=STALE_AFTER) as lease:
        lease.check()
        thief = _steal(store, "stolen")
        with pytest.raises(
            LockLostError, match=r"lock 'stolen' at file://.*stolen\.lock was lost \(taken over"
        ):
            lease.check()
    assert (tmp_path / "store" / "_lancell" / "locks" / "stolen.lock").read_bytes() == thief


def test_the_heartbeat_stops_at_a_takeover_even_if_the_object_is_put_back(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    file = tmp_path / "store" / "_lancell" / "locks" / "beat.lock"
    with atlas_lock(store, "beat", stale_after=STALE_AFTER) as lease:
        ours = file.read_bytes()
        _steal(store, "beat")
        time.sleep(0.6 * STALE_AFTER)  # at least two renewals are due
        assert _heartbeats() == []  # the renewal failed its condition: the heartbeat stopped
        file.write_bytes(ours)
        with pytest.raises(LockLostError, match=r"lock 'beat' .* was lost \(taken over by another process\)"):
            lease.check()


def test_timeout_raises_lock_timeout_error_naming_the_lock(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    with atlas_lock(store, "busy"):
        with pytest.raises(LockTimeoutError, match=r"could not take lock 'busy' within 0\.2 s") as caught:
            with atlas_lock(store, "busy", timeout=0.2):
                pass
    assert isinstance(caught.value, TimeoutError)
    # a lock named by a digest said neither what it guards nor who held it, nor for how long
    with atlas_lock(store, "dataset-1f0d31f2", about="dataset 'ds1'", stale_after=300):
        with pytest.raises(LockTimeoutError) as caught:
            with atlas_lock(store, "dataset-1f0d31f2", about="dataset 'ds1'", timeout=0.2):
                pass
    message = str(caught.value)
    assert "lock 'dataset-1f0d31f2' (dataset 'ds1') within 0.2 s" in message
    assert f"held by process {os.getpid()} on host {socket.gethostname()}, taken 0 s ago" in message
    assert "not renewed the lock for 300 s" in message


def test_release_deletes_the_lock_file_and_joins_the_heartbeat(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    with atlas_lock(store, "tidy"):
        (beat,) = _heartbeats()
        assert beat.daemon
    assert not beat.is_alive() and _heartbeats() == []
    assert not (tmp_path / "store" / "_lancell" / "locks" / "tidy.lock").exists()


def test_snapshot_records_nothing_when_its_lock_is_taken_over(tmp_path: Path, monkeypatch) -> None:
    db = str(tmp_path / "db")
    atlas = RaggedAtlas.create(
        db, "cells", Cell, store=str(tmp_path / "arrays"), registry_schemas={"genes": Gene}
    )
    assert atlas.snapshot() == 0
    validate = lancell.snapshots.find_problems

    def taken_over_while_validating(view: AtlasCore) -> list[str]:  # another process breaks the lock here
        _steal(atlas.core.meta_store, "snapshot")
        return validate(view)

    monkeypatch.setattr(lancell.snapshots, "find_problems", taken_over_while_validating)
    with pytest.raises(LockLostError, match="lock 'snapshot'"):
        atlas.snapshot()
    monkeypatch.undo()
    assert RaggedAtlas.list_versions(db)["version"].tolist() == [0]
    time.sleep(0.6)  # the thief's lease (stale_after 0.5) goes stale; the next snapshot takes number 1
    assert atlas.snapshot() == 1
    assert RaggedAtlas.list_versions(db)["version"].tolist() == [0, 1]


def test_locks_work_on_a_memory_store() -> None:
    store = obstore.store.MemoryStore()
    with atlas_lock(store, "m", stale_after=0.4) as lease:
        time.sleep(0.5)  # renewed meanwhile
        lease.check()
    with atlas_lock(store, "m", timeout=0.5) as lease:  # the tombstone is taken over at once
        assert lease.where == "memory:///_lancell/locks/m.lock"


def _plant(store: obstore.store.LocalStore, name: str, **holder: object) -> None:
    """A lock object as a holder on this host would have written it, renewed just now."""
    body = {"token": "planted", "host": socket.gethostname(), "renewed_at": time.time(), "stale_after": 600}
    obstore.put(store, f"_lancell/locks/{name}.lock", json.dumps(body | holder).encode())


def test_a_holder_whose_pid_now_names_another_process_counts_as_dead(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    alive = os.getpid()  # a live process has the pid the holder recorded
    boot = this_process()["started"].split(":")[0]
    _plant(store, "reused", pid=alive, started=f"{boot}:12")
    with atlas_lock(store, "reused", timeout=0):  # taken over: that process started at another time
        pass
    _plant(store, "same", pid=alive, started=this_process()["started"])
    _plant(store, "unrecorded", pid=alive)  # written before holders recorded their start
    _plant(store, "another namespace", pid=alive, started=f"{boot}:12", namespace="1")  # not judged
    # a machine of the same name: the pid says nothing; a malformed record is not judged
    _plant(store, "another boot", pid=2**22 + 1, started="another-boot:12", machine="another machine")
    _plant(store, "malformed", pid=2**22 + 1, started=12)
    for name in ("same", "unrecorded", "another namespace", "another boot", "malformed"):
        with pytest.raises(LockTimeoutError), atlas_lock(store, name, timeout=0.2):
            pass

    me = this_process()
    if me["machine"] is not None:  # this machine before a reboot: every process of that boot is gone
        _plant(store, "rebooted", pid=alive, started="another-boot:12", machine=me["machine"])
        with atlas_lock(store, "rebooted", timeout=0):
            pass


def test_a_holder_that_exited_but_is_not_yet_reaped_counts_as_dead(tmp_path: Path) -> None:
    """A killed holder whose parent had not reaped it (a zombie) still answered kill(pid, 0) and kept its
    start time: its lock was held until it went stale (600 s), and a retry of its work failed."""
    store = open_store(str(tmp_path / "store"))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":  # exited, not reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    me = this_process()
    boot = me["started"].split(":")[0]
    ticks = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    _plant(store, "zombie", pid=child.pid, started=f"{boot}:{ticks}", namespace=me["namespace"])
    try:
        with atlas_lock(store, "zombie", timeout=0):
            pass
    finally:
        child.wait()


def test_a_release_the_store_refused_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an outage at release used to leave the lock to others only after stale_after (600 s by default)
    store = open_store(str(tmp_path / "store"))
    retire = LocalLockObjects.retire
    outage = {"left": 2}

    def refused_during_the_outage(self: LocalLockObjects, *args: object) -> bool:
        if outage["left"]:
            outage["left"] -= 1
            raise OSError("the store is unreachable")
        return retire(self, *args)

    monkeypatch.setattr(LocalLockObjects, "retire", refused_during_the_outage)
    with atlas_lock(store, "outage"):
        pass  # the release fails; it is retried in the background (and fails once more)
    started = time.monotonic()
    with atlas_lock(store, "outage", timeout=10):
        assert time.monotonic() - started < 5
    assert outage["left"] == 0


def test_a_lock_whose_heartbeat_cannot_start_is_given_back(tmp_path: Path, monkeypatch) -> None:
    """Out of threads (``ulimit -u``, a pids limit), the lock object stayed written and held by this live
    process: a retry here waited for itself, every other process for ``stale_after``."""
    store = open_store(str(tmp_path / "store"))
    start = threading.Thread.start

    def refused(thread: threading.Thread) -> None:
        if thread.name.startswith("lancell-lock-"):
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refused)
    with pytest.raises(StoreError, match=r"cannot take lock 'spare' .*no thread could be started") as caught:
        with atlas_lock(store, "spare"):
            pass
    assert caught.value.errno == errno.EAGAIN
    assert not (tmp_path / "store" / "_lancell" / "locks" / "spare.lock").exists()
    monkeypatch.setattr(threading.Thread, "start", start)
    with atlas_lock(store, "spare", timeout=0.5):  # taken at once
        pass


@pytest.mark.parametrize("write", ["create", "replace"])
def test_a_take_whose_reply_was_lost_holds_the_lock(tmp_path: Path, monkeypatch, write: str) -> None:
    """The write landed and its reply was lost (a reset, a timeout): the take failed, and the lock stayed
    held by this live process for ``stale_after`` (600 s): its retries waited for themselves."""
    store = open_store(str(tmp_path / "store"))
    if write == "replace":  # a released lock (an object store's tombstone): taken over by a replace
        tombstone = {"token": "before", "released": True, "renewed_at": time.time(), "stale_after": 600}
        obstore.put(store, "_lancell/locks/lost.lock", json.dumps(tombstone).encode())
    original = getattr(LocalLockObjects, write)
    lost = {"left": 1}

    def landed_then_lost(self: LocalLockObjects, *args: object):
        written = original(self, *args)
        if lost["left"] and written is not None:
            lost["left"] -= 1
            raise OSError("connection reset by peer")
        return written

    monkeypatch.setattr(LocalLockObjects, write, landed_then_lost)
    with atlas_lock(store, "lost", timeout=1) as lease:  # read back: its own token, taken
        lease.check()
    assert lost["left"] == 0


def test_a_lock_a_failed_take_of_this_process_left_is_taken_back(tmp_path: Path, monkeypatch) -> None:
    """A take whose write seemed to fail and was not found on reading back (it landed later): this live
    process's object with no lease of its own was waited for until ``stale_after``."""
    store = open_store(str(tmp_path / "store"))
    create = LocalLockObjects.create

    def failed(self: LocalLockObjects, *args: object):
        raise OSError("timed out")

    monkeypatch.setattr(LocalLockObjects, "create", failed)
    with pytest.raises(StoreError, match="cannot take lock 'late'"):
        with atlas_lock(store, "late", timeout=1):
            pass
    body = this_process() | {"token": "a-take-that-failed", "renewed_at": time.time(), "stale_after": 600}
    obstore.put(store, "_lancell/locks/late.lock", json.dumps(body).encode())  # (it landed after all)
    monkeypatch.setattr(LocalLockObjects, "create", create)
    started = time.monotonic()
    with atlas_lock(store, "late", timeout=10):
        assert time.monotonic() - started < 5
    alive = subprocess.Popen(  # another live process of this host: its lock is waited for
        [
            sys.executable,
            "-c",
            "import json, time; from lancell.processes import this_process; "
            "print(json.dumps(this_process()), flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        other = json.loads(alive.stdout.readline()) | {
            "token": "t2",
            "renewed_at": time.time(),
            "stale_after": 600,
        }
        obstore.put(store, "_lancell/locks/late.lock", json.dumps(other).encode())
        with pytest.raises(LockTimeoutError):
            with atlas_lock(store, "late", timeout=0.5):
                pass
    finally:
        alive.kill()
        alive.wait()
