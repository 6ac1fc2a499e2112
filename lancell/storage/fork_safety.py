"""Whether this process was forked from one that had used an atlas's stores: obstore's and LanceDB's I/O
threads (their tokio runtimes) do not survive a fork, and a read in the child waits for them forever.

Opening an atlas handle and a :class:`~lancell.dataloader.dataset.CellDataset`'s first read mark the process;
a process forked from a marked one knows it (a fork handler), so a read there is refused, not hung, while a
dataset unpickled in a process that never touched a store still forks and reads.
"""

from __future__ import annotations

import os

__all__ = ["forked_after_store_use", "mark_stores_used"]

_used = False  # this process has used a store
_forked_after_use = False  # this process, or one it was forked from, was forked after a store was used


def mark_stores_used() -> None:
    """Record that this process has started a store's I/O threads."""
    global _used
    _used = True


def forked_after_store_use() -> bool:
    """Whether this process descends, by fork, from one that had used a store at the fork."""
    return _forked_after_use


def _after_fork_in_child() -> None:
    global _forked_after_use
    _forked_after_use = _forked_after_use or _used


os.register_at_fork(after_in_child=_after_fork_in_child)
