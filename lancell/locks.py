"""Cross-process locks built on the object store's atomic create (``put(mode="create")``).

Works wherever the store supports conditional puts: local disk (O_EXCL-style create) and S3-compatible
servers (``If-None-Match``). A lock whose holder died is broken at once when the holder ran on this host
(its pid is gone), otherwise after ``stale_after`` seconds.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import obstore
import obstore.store as obs_store

from lancell.errors import StoreError
from lancell.stores import read_json, write_json

__all__ = ["atlas_lock"]

_LOCK_PREFIX = "_lancell/locks"


@contextmanager
def atlas_lock(
    store: obs_store.ObjectStore, name: str, *, timeout: float = 120.0, stale_after: float = 600.0
) -> Iterator[None]:
    """Hold the lock ``name`` for the duration of the ``with`` block.

    Raises
    ------
    StoreError
        If the lock cannot be taken within ``timeout`` seconds.
    """
    path = f"{_LOCK_PREFIX}/{name}.lock"
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        body = {"token": token, "pid": os.getpid(), "host": socket.gethostname(), "taken_at": time.time()}
        try:
            write_json(store, path, body, create=True)
            break
        except FileExistsError:
            holder = read_json(store, path)
            age = time.time() - float(holder.get("taken_at", 0)) if holder is not None else 0.0
            if holder is not None and (_holder_died(holder) or age > stale_after):
                _release(store, path)
                continue
        if time.monotonic() > deadline:
            raise StoreError(f"could not take lock {name!r} within {timeout:.0f} s (held at {path})")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    try:
        yield
    finally:
        holder = read_json(store, path)
        if holder is not None and holder.get("token") == token:
            _release(store, path)


def _holder_died(holder: dict[str, object]) -> bool:
    """Whether the holder ran on this host and its process no longer exists (killed, crashed)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def _release(store: obs_store.ObjectStore, path: str) -> None:
    try:
        obstore.delete(store, path)
    except FileNotFoundError:
        pass
