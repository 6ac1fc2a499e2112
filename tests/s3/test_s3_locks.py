"""Cross-process locks on S3 (SeaweedFS): exclusive under racing breakers, kept by renewal, fenced when lost.

The same cases as ``tests/reliability/test_locks.py``, through conditional puts (``If-None-Match`` /
``If-Match``) instead of the local guard file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import obstore
import pytest
from lock_race import STALE_AFTER, assert_exclusive, finish_waiter, race, start_waiter
from s3server import Seaweed

from lancell.errors import LockLostError
from lancell.storage.stores import open_store
from lancell.tables.locks import atlas_lock


def test_racing_breakers_of_a_dead_lock_hold_it_one_at_a_time(seaweed: Seaweed, s3_root: str, tmp_path: Path):
    intervals = race(f"{s3_root}/store", seaweed.store_kwargs(), tmp_path, n=8, rounds=3)
    for held in intervals:
        assert len(held) == 8
        assert_exclusive(held)


def test_a_holder_renewing_past_stale_after_keeps_the_lock(seaweed: Seaweed, s3_root: str, tmp_path: Path):
    url, kwargs = f"{s3_root}/store", seaweed.store_kwargs()
    with atlas_lock(open_store(url, kwargs), "long", stale_after=STALE_AFTER) as lease:
        waiter, out = start_waiter(url, kwargs, "long", tmp_path)
        time.sleep(2.5 * STALE_AFTER)  # the waiter tries all along
        lease.check()
        released = time.monotonic()
    assert finish_waiter(waiter, out) > released


def test_a_stolen_lease_fails_its_check_and_release_leaves_the_thief_alone(seaweed: Seaweed, s3_root: str):
    store = open_store(f"{s3_root}/store", seaweed.store_kwargs())
    path = "_lancell/locks/stolen.lock"
    with atlas_lock(store, "stolen", stale_after=STALE_AFTER) as lease:
        lease.check()
        thief = json.dumps({"token": "thief", "renewed_at": time.time(), "stale_after": 60.0}).encode()
        obstore.put(store, path, thief)
        with pytest.raises(
            LockLostError, match=r"lock 'stolen' at s3://lancell/.*stolen\.lock was lost \(taken"
        ):
            lease.check()
    assert bytes(obstore.get(store, path).bytes()) == thief


def test_release_leaves_a_tombstone_the_next_holder_takes_over(seaweed: Seaweed, s3_root: str):
    store = open_store(f"{s3_root}/store", seaweed.store_kwargs())
    path = "_lancell/locks/reused.lock"
    with atlas_lock(store, "reused") as first:
        pass
    released = json.loads(bytes(obstore.get(store, path).bytes()))
    assert (released["token"], released["released"]) == (first.token, True)
    with atlas_lock(store, "reused", timeout=1.0) as second:
        held = json.loads(bytes(obstore.get(store, path).bytes()))
        assert (held["token"], "released" in held) == (second.token, False)
