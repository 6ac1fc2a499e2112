"""``make_loader``: a PyTorch DataLoader wired for :class:`CellDataset` and :class:`CellSampler`.

- The sampler is the ``batch_sampler``, so PyTorch's map-style fetcher calls ``dataset.__getitems__(batch)``
  (torch >= 2.1 does when the dataset defines it): one batched read per batch, and the collate receives the
  already-batched :class:`CellBatch`.
- Workers are started with ``forkserver`` (or ``spawn``), never ``fork``: lancedb, obstore (tokio) and
  numba's threading layer hang or crash in forked children once the parent has used them. They are
  ``persistent_workers`` (opened once, reused every epoch) and each opens its own store handles lazily. The
  forkserver preloads ``lancell.dataloader`` (torch, zarr, numba, the batch kernel warmed) and runs the main
  module only in a worker that unpickles a name from it (:mod:`lancell.dataloader._forkserver`);
  ``make_loader`` starts it, so that its imports overlap what the training process does before its first
  batch. As with any forkserver/spawn program, the main module must guard its entry point with
  ``if __name__ == "__main__":``.
- With lancell's collates (:class:`SparseCollate`, :class:`DenseCollate`) the first epoch does not wait for
  the workers: the first batch, and the next ones until the workers claim one, are read in the training
  process (:class:`~lancell.dataloader.handoff.WorkerLoader`). A collate of the caller's runs in workers
  only (it may use ``get_worker_info()``).
- Batches come back from workers through each worker's reusable shared-memory slots
  (:class:`~lancell.dataloader.transport.SharedMemoryCollate`), not one new shared-memory file per tensor.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import warnings
from collections.abc import Callable, Iterable
from multiprocessing import spawn
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from lancell.dataloader.checks import flag, integer, real
from lancell.dataloader.collate import DenseCollate, SparseCollate
from lancell.dataloader.dataset import CellDataset
from lancell.dataloader.handoff import WorkerLoader
from lancell.dataloader.sampler import CellSampler
from lancell.dataloader.threaded import ThreadedLoader
from lancell.dataloader.transport import SharedMemoryCollate, shared_memory_available
from lancell.errors import ArgumentError, LancellWarning, QueryError, caller_outside_lancell

__all__ = ["make_loader"]

MAIN_ENV = "LANCELL_FORKSERVER_MAIN"


def _main_path() -> str | None:
    """The main module's path as workers compare it (None when the main module has no file)."""
    return spawn.get_preparation_data("lancell").get("init_main_from_path")


def _worker_options(
    num_workers: object,
    threads: object,
    prefetch_factor: object,
    multiprocessing_context: object,
    timeout: object,
) -> tuple[int, int, int, str, float]:
    """``num_workers``, ``threads``, ``prefetch_factor``, the context and ``timeout`` checked, with defaults.

    Worker-only options given without workers are refused (``prefetch_factor``, ``multiprocessing_context``,
    as torch's DataLoader refuses them) or warned about (a non-zero ``timeout``, which torch ignores).
    """
    num_workers = integer("num_workers", num_workers, 0)
    threads = integer("threads", threads, 0)
    if num_workers and threads:
        raise QueryError("read with worker processes or with threads, not both")
    if multiprocessing_context not in (None, "forkserver", "spawn"):
        raise QueryError(
            f"multiprocessing_context must be 'forkserver' or 'spawn', got {multiprocessing_context!r}: "
            "forked workers hang once the parent has used lancedb, obstore or numba"
        )
    timeout = real("timeout", timeout)
    if timeout < 0:
        raise QueryError(f"timeout must be >= 0 seconds, got {timeout}")
    if not num_workers:
        options = {"prefetch_factor": prefetch_factor, "multiprocessing_context": multiprocessing_context}
        given = [name for name, value in options.items() if value is not None]
        reader = f"threads={threads}" if threads else "num_workers=0"
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise QueryError(f"{' and '.join(given)} {verb} to worker processes only, not to {reader}")
        if timeout:
            warnings.warn(
                f"timeout={timeout:g} is ignored: it applies to worker processes only, not to {reader}",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )
    prefetch = 4 if prefetch_factor is None else integer("prefetch_factor", prefetch_factor, 1)
    return num_workers, threads, prefetch, multiprocessing_context or "forkserver", timeout


def make_loader(
    dataset: CellDataset,
    sampler: CellSampler,
    *,
    num_workers: int = 0,
    collate_fn: Callable[[Any], Any] | None = None,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context: Literal["forkserver", "spawn"] | None = None,
    timeout: float = 0,
    threads: int = 0,
) -> DataLoader | WorkerLoader | ThreadedLoader:
    """A DataLoader that yields one collated batch per sampler batch (or a :class:`ThreadedLoader`).

    Every argument is checked here, before a worker starts.

    Parameters
    ----------
    dataset, sampler
        The :class:`CellDataset` and its :class:`CellSampler` (call ``sampler.set_epoch(e)`` before epochs).
    num_workers
        Worker processes (0: read in the calling process).
    collate_fn
        Turns a :class:`CellBatch` into what the model takes (picklable for workers). Default:
        :class:`SparseCollate` for sparse feature spaces, :class:`DenseCollate` for dense ones.
    pin_memory
        Pin the output tensors (for a GPU); without an accelerator it is ignored with a
        :class:`~lancell.errors.LancellWarning`, as torch's own DataLoader does.
    prefetch_factor
        Batches each worker keeps in flight (default 4; only with workers).
    multiprocessing_context
        ``"forkserver"`` (the default) or ``"spawn"``; ``fork`` is refused (only with workers).
    timeout
        Seconds to wait for a batch from a worker before raising (0: wait forever); without workers it is
        ignored with a :class:`~lancell.errors.LancellWarning`, as torch ignores it.
    threads
        Read batches on this many threads of this process instead (no workers): a :class:`ThreadedLoader`,
        the fastest choice for sparse counts on local disk (their batch kernel releases the GIL).

    Raises
    ------
    QueryError
        A sampler built for a dataset of another size; ``fork`` asked for; a ``pin_memory`` that is not a
        bool; a number of workers or threads that is not a non-negative integer, both workers and threads; a
        ``prefetch_factor`` that is not a positive integer, a negative or non-finite ``timeout``;
        ``prefetch_factor`` or ``multiprocessing_context`` without workers (torch's DataLoader refuses them
        too).
    ArgumentError
        A :class:`SparseCollate` for a dense feature space (a ``TypeError``).

    Warns
    -----
    LancellWarning
        ``pin_memory`` without an accelerator, or a ``timeout`` without workers: they are ignored. Features
        some of the dataset's cells never measured (a union of gene panels), read by a collate without
        ``presence``: their zeros there are not measured zeros.
    """
    if isinstance(sampler, CellSampler):
        sampler.check_dataset(dataset)
    elif not isinstance(sampler, Iterable):  # (None: torch would read one cell per batch, in stored order)
        raise ArgumentError(
            f"sampler must be a CellSampler (or an iterable of batches of cell positions), got {sampler!r}"
        )
    num_workers, threads, prefetch_factor, context_name, timeout = _worker_options(
        num_workers, threads, prefetch_factor, multiprocessing_context, timeout
    )
    if collate_fn is None:
        collate_fn = SparseCollate() if dataset.kind == "sparse" else DenseCollate()
    pin_memory = flag("pin_memory", pin_memory)
    if isinstance(collate_fn, SparseCollate) and dataset.kind != "sparse":
        raise ArgumentError(
            f"SparseCollate needs a sparse feature space; this dataset's is {dataset.kind}: use DenseCollate"
        )
    if isinstance(collate_fn, SparseCollate | DenseCollate):  # (a subclass too: it has their presence)
        _warn_unstored(dataset, collate_fn.presence)
        if not collate_fn.presence:
            _warn_padded(dataset)
    if (
        pin_memory and not torch.accelerator.is_available()
    ):  # pinning would raise in the first epoch's handoff
        warnings.warn(
            "pin_memory=True is ignored: there is no accelerator (GPU) to pin batches for",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
        pin_memory = False
    if threads:
        return ThreadedLoader(dataset, sampler, collate_fn, threads, pin_memory)
    if num_workers == 0:
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, pin_memory=pin_memory)
    context = multiprocessing.get_context(context_name)
    if context_name == "forkserver":
        # the server imports torch and lancell.dataloader once and workers fork from it, instead of each
        # worker re-importing everything; the main module is run only where a worker needs it
        path = _main_path()
        if path is not None:
            os.environ[MAIN_ENV] = path
        context.set_forkserver_preload(["lancell.dataloader._forkserver"])
        # started now, not at the first iter(): its imports run while this process does other work
        multiprocessing.forkserver.ensure_running()
    sent = SharedMemoryCollate(collate_fn) if shared_memory_available() else collate_fn
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "multiprocessing_context": context,
        "persistent_workers": True,
        "prefetch_factor": prefetch_factor,
        "timeout": timeout,
    }
    if type(collate_fn) in (SparseCollate, DenseCollate):  # a collate of the caller's may need a worker
        return WorkerLoader(dataset, sampler, sent, collate_fn, **kwargs)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=sent, **kwargs)


def _warn_unstored(dataset: CellDataset, presence: bool) -> None:
    """Warn about cells kept (``on_unmeasured("keep")``) in datasets that do not store a layer: their
    rows of it are zeros no one measured. The presence mask tells them apart in ``X`` only."""
    if dataset.on_unmeasured != "keep" or not dataset.unmeasured:
        return
    groups = dataset.groups
    for k, layer in enumerate(dataset.layers):
        if k == 0 and presence:
            continue
        stored = {
            uid
            for uid, kept in zip(groups.dataset_uids, groups.measured & groups.stores[k], strict=True)
            if kept
        }
        if lacking := sorted(set(dataset.unmeasured) - stored):
            where = "X" if k == 0 else f"layers[{layer!r}]"
            told = (
                "pass presence=True to the collate to mark them"
                if k == 0
                else "the presence mask covers X only"
            )
            warnings.warn(
                f"the cells of datasets {lacking} were kept without layer {layer!r} (on_unmeasured('keep')): "
                f"their rows of {where} in a batch are zeros no one measured; {told}",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )


def _warn_padded(dataset: CellDataset) -> None:
    """Warn when some of ``dataset``'s output features were not measured by every group its cells live in:
    a batch without the presence mask holds zeros there that no one measured."""
    groups = dataset.groups
    # the groups storing X (one without it is kept unmeasured, named by _warn_unstored)
    rows = groups.presence[:-1][groups.measured & groups.stores[0]]
    padded = int((~rows).any(axis=0).sum()) if rows.size else 0
    if padded:
        warnings.warn(
            f"{padded} of the {rows.shape[1]} features were not measured by every dataset of these cells (a "
            "union of gene panels): batches hold 0 where a dataset never measured them; pass presence=True "
            "to the collate to tell them from measured zeros (or read the intersection of the panels)",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
