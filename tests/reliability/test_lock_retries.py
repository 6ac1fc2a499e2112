"""A lock take whose connection broke (lancell.tables.locks ``_try_again``), on obstore's in-memory store (its
conditional puts are S3's): the write that did not land is tried again, whatever the timeout; one that lands
after its read-back is found holding the lease's own token and taken; a connection that keeps breaking gives
up after ``RETRIES`` tries. The store's failure is raised as obstore raises it for a reset connection."""

from __future__ import annotations

import json

import obstore
import obstore.exceptions as obs_errors
import pytest
from obstore.store import MemoryStore

from lancell.errors import StoreError
from lancell.storage.store_retries import RETRIES
from lancell.tables.lock_objects import LockObjects, Seen
from lancell.tables.locks import Lease

PATH = "_lancell/locks/flaky.lock"
RESET = (
    "Generic S3 error: Error performing PUT http://127.0.0.1:9/bucket/_lancell/locks/flaky.lock in 1.4ms - "
    "HTTP error: error sending request (Connection reset by peer)"
)


class BrokenCreates(LockObjects):
    """Conditional writes whose first ``breaks`` creates fail as a reset connection does; with ``lands``, the
    failed write lands after all (the server completes the write the client gave up on): just after the
    read-back that follows it (``"read"``), or just before the next try's create (``"create"``)."""

    def __init__(self, store: MemoryStore, breaks: int, *, lands: str | None = None) -> None:
        super().__init__(store)
        self.breaks, self.lands = breaks, lands
        self.landing: tuple[str, bytes] | None = None

    def create(self, path: str, data: bytes) -> Seen | None:
        if self.lands == "create":
            self._land()
        if self.breaks > 0:
            self.breaks -= 1
            self.landing = (path, data) if self.lands else None
            raise obs_errors.GenericError(RESET)
        return super().create(path, data)

    def read(self, path: str) -> Seen | None:
        seen = super().read(path)
        if self.lands == "read":
            self._land()
        return seen

    def _land(self) -> None:
        if self.landing is not None:
            landing, self.landing = self.landing, None
            super().create(*landing)


def lease(objects: LockObjects) -> Lease:
    return Lease(objects, "flaky", PATH, 600.0, where="memory", about=None)


def holder(store: MemoryStore) -> dict:
    return json.loads(bytes(obstore.get(store, PATH).bytes()))


@pytest.mark.parametrize("timeout", [0.0, 5.0])
def test_a_write_that_did_not_land_is_tried_again_whatever_the_timeout(timeout: float) -> None:
    store = MemoryStore()
    taking = lease(BrokenCreates(store, breaks=2))
    taking.take(timeout)  # (vacuum takes a dataset's lock with timeout 0)
    try:
        assert holder(store)["token"] == taking.token
    finally:
        taking.release()
    assert holder(store)["released"] is True


@pytest.mark.parametrize("lands", ["read", "create"])
def test_a_write_that_landed_after_its_read_back_is_taken_as_this_leases(lands: str) -> None:
    store = MemoryStore()
    taking = lease(BrokenCreates(store, breaks=1, lands=lands))
    taking.take(0.0)  # (it waited for itself until the timeout: LockTimeoutError naming its own process)
    try:
        taking.check()
        assert holder(store)["token"] == taking.token
    finally:
        taking.release()
    assert holder(store)["released"] is True


def test_a_connection_that_keeps_breaking_gives_up() -> None:
    store = MemoryStore()
    with pytest.raises(StoreError, match=r"cannot take lock .*Connection reset by peer"):
        lease(BrokenCreates(store, breaks=RETRIES + 1)).take(5.0)
    assert obstore.list(store).collect() == []
