"""The per-process caches of the read path (registry views, layouts' global indices, shard readers): a
mapping that keeps the ``size`` entries used last, safe to share between threads.

A caller keeps what it read in its own variables and puts it in the cache for later calls; it never reads
back an entry it has just put, which another thread's entries (or its own, beyond ``size``) may have evicted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["BoundedCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A least-recently-used mapping of at most ``size`` entries; every operation holds one lock."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The entry of ``key`` (now the last used), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` as the last used entry, evicting the least recently used beyond
        ``size``."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def forget_where(self, matches: Callable[[K], bool]) -> None:
        """Forget the entries whose key ``matches``."""
        with self._lock:
            for key in [key for key in self._entries if matches(key)]:
                del self._entries[key]

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
