"""Cross-process locks held as renewed leases on one small object (``_lancell/locks/<name>.lock``).

Local disk and remote object stores alike (the conditional writes are in :mod:`lancell.tables.lock_objects`):

- **taking**: the lock object is created if absent. If present, it is taken over only when it is free (a
  released lock's tombstone), stale (not renewed for the ``stale_after`` its holder recorded, judged on the
  last renewal) or its holder's process is certainly gone (:func:`lancell.processes.process_gone`: on this
  host, boot and namespace, no such process, a zombie, or a reused pid told apart by the process's start;
  or of this machine before a reboot). Taking over is a conditional overwrite of exactly the version that
  was read, so of many processes racing to break one dead holder's lock exactly one wins; the others see a
  changed object and keep waiting. A write whose outcome is unknown (its reply lost or timed out after it
  landed) is read back, and the lock is taken when the object holds this lease's token; an object this very
  process wrote in a take that failed as far as it knew (no live lease of its holds its token) is taken back
  at once, not waited for as another live holder;
- **holding**: a daemon heartbeat thread renews the lease every ``stale_after / 4`` by a conditional
  overwrite of its own last version. A failed condition means another process took the lock over: the lease
  is lost and is not renewed again;
- **fencing**: :meth:`Lease.check` raises :class:`~lancell.errors.LockLostError` when the lease was taken
  over or could not be renewed in time; the work a lock guards calls it right before each commit point;
- **releasing**: the heartbeat is stopped and joined, then the lock object is retired only if it is still
  the version this holder wrote, so a late holder never releases its successor's lock. A release the store
  refused (an outage) is retried in the background until the lease would have gone stale.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import obstore.store as obs_store

from lancell.errors import LockLostError, LockTimeoutError, StoreError
from lancell.processes import is_this_process, process_gone, this_process
from lancell.storage.store_failures import StoreFailures
from lancell.storage.store_retries import RETRIES, broken_connection
from lancell.storage.stores import describe_store
from lancell.tables.lock_objects import LockObjects, Seen, lock_objects

__all__ = ["Lease", "atlas_lock"]

log = logging.getLogger(__name__)

_LOCK_PREFIX = "_lancell/locks"
# A holder that could not renew for this fraction of stale_after counts its lease as lost (on its own
# monotonic clock); others break it once its recorded renewal is stale_after old by their wall clock: hosts'
# clocks must agree within stale_after / 4 (a breaker's clock that far ahead breaks a live lease; its
# holder's checks before each shard and after each commit then stop it, docs/integrity.md).
_LOST_AFTER = 0.75
# how far in the future a recorded time may lie before a message says that a clock is off
_CLOCK_SLACK_S = 5.0
# the tokens of this process's leases being taken or held: a lock object this process wrote with another
# token is a take's whose write failed as far as it knew (a reply lost or timed out after the write landed)
_LIVE_TOKENS: set[str] = set()


@contextmanager
def atlas_lock(
    store: obs_store.ObjectStore,
    name: str,
    *,
    about: str | None = None,
    timeout: float = 120.0,
    stale_after: float = 600.0,
) -> Iterator[Lease]:
    """Hold the lock ``name`` of ``store`` for the duration of the ``with`` block.

    Parameters
    ----------
    store
        The store holding the lock object (the atlas' metadata store).
    name
        The lock's name; one object ``_lancell/locks/<name>.lock``.
    about
        What the lock guards, for messages (``"dataset 'ds1'"`` for a lock named by a digest).
    timeout
        Seconds to wait for the lock.
    stale_after
        Seconds this holder's lock may go without renewal before another process may take it over; it is
        renewed every ``stale_after / 4`` and recorded in the lock object, which is how other processes
        judge it.

    Yields
    ------
    Lease
        The held lease; call :meth:`Lease.check` right before committing the guarded work.

    Raises
    ------
    LockTimeoutError
        The lock could not be taken within ``timeout`` seconds.
    StoreError
        The store failed while the lock was taken.
    """
    path = f"{_LOCK_PREFIX}/{name}.lock"
    where = f"{describe_store(store)}/{path}"
    lease = Lease(lock_objects(store), name, path, stale_after, where=where, about=about)
    lease.take(timeout)
    try:
        yield lease
    finally:
        lease.release()


class Lease:
    """A held lock: renewed by a heartbeat thread while the ``with`` block of :func:`atlas_lock` runs."""

    def __init__(
        self,
        objects: LockObjects,
        name: str,
        path: str,
        stale_after: float,
        where: str,
        about: str | None = None,
    ) -> None:
        self.name = name
        self.label = f"{name!r}" + (f" ({about})" if about else "")  # for messages
        self.path = path
        self.where = where
        self.stale_after = float(stale_after)
        self.token = uuid.uuid4().hex
        self._objects = objects
        self._taken_at = 0.0
        self._broken = 0  # tries of the take whose connection broke before the write landed
        self._seen: Seen | None = None
        self._renewed = 0.0  # time.monotonic() of the last successful write
        self._lost: str | None = None
        self._mutex = threading.Lock()  # the heartbeat's renewals against release
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"lancell-lock-{name}", daemon=True)

    def check(self) -> None:
        """Confirm that this process still holds the lock (one read of the lock object).

        Raises
        ------
        LockLostError
            Another process took the lock over, or the heartbeat could not renew it in time (the store was
            unreachable): whatever the lock guards must not be committed.
        """
        if self._lost is None and time.monotonic() - self._renewed > _LOST_AFTER * self.stale_after:
            self._lost = f"not renewed for {time.monotonic() - self._renewed:.1f} s"
        if self._lost is None:
            try:
                current = self._objects.read(self.path)
            except Exception as exc:  # any store failure: holding cannot be confirmed
                raise LockLostError(
                    f"lock {self.label} at {self.where}: cannot confirm it is held: {exc}"
                ) from exc
            if current is None or _decode(current).get("token") != self.token:
                self._lost = "taken over by another process"
        if self._lost is not None:
            raise LockLostError(f"lock {self.label} at {self.where} was lost ({self._lost})")

    def taken_over(self) -> bool:
        """Whether another process took this lock over (its object names another holder, or is gone); False
        where the object cannot be read (a store outage: nothing is known of another holder)."""
        try:
            current = self._objects.read(self.path)
        except Exception:  # any store failure
            return False
        return current is None or _decode(current).get("token") != self.token

    def _body(self, **fields: Any) -> bytes:
        body = {
            "token": self.token,
            **this_process(),  # host, pid, pid namespace, start: process_gone tells when it died
            "taken_at": self._taken_at,
            "renewed_at": time.time(),
            "stale_after": self.stale_after,
            "write": uuid.uuid4().hex,  # every version's bytes (and so its ETag) differ
        }
        return json.dumps(body | fields, sort_keys=True).encode()

    def take(self, timeout: float) -> None:
        """Take the lock, waiting up to ``timeout`` seconds, and start the heartbeat that renews it.

        Raises
        ------
        LockTimeoutError
            Another process held the lock for ``timeout`` seconds.
        StoreError
            The store failed (unreachable, refused), or no thread could be started to renew the lock:
            nothing was taken (or it was given back).
        """
        deadline = time.monotonic() + timeout
        delay = 0.005
        _LIVE_TOKENS.add(self.token)
        try:
            while not self._taken(deadline, timeout):
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        except BaseException:
            _LIVE_TOKENS.discard(self.token)
            raise
        self._renewed = time.monotonic()
        try:
            self._heartbeat.start()
        except RuntimeError as exc:  # no thread left (`ulimit -u`, a pids limit): nothing would renew it
            self.release()  # (it stayed held by this live process: others waited for stale_after)
            error = StoreError(
                f"cannot take lock {self.label} at {self.where}: no thread could be started to renew it "
                f"({exc}); raise the limit on threads (`ulimit -u`, a container's pids limit)"
            )
            error.errno = errno.EAGAIN
            raise error from exc

    def _taken(self, deadline: float, timeout: float) -> bool:
        """One try at taking the lock: whether it is taken (``self._seen`` set).

        A write whose outcome is unknown (the store's reply lost or timed out) is read back: the lock is
        taken when the object holds this lease's token. One whose connection broke before it landed is tried
        again, whatever the deadline (:meth:`_try_again`); should it land after all, the next try finds the
        object holding this lease's token: taken.
        """
        self._taken_at = time.time()
        again = False
        with StoreFailures(f"cannot take lock {self.label} at {self.where}"):
            seen = self._objects.read(self.path)
            try:
                if seen is not None and _decode(seen).get("token") == self.token:  # a try that landed late
                    self._seen = seen
                elif seen is None:
                    self._seen = self._objects.create(self.path, self._body())
                elif _takeable(seen, self.name, self.stale_after):
                    self._seen = self._objects.replace(self.path, seen, self._body())
            except Exception as exc:
                self._seen = self._recover_quietly()
                if self._seen is None and not self._try_again(exc):
                    raise
                again = self._seen is None
            else:
                if self._seen is None and self._broken:  # (a broken try's write landed after its read)
                    self._seen = self._recover_quietly()
        if self._seen is not None:
            return True
        if again:
            return False
        if time.monotonic() > deadline:
            holder = _decode(seen) if seen is not None else {}
            raise LockTimeoutError(
                f"could not take lock {self.label} within {timeout:g} s: held by {_described(holder)} "
                f"(at {self.where}); a holder is taken over once it has not renewed the lock for "
                f"{float(holder.get('stale_after', self.stale_after)):g} s, or at once when it died on "
                "this host"
            )
        return False

    def _try_again(self, exc: Exception) -> bool:
        """Whether a try whose write did not land (its read back: not this lease's) is tried again: its
        connection broke (:func:`~lancell.storage.store_retries.broken_connection`), at most ``RETRIES``
        times per take."""
        if not broken_connection(exc) or self._broken >= RETRIES:
            return False
        self._broken += 1
        log.warning("lock %r at %s: %s; tried again", self.name, self.where, str(exc).split("\n", 1)[0])
        return True

    def _recover_quietly(self) -> Seen | None:
        """:meth:`_recover`, or None where the store cannot be read either."""
        try:
            return self._recover()
        except Exception:  # any store failure: the write's own error is the one to raise
            return None

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_after / 4):
            try:
                self._renew()
            except Exception as exc:  # store unreachable: retry at the next beat; check() tells the holder
                log.warning("lock %r at %s: renewal failed: %s", self.name, self.where, exc)
            if self._lost is not None:
                return

    def _renew(self) -> None:
        with self._mutex:
            if self._lost is not None or self._stop.is_set() or self._seen is None:
                return
            renewed = self._objects.replace(self.path, self._seen, self._body())
            if renewed is None:
                renewed = self._recover()
            if renewed is None:
                self._lost = "taken over by another process"
                log.warning("lock %r at %s was taken over by another process", self.name, self.where)
                return
            self._seen, self._renewed = renewed, time.monotonic()

    def _recover(self) -> Seen | None:
        """The current version when it is still ours (a write whose reply was lost did happen), else None."""
        current = self._objects.read(self.path)
        if current is None or _decode(current).get("token") != self.token:
            return None
        return current

    def release(self) -> None:
        """Stop renewing and give the lock up (unless another process already took it over)."""
        self._stop.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join()
        _LIVE_TOKENS.discard(
            self.token
        )  # (an object left with it, a release refused, is this process's to take)
        with self._mutex:
            if self._seen is None:
                return
            seen, self._seen = self._seen, None
            try:
                self._retire(seen)
            except Exception as exc:  # store unreachable: retried in the background while the lease lasts
                log.warning("lock %r at %s could not be released (retrying): %s", self.name, self.where, exc)
                threading.Thread(
                    target=self._retire_later, args=(seen,), name=f"lancell-unlock-{self.name}", daemon=True
                ).start()

    def _retire(self, seen: Seen) -> None:
        """Retire the lock object if it is still this holder's (``seen``, or a version a lost reply wrote)."""
        tombstone = self._body(released=True)
        if not self._objects.retire(self.path, seen, tombstone):
            current = self._recover()
            if current is not None:
                self._objects.retire(self.path, current, tombstone)

    def _retire_later(self, seen: Seen) -> None:
        """Retry :meth:`_retire` until it succeeds or the lease has gone stale (others may then take it
        over anyway): a store outage of a few seconds does not keep every other process waiting for
        ``stale_after``."""
        delay = 0.25
        while time.monotonic() + delay < self._renewed + self.stale_after:
            time.sleep(delay)
            try:
                self._retire(seen)
            except Exception:  # still unreachable
                delay = min(delay * 2, 10.0)
                continue
            log.info("lock %r at %s released after a failed attempt", self.name, self.where)
            return


def _decode(seen: Seen) -> dict[str, Any]:
    try:
        body = json.loads(seen.data)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _described(holder: dict[str, Any]) -> str:
    """The holder a lock object records, in words."""
    now = time.time()
    parts = [f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}"]
    for field, what in (("taken_at", "taken"), ("renewed_at", "renewed")):
        if isinstance(holder.get(field), int | float):
            age = now - holder[field]
            ahead = f"{-age:.0f} s in the future by this host's clock (that host's clock is ahead)"
            parts.append(f"{what} {age:.0f} s ago" if age > -_CLOCK_SLACK_S else f"{what} {ahead}")
    return ", ".join(parts)


def _takeable(seen: Seen, name: str, stale_after: float) -> bool:
    """Whether the lock version ``seen`` may be taken over: released, stale, or its holder died here.

    A holder is judged on the ``stale_after`` it recorded, or on ``stale_after`` when it recorded none.
    """
    holder = _decode(seen)
    if holder.get("released"):
        return True
    if holder.get("token") not in _LIVE_TOKENS and is_this_process(holder):
        log.warning(
            "lock %r: taking back the lock a take of this process wrote though it seemed to fail", name
        )
        return True
    if process_gone(holder):
        log.warning("lock %r: breaking the lock of dead process %s on this host", name, holder.get("pid"))
        return True
    renewed = float(holder.get("renewed_at", holder.get("taken_at", 0.0)))
    age = time.time() - renewed
    if age > float(holder.get("stale_after", stale_after)):
        log.warning("lock %r: breaking a lock not renewed for %.0f s (%s)", name, age, holder)
        return True
    return False
