"""Peak anonymous and file-backed resident memory of this process, sampled from ``/proc/self/status``.

``ru_maxrss`` counts every resident page, including the pages of memory-mapped files (the loader maps shard
files): those are page cache that the kernel reclaims under pressure, not memory the process allocated.
:class:`RssSampler` samples ``RssAnon`` (heap, arrays) and ``RssFile`` (mapped files) in a thread and keeps
their maxima; a spike shorter than the interval can be missed (``ru_maxrss`` cannot).
"""

from __future__ import annotations

import threading
from types import TracebackType

__all__ = ["RssSampler", "peak_rss_mib", "rss_parts_mib"]


def peak_rss_mib() -> float:
    """This process's own peak RSS in MiB (``VmHWM``): a child's ``ru_maxrss`` starts at its parent's RSS at
    the fork, so a child of a large parent would report the parent's."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))


def rss_parts_mib() -> dict[str, float]:
    """``{"anon": MiB, "file": MiB}`` now, from ``/proc/self/status`` (empty where there is none)."""
    parts = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    parts[key[3:].lower()] = int(value.split()[0]) / 1024
    except OSError:
        return {}
    return parts


class RssSampler:
    """Context manager sampling :func:`rss_parts_mib` every ``interval`` seconds; ``peak`` holds the maxima."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak: dict[str, float] = rss_parts_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        for key, value in rss_parts_mib().items():
            self.peak[key] = max(self.peak.get(key, 0.0), value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
