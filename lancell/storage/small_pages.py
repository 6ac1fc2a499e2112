"""Memory new to the process on small pages, and file writes below a huge page, so it is cheap to touch.

On Linux numpy asks for transparent huge pages for every array of 4 MiB or more, and one buffered ``write``
of 2 MiB or more fills the page cache with 2 MiB folios: both take whole 2 MiB blocks of the kernel's free
memory. In a virtual machine whose balloon reports free memory to the host (virtio-balloon free page
reporting, as Firecracker and cloud sandboxes run), those whole free blocks are the ones handed back, so the
first touch of every page in them waits for the host. Measured on this project's 2-core machine: writing
128 MiB in 2 MiB calls took 0.95 s and in 1 MiB calls 0.03 s; first touching a 200 MiB numpy array 1.1-1.6 s
on huge pages and 0.10-0.35 s on small ones; a query of 100M values spent 84 % of its 19 s zeroing huge
pages, 2.7 s on small ones; a fresh ingestion a third of its CPU time (``benchmarks/RESULTS.md``).

So lancell's public calls run under :func:`numpy_small_pages` (their boundary,
:func:`lancell.storage.store_failures.store_boundary`, and the write transactions) on such a machine
(:func:`reports_free_memory`), and objects go to a local disk in writes of at most :data:`WRITE_PIECE` bytes
everywhere (:func:`write_pieces` for obstore, :func:`pwrite_all` for a file descriptor: they cost nothing).
Elsewhere numpy keeps its huge pages: small pages cost one page fault per 4 KiB of new memory where huge
pages cost one per 2 MiB (on this machine, with memory the process had just freed, a whole-atlas query of
20M values took 0.43 s against 0.32 s on huge pages; its first call 0.68 s against 3.87 s).
``LANCELL_SMALL_PAGES`` set to ``1`` or ``0`` decides instead.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np

from lancell.errors import LancellWarning, caller_outside_lancell

__all__ = [
    "WRITE_PIECE",
    "numpy_small_pages",
    "on_small_pages",
    "pwrite_all",
    "reports_free_memory",
    "write_pieces",
]

T = TypeVar("T")

# The most bytes one write call hands the page cache: below the 2 MiB of a huge page (see the docstring).
WRITE_PIECE = 1 << 20
# LANCELL_SMALL_PAGES's values (unset or "auto": small pages where the balloon reports free memory)
_SWITCH = dict.fromkeys(("1", "true", "yes", "on"), True) | dict.fromkeys(("0", "false", "no", "off"), False)
# virtio's device id of a memory balloon; its feature bit "free page reporting" (VIRTIO_BALLOON_F_REPORTING)
_BALLOON, _REPORTING = "0x0005", 5
_VIRTIO_DEVICES = Path("/sys/bus/virtio/devices")


def _madvise_setter() -> Callable[[bool], bool] | None:
    """numpy's switch of its huge-page advice (``NUMPY_MADVISE_HUGEPAGE`` at run time; it returns the
    previous setting), or None should a numpy release drop it (it is not public API)."""
    return getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)


@functools.cache
def reports_free_memory(devices: Path = _VIRTIO_DEVICES) -> bool:
    """Whether this machine is a virtual machine whose memory balloon reports free memory to its host
    (Linux's ``/sys/bus/virtio/devices``: a balloon whose negotiated features have free page reporting)."""
    try:
        for device in devices.iterdir():
            if (device / "device").read_text().strip() == _BALLOON:
                features = (device / "features").read_text().strip()
                if len(features) > _REPORTING and features[_REPORTING] == "1":
                    return True
    except OSError:  # no sysfs (macOS, Windows, a container without it): memory stays with the machine
        return False
    return False


def _wanted() -> bool:
    """Whether public calls run on small pages: ``LANCELL_SMALL_PAGES`` (read at each outermost call) is
    ``1`` (``true``, ``yes``, ``on``) or ``0`` (``false``, ``no``, ``off``); unset or ``auto``, where the
    machine's balloon reports free memory (:func:`reports_free_memory`). Another value warns, then auto."""
    value = os.environ.get("LANCELL_SMALL_PAGES", "auto").strip().lower()
    if value not in _SWITCH and value != "auto":
        warnings.warn(
            f"LANCELL_SMALL_PAGES={value!r} is not auto or one of {sorted(_SWITCH)}: taken as auto",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    return _SWITCH[value] if value in _SWITCH else reports_free_memory()


class _Advice:
    """numpy's huge-page advice turned off while any thread is inside :func:`numpy_small_pages`, and
    numpy's own setting put back when the last one leaves (unless it was turned on meanwhile)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._numpys: bool | None = None  # numpy's setting when the first one entered, if it was changed

    def enter(self) -> None:
        with self._lock:
            if self._inside == 0 and (setter := _madvise_setter()) is not None and _wanted():
                self._numpys = setter(False)
            self._inside += 1

    def leave(self) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0 and self._numpys is not None and (setter := _madvise_setter()) is not None:
                if setter(self._numpys):  # turned on again meanwhile (by its user): left on
                    setter(True)
                self._numpys = None


_ADVICE = _Advice()


@contextmanager
def numpy_small_pages() -> Iterator[None]:
    """Within: numpy allocates new arrays (in any thread of the process) without asking for huge pages,
    where small pages are wanted (:func:`_wanted`). Nested and concurrent uses are counted; numpy's own
    setting is back once the last has left. It applies to new mappings: arrays of 32 MiB or more always
    are (glibc maps them one by one); a smaller one may reuse heap memory advised before, mostly still
    resident."""
    _ADVICE.enter()
    try:
        yield
    finally:
        _ADVICE.leave()


_END = object()  # what next() gives for an exhausted iterator in on_small_pages


def on_small_pages(items: Iterator[T]) -> Iterator[T]:
    """``items`` advanced under :func:`numpy_small_pages`, which is left at every ``yield``: a generator the
    caller holds suspended (a notebook's half-read batches) does not keep it for the whole process."""
    try:
        while True:
            with numpy_small_pages():
                item = next(items, _END)
            if item is _END:
                return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def write_pieces(data: memoryview | bytes | np.ndarray) -> list[memoryview]:
    """``data``'s bytes as views of at most :data:`WRITE_PIECE` bytes each (one view when empty)."""
    view = memoryview(data).cast("B")
    return [view[lo : lo + WRITE_PIECE] for lo in range(0, len(view), WRITE_PIECE)] or [view]


def pwrite_all(fd: int, data: memoryview | bytes | np.ndarray, position: int) -> int:
    """Write all of ``data`` at ``position`` of the file ``fd`` in pieces of at most :data:`WRITE_PIECE`
    bytes; return the position after it."""
    for piece in write_pieces(data):
        while piece:
            written = os.pwrite(fd, piece, position)
            piece, position = piece[written:], position + written
    return position
