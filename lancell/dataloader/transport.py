"""Batches from DataLoader workers to the training process through reusable shared memory
(docs/architecture.md, "Training data loading").

PyTorch hands every tensor a worker returns to the training process through a new shared-memory file:
the worker creates it, copies the tensor in and faults its pages, and the training process receives the
file descriptor over a fresh socket connection and maps it. For a sparse batch (row offsets, columns,
values, positions, groups) that is five files, five connections and a few megabytes of new pages per
batch: on two cores it cost more than reading the batch (benchmarks/RESULTS.md, "Loader").

:class:`SharedMemoryCollate` wraps a collate: each worker keeps a small pool of *slots* (``memfd`` shared
memory, one per batch in flight) and copies the whole collated batch into one slot; only the slot's number
and the batch's layout (dtypes, shapes, offsets) cross the queue, and a slot's file descriptor only the
first time. The training process maps each slot once and returns tensors that are views of it. A slot is
reused only after every tensor of its batch is gone: the view the tensors share carries a finalizer that
marks the slot free in its shared header, so a batch kept by the training loop stays intact (the pool then
grows). Anything but CPU tensors (strided or sparse CSR) and the dicts, lists and tuples holding them
(numbers, strings, other tensors) travels as the queue normally carries it.
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any, NamedTuple

import numpy as np
import torch

from lancell.errors import BatchTransportError

__all__ = ["SharedMemoryCollate", "shared_memory_available"]

HEADER = 64  # bytes before the first segment: byte 0 is the slot's state; segments keep 64-byte alignment
FREE, IN_USE = 0, 1
INLINE_MAX = 1 << 16  # smaller tensors travel inside the message: keeping one (an index) never holds a slot
_MIN_CAPACITY = 1 << 20


def shared_memory_available() -> bool:
    """Whether this platform has anonymous shared memory files (``os.memfd_create``: Linux)."""
    return hasattr(os, "memfd_create")


class _Dense(NamedTuple):
    """A strided tensor at ``offset`` bytes of a slot's payload."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class _Inline(NamedTuple):
    """A small tensor's bytes, carried by the message itself."""

    data: bytes
    dtype: torch.dtype
    shape: tuple[int, ...]


class _Csr(NamedTuple):
    """A sparse CSR tensor: its three component tensors and its size."""

    crow: _Dense | _Inline
    col: _Dense | _Inline
    values: _Dense | _Inline
    size: tuple[int, ...]


def _aligned(n: int) -> int:
    return -(-n // 64) * 64


def _bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values in row-major order as a uint8 array (a view when it is contiguous)."""
    if tensor.numel() == 0:  # an empty tensor may have stride 0 (from numpy), which a view as bytes refuses
        return np.empty(0, np.uint8)
    return tensor.resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy()


class _Layout:
    """Walks a collated batch: tensors become :class:`_Dense` / :class:`_Csr` markers at payload offsets."""

    def __init__(self) -> None:
        self.tensors: list[tuple[int, torch.Tensor]] = []
        self.nbytes = 0

    def _dense(self, tensor: torch.Tensor) -> _Dense | _Inline:
        if tensor.numel() * tensor.element_size() <= INLINE_MAX:
            data = _bytes(tensor).tobytes()
            return _Inline(data, tensor.dtype, tuple(tensor.shape))
        offset = self.nbytes
        self.tensors.append((offset, tensor))
        self.nbytes += _aligned(tensor.numel() * tensor.element_size())
        return _Dense(offset, tensor.dtype, tuple(tensor.shape))

    def plan(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "cpu" or obj.requires_grad:
                return obj
            if obj.layout == torch.strided:
                return self._dense(obj)
            if obj.layout == torch.sparse_csr:
                parts = (obj.crow_indices(), obj.col_indices(), obj.values())
                return _Csr(*(self._dense(part) for part in parts), tuple(obj.shape))
            return obj
        if isinstance(obj, dict):
            return {key: self.plan(value) for key, value in obj.items()}
        if isinstance(obj, list):
            return [self.plan(value) for value in obj]
        if type(obj) is tuple:
            return tuple(self.plan(value) for value in obj)
        return obj


class _Slot:
    """One shared-memory file of a worker's pool, mapped in the worker."""

    def __init__(self, capacity: int) -> None:
        self.fd = os.memfd_create("lancell-batch", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, capacity)
        self.capacity = capacity
        self.array = np.frombuffer(mmap.mmap(self.fd, capacity), np.uint8)
        self.sent = False  # whether the training process has been given the file descriptor

    def close(self) -> None:
        os.close(self.fd)


class _Pool:
    """A worker's slots: a free one large enough is reused, a free one too small is replaced, else one is
    added."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.slots: list[_Slot] = []
        self.generations: list[int] = []

    def acquire(self, nbytes: int) -> int:
        free = [k for k, slot in enumerate(self.slots) if slot.array[0] == FREE]
        fitting = [k for k in free if self.slots[k].capacity >= HEADER + nbytes]
        if fitting:
            k = min(fitting, key=lambda k: self.slots[k].capacity)
        else:
            capacity = max(_MIN_CAPACITY, _aligned(HEADER + nbytes + nbytes // 4))
            if free:  # grown in place: the training process maps the new file under the next generation
                k = free[0]
                self.slots[k].close()
                self.slots[k] = _Slot(capacity)
                self.generations[k] += 1
            else:
                k = len(self.slots)
                self.slots.append(_Slot(capacity))
                self.generations.append(0)
        self.slots[k].array[0] = IN_USE
        return k


_POOL: _Pool | None = None


def _pool() -> _Pool:
    global _POOL
    if _POOL is None or _POOL.pid != os.getpid():  # a forked child never writes into its parent's slots
        _POOL = _Pool()
    return _POOL


class _SharedBatch:
    """What a worker puts on the result queue: the slot and the layout (pickles to :func:`_receive`)."""

    def __init__(
        self, key: tuple[int, int, int] | None, fd: Any, capacity: int, nbytes: int, layout: Any
    ) -> None:
        self.args = (key, fd, capacity, nbytes, layout)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _receive, self.args


def pack(batch: Any) -> Any:
    """Copy the tensors of ``batch`` into a free slot of this process's pool and return what to send."""
    layout = _Layout()
    tree = layout.plan(batch)
    if not layout.tensors:
        return _SharedBatch(None, None, 0, 0, tree)
    pool = _pool()
    k = pool.acquire(layout.nbytes)
    slot = pool.slots[k]
    payload = slot.array[HEADER : HEADER + layout.nbytes]
    for offset, tensor in layout.tensors:
        data = _bytes(tensor)
        np.copyto(payload[offset : offset + data.size], data)  # numpy: torch's copy_ is 3x slower here
    fd = None
    if not slot.sent:
        fd = reduction.DupFd(slot.fd)  # the training process fetches it once, when it unpickles
        slot.sent = True
    return _SharedBatch((pool.pid, k, pool.generations[k]), fd, slot.capacity, layout.nbytes, tree)


_MAPPED: dict[tuple[int, int], tuple[int, np.ndarray]] = {}  # (worker pid, slot) -> (generation, slot bytes)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _forget_exited_workers() -> None:
    """Drop the mappings of workers that have exited (batches still held keep their own slot alive)."""
    for pid in {pid for pid, _ in list(_MAPPED)}:
        if not _alive(pid):
            for key in [key for key in _MAPPED if key[0] == pid]:
                _MAPPED.pop(key, None)


def _release(state: np.ndarray) -> None:
    state[0] = FREE


def _build(tree: Any, payload: torch.Tensor | None) -> Any:
    if isinstance(tree, _Dense):
        size = int(np.prod(tree.shape, dtype=np.int64)) * tree.dtype.itemsize
        return payload[tree.offset : tree.offset + size].view(tree.dtype).view(tree.shape)
    if isinstance(tree, _Inline):
        if not tree.data:
            return torch.empty(tree.shape, dtype=tree.dtype)
        return torch.frombuffer(bytearray(tree.data), dtype=torch.uint8).view(tree.dtype).view(tree.shape)
    if isinstance(tree, _Csr):
        parts = (_build(part, payload) for part in (tree.crow, tree.col, tree.values))
        return torch.sparse_csr_tensor(*parts, size=tree.size, check_invariants=False)
    if isinstance(tree, dict):
        return {key: _build(value, payload) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_build(value, payload) for value in tree]
    if type(tree) is tuple:
        return tuple(_build(value, payload) for value in tree)
    return tree


def _receive(key: tuple[int, int, int] | None, fd: Any, capacity: int, nbytes: int, tree: Any) -> Any:
    """In the training process: the batch as tensors viewing the slot (mapped here the first time)."""
    if key is None:
        return _build(tree, None)
    pid, k, generation = key
    if fd is not None:
        _forget_exited_workers()  # a new slot is rare: the time to look for mappings nobody will use again
        handle = fd.detach()
        try:
            mapped = np.frombuffer(mmap.mmap(handle, capacity), np.uint8)
        finally:
            os.close(handle)
        _MAPPED[pid, k] = (generation, mapped)
    known = _MAPPED.get((pid, k))
    if known is None or known[0] != generation:
        raise BatchTransportError(
            f"a batch from worker process {pid} names its shared-memory slot {k} (generation {generation}), "
            f"which was never sent to this process {os.getpid()}: batches must be unpickled by the process "
            "that iterates the loader"
        )
    mapped = known[1]
    view = mapped[HEADER : HEADER + nbytes]  # the batch's tensors hold this array; its end frees the slot
    weakref.finalize(view, _release, mapped[:1])
    return _build(tree, torch.from_numpy(view))


@dataclass(frozen=True)
class SharedMemoryCollate:
    """Wrap a collate so that its batches reach the training process through a worker's reusable
    shared-memory slots instead of one new shared-memory file per tensor (see the module docstring).

    ``make_loader`` applies it to every loader with workers (where :func:`shared_memory_available`); wrap
    a collate with it for a DataLoader of your own. The training process gets the collate's output with each
    CPU tensor replaced by a view of the same values in the slot.

    Parameters
    ----------
    collate_fn
        The collate to wrap (picklable for workers).
    """

    collate_fn: Callable[[Any], Any]

    def __call__(self, batch: Any) -> Any:
        return pack(self.collate_fn(batch))
