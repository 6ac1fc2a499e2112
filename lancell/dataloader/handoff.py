"""The first epoch of a loader with workers: batches read in this process until the workers have started
(docs/architecture.md, "Training data loading").

Starting workers waits for the forkserver's imports (torch, zarr, numba) before the first of them forks:
seconds on a loaded machine, while this process reads a batch in well under one. On its first iteration a
:class:`WorkerLoader` starts its workers on a background thread and meanwhile reads batches itself, in the
sampler's order and with the same collate. The workers take over from the first batch they claim: every
batch of the epoch comes once, in order, from one or the other. Later epochs are the DataLoader's own.
"""

from __future__ import annotations

import functools
import multiprocessing.util
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any, cast

from torch.utils.data import DataLoader
from torch.utils.data._utils.pin_memory import pin_memory

from lancell.dataloader.dataset import CellDataset
from lancell.dataloader.sampler import CellSampler
from lancell.errors import LancellWarning, WorkerStartError

__all__ = ["WorkerLoader"]


class _Shared:
    """One epoch's sampler batches: taken in order by this process until the workers claim the rest."""

    def __init__(self, batches: Iterator[Any]) -> None:
        self._batches = batches
        self._lock = threading.Lock()
        self.claimed = False

    def take(self) -> Any | None:
        """The next batch's positions for this process; None once the workers claimed the rest or none are
        left."""
        with self._lock:
            return None if self.claimed else next(self._batches, None)

    def rest(self) -> Iterator[Any]:
        """The batches this process has not taken (claimed at the first ``next``)."""
        with self._lock:  # waits for a take() under way: this process never takes one after this
            self.claimed = True
        yield from self._batches


class _HandoffSampler:
    """The loader's ``batch_sampler``: the :class:`CellSampler` itself, except that during the first epoch
    the workers' iterators continue the epoch this process began (other attributes are the sampler's)."""

    def __init__(self, sampler: CellSampler) -> None:
        self.sampler = sampler
        self.shared: _Shared | None = None

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        shared = self.shared
        return iter(self.sampler) if shared is None else shared.rest()

    def __getattr__(self, name: str) -> Any:
        if name == "sampler":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.sampler, name)


_STARTING: weakref.WeakSet[_Start] = weakref.WeakSet()


def _join_starting() -> None:
    """Wait for the workers' start-ups under way."""
    for start in list(_STARTING):
        start.join()


@functools.cache
def _join_before_exit() -> None:
    """Join the start-ups before multiprocessing's exit finalizers (once per process). In a process
    multiprocessing started (``torch.multiprocessing.spawn``'s ranks), those finalizers unlink the named
    semaphores of the workers' queues before threading's shutdown joins a :class:`_Start`: a rank that
    ended during its first epoch had workers fail to unpickle their queues (``FileNotFoundError``
    tracebacks). Its priority comes before theirs (0 and 10)."""
    multiprocessing.util.Finalize(None, _join_starting, exitpriority=100)


class _Start(threading.Thread):
    """Starts the workers (the DataLoader's iterator) off the calling thread; :meth:`result` joins it."""

    def __init__(self, start: Callable[[], Iterator[Any]]) -> None:
        # not a daemon: a process that ends at once still finishes handing the workers their start-up data
        super().__init__(name="lancell-worker-start", daemon=False)
        self._start_workers: Callable[[], Iterator[Any]] | None = start
        self._iterator: Iterator[Any] | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        _join_before_exit()
        _STARTING.add(self)
        super().start()

    def run(self) -> None:
        try:
            self._iterator = cast(Callable[[], Iterator[Any]], self._start_workers)()
        except BaseException as error:  # raised again in the thread that iterates
            self._error = error
        finally:  # a bound method of the loader: kept, it would hold the loader in a cycle (below)
            self._start_workers = None

    def result(self) -> Iterator[Any]:
        """The workers' iterator, once started.

        Raises
        ------
        WorkerStartError
            They could not be started (their error is its cause).
        """
        self.join()
        if isinstance(self._error, Exception):
            raise WorkerStartError(_could_not_start(self._error)) from self._error
        if self._error is not None:  # (an interrupt: as it is)
            raise self._error
        return cast(Iterator[Any], self._iterator)  # run() set it: no error was kept

    def failed(self) -> BaseException | None:
        """The error of a start that is over, else None (also while it is still starting)."""
        return None if self.is_alive() else self._error


def _could_not_start(error: BaseException) -> str:
    return (
        f"the loader's workers could not start: {type(error).__name__}: {error} (is /dev/shm writable, with "
        "room, and may this process start processes and threads? num_workers=0 reads in this process)"
    )


class _FirstEpoch:
    """The first epoch's iterator: batches read here while the workers start, then the workers'."""

    def __init__(self, loader: WorkerLoader, shared: _Shared, first: Any | None, start: _Start) -> None:
        self._loader = loader
        self._shared = shared
        self._next = first  # the first batch's positions, taken before the workers could claim it
        self._start = start
        self._workers: Iterator[Any] | None = None

    def __iter__(self) -> _FirstEpoch:
        return self

    def __len__(self) -> int:
        return len(self._loader)

    def __next__(self) -> Any:
        if self._workers is None:
            positions, self._next = self._next, None
            positions = self._shared.take() if positions is None else positions
            if positions is not None:
                batch = self._loader.inline_collate(self._loader.dataset.__getitems__(positions))
                return pin_memory(batch) if self._loader.pin_memory else batch
            if not self._shared.claimed:  # the whole epoch was read here
                if (error := self._start.failed()) is not None:  # (not silently: the next epoch raises it)
                    warnings.warn(
                        f"{_could_not_start(error)}; this epoch was read in this process, the next raises "
                        "WorkerStartError",
                        LancellWarning,
                        stacklevel=2,
                    )
                raise StopIteration
            self._workers = self._start.result()
        return next(self._workers)


class WorkerLoader(DataLoader):
    """A DataLoader with persistent workers whose first epoch begins before they have started.

    ``make_loader`` returns one for ``num_workers > 0``. Its first ``iter()`` returns at once: the first
    batch, and the next ones until the workers claim one, are read in this process with ``inline_collate``
    (the workers' collate without its transport). ``batch_sampler`` forwards attributes to the
    :class:`CellSampler`.

    Parameters
    ----------
    dataset, sampler
        The :class:`CellDataset` and its :class:`CellSampler`.
    collate_fn
        The workers' collate (picklable).
    inline_collate
        The collate for batches read in this process.
    **kwargs
        The other DataLoader arguments (``num_workers > 0``, ``persistent_workers=True``).

    Raises
    ------
    QueryError
        The sampler was built for a dataset of another size.
    """

    def __init__(
        self,
        dataset: CellDataset,
        sampler: CellSampler,
        collate_fn: Callable[[Any], Any],
        inline_collate: Callable[[Any], Any],
        **kwargs: Any,
    ) -> None:
        if isinstance(sampler, CellSampler):  # a batch sampler of the caller's has no size to compare
            sampler.check_dataset(dataset)
        super().__init__(dataset, batch_sampler=_HandoffSampler(sampler), collate_fn=collate_fn, **kwargs)
        self.inline_collate = inline_collate
        self._start: _Start | None = None

    def __iter__(self) -> Any:
        if self._start is None:
            shared = _Shared(iter(self.batch_sampler.sampler))
            first = shared.take()
            self.batch_sampler.shared = shared
            self._start = _Start(super().__iter__)
            self._start.start()
            return _FirstEpoch(self, shared, first, self._start)
        self._start.result()  # the workers have started (or their error is raised here)
        self.batch_sampler.shared = None
        return super().__iter__()
