"""A handle's opened zarr nodes, and values read from them once (a CSC copy's offsets), by path: forgotten by
path, with everything under a path, or all at once (views of a handle share them)."""

from __future__ import annotations

from typing import Any

__all__ = ["OpenedNodes"]


class OpenedNodes:
    """Opened nodes by path (``"group"``, ``"group/csr/indices"``, or a key of a value read from one,
    ``"group/csc/indptr[:]"``), each also listed under every path it lies under, so that a group's are
    forgotten without reading the others' (a scan of every opened node per group was quadratic in the
    datasets a query plans: seconds at 1,500)."""

    def __init__(self) -> None:
        self._by_path: dict[str, Any] = {}
        self._under: dict[str, set[str]] = {}  # a path -> the opened paths equal to it or under it

    def get(self, path: str) -> Any:
        """The node or value kept under ``path``, or None."""
        return self._by_path.get(path)

    def __contains__(self, path: str) -> bool:
        return path in self._by_path

    def put(self, path: str, value: Any) -> None:
        """Keep ``value`` under ``path``."""
        self._by_path[path] = value
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            self._under.setdefault("/".join(parts[:depth]), set()).add(path)

    def forget(self, path: str) -> None:
        """Forget ``path`` alone (what lies under it stays)."""
        self._by_path.pop(path, None)

    def forget_under(self, path: str) -> None:
        """Forget ``path`` and every path under it."""
        for opened in self._under.pop(path, ()):
            self._by_path.pop(opened, None)

    def clear(self) -> None:
        """Forget everything."""
        self._by_path.clear()
        self._under.clear()
