"""Give the memory the C allocator kept after an ingestion back to the system.

glibc's ``malloc`` keeps freed blocks in its per-thread arenas for reuse, and an ingestion frees many large
ones (read buffers, sorted blocks, Arrow batches) on several threads. Without a trim, the anonymous memory
of a process that ingests dataset after dataset kept ~100 MiB more between datasets of 500k cells
(benchmarks/RESULTS.md, "Scale"). :func:`release_freed_memory` calls glibc's ``malloc_trim(0)`` where the C
library has it (Linux with glibc) and does nothing elsewhere; it frees only what is already free.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

__all__ = ["release_freed_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # no such symbol (musl, macOS) or no process handle
        return None


def release_freed_memory() -> None:
    """Return the C allocator's free memory to the system (glibc ``malloc_trim(0)``; elsewhere nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
