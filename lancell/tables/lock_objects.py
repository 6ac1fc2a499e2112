"""Conditional writes of small lock objects: create if absent, replace or retire only the version one read.

Every change a lock makes goes through these three operations, so that of several processes acting on the
same version of a lock object exactly one succeeds:

- remote stores (S3 and S3-compatible servers, GCS, Azure, memory) use obstore's conditional puts:
  ``put(mode="create")`` (``If-None-Match: *``) and ``put(mode=UpdateVersion(e_tag, version))``
  (``If-Match``). Neither obstore nor S3 has a conditional delete, so a remote lock object is *retired* by a
  conditional overwrite with a tombstone, never deleted: it stays as one small object per lock name;
- local disk (obstore's ``LocalStore`` has no conditional update) reads, compares and writes while holding an
  exclusive ``flock`` on a guard file next to the lock objects, writing through a temporary file and
  ``os.replace`` so that readers never see a partial object; a retired lock file is deleted. The kernel drops
  the guard when its holder exits, so the guard itself can never be left taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obstore
import obstore.exceptions as obs_errors
import obstore.store as obs_store

from lancell.errors import StoreError

__all__ = ["LockObjects", "Seen", "lock_objects"]

_GUARD = ".guard"


@dataclass(frozen=True)
class Seen:
    """One version of a lock object: its bytes and what identifies that version to the store."""

    data: bytes
    version: object


class LockObjects:
    """Conditional operations on the lock objects of one remote store (obstore conditional puts)."""

    def __init__(self, store: obs_store.ObjectStore) -> None:
        self.store = store

    def read(self, path: str) -> Seen | None:
        """The current version of ``path``, or None when there is none."""
        try:
            result = obstore.get(self.store, path)
            data = bytes(result.bytes())
        except (FileNotFoundError, obs_errors.NotFoundError):
            return None
        return Seen(data, _update_version(result.meta))

    def create(self, path: str, data: bytes) -> Seen | None:
        """Write ``path`` if it does not exist; None when it does."""
        try:
            written = obstore.put(self.store, path, data, mode="create")
        except (FileExistsError, obs_errors.AlreadyExistsError):
            return None
        return Seen(data, _update_version(written))

    def replace(self, path: str, seen: Seen, data: bytes) -> Seen | None:
        """Overwrite ``path`` with ``data`` if it is still the version ``seen``; None when it changed."""
        try:
            written = obstore.put(self.store, path, data, mode=seen.version)  # type: ignore[arg-type]
        except (obs_errors.PreconditionError, FileNotFoundError, obs_errors.NotFoundError):
            return None
        except (NotImplementedError, obs_errors.NotSupportedError) as exc:
            raise StoreError(
                f"the store {self.store!r} has no conditional update, which lancell's locks need: {exc}"
            ) from exc
        return Seen(data, _update_version(written))

    def retire(self, path: str, seen: Seen, tombstone: bytes) -> bool:
        """End the version ``seen`` of ``path`` if it is still there: overwrite it with ``tombstone``."""
        return self.replace(path, seen, tombstone) is not None


class LocalLockObjects(LockObjects):
    """The same operations on local disk, each under an exclusive ``flock`` of the folder's guard file."""

    def __init__(self, store: obs_store.LocalStore) -> None:
        super().__init__(store)
        self.root = Path(store.prefix or os.sep)

    @contextmanager
    def _guard(self, file: Path) -> Iterator[None]:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(file.parent / _GUARD, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def read(self, path: str) -> Seen | None:
        try:
            data = (self.root / path).read_bytes()
        except FileNotFoundError:
            return None
        return Seen(data, data)

    def create(self, path: str, data: bytes) -> Seen | None:
        file = self.root / path
        with self._guard(file):
            if file.exists():
                return None
            _write(file, data)
        return Seen(data, data)

    def replace(self, path: str, seen: Seen, data: bytes) -> Seen | None:
        file = self.root / path
        with self._guard(file):
            if self.read(path) != seen:
                return None
            _write(file, data)
        return Seen(data, data)

    def retire(self, path: str, seen: Seen, tombstone: bytes) -> bool:
        """Delete ``path`` if it is still the version ``seen`` (local disk needs no tombstone)."""
        file = self.root / path
        with self._guard(file):
            if self.read(path) != seen:
                return False
            file.unlink()
        return True


def lock_objects(store: obs_store.ObjectStore) -> LockObjects:
    """The conditional operations that suit ``store``."""
    if isinstance(store, obs_store.LocalStore):
        return LocalLockObjects(store)
    return LockObjects(store)


def _update_version(meta: Mapping[str, Any]) -> dict[str, str]:
    """obstore's ``UpdateVersion`` for a put result or object meta (obstore refuses None fields)."""
    fields = {key: meta.get(key) for key in ("e_tag", "version")}
    return {key: value for key, value in fields.items() if value is not None}


def _write(file: Path, data: bytes) -> None:
    temporary = file.with_name(f".{file.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, file)
    except BaseException:  # (a full disk: the empty file it made is not left behind)
        with contextlib.suppress(OSError):  # (a read-only folder: EROFS even for no file)
            temporary.unlink(missing_ok=True)
        raise
