"""``ThreadedLoader``: batches read by threads of the training process, in sampler order
(docs/architecture.md, "Training data loading").

The batch kernel (:mod:`kernels.batch_read`) releases the GIL, so threads read batches in parallel without
worker processes: no start-up, no copy of every batch through shared memory, one mapping of the shard files.
On two cores, two threads read random batches 1.5-2x as fast as two DataLoader workers (benchmarks/RESULTS.md,
"Loader"). ``threads`` batches are read at once and twice as many are kept in flight, so the next batches
are ready while the model trains on this one.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from torch.utils.data._utils.pin_memory import pin_memory

from lancell.dataloader.checks import integer
from lancell.dataloader.dataset import CellDataset
from lancell.dataloader.sampler import CellSampler

__all__ = ["ThreadedLoader"]


class ThreadedLoader:
    """Iterate collated batches of ``dataset`` in the order of ``sampler``, read by ``threads`` threads.

    Parameters
    ----------
    dataset, sampler
        The :class:`CellDataset` and its :class:`CellSampler` (call ``sampler.set_epoch(e)`` before epochs).
    collate_fn
        Turns a :class:`CellBatch` into what the model takes (runs on the reading threads).
    threads
        Reading threads (at least 1).
    pin_memory
        Pin the output tensors (for a GPU), on the reading threads.

    Raises
    ------
    QueryError
        ``threads`` is not a positive integer, or the sampler was built for a dataset of another size.
    """

    def __init__(
        self,
        dataset: CellDataset,
        sampler: CellSampler,
        collate_fn: Callable[[Any], Any],
        threads: int,
        pin_memory: bool = False,
    ) -> None:
        self.threads = integer("threads", threads, 1)
        if isinstance(sampler, CellSampler):  # a batch sampler of the caller's has no size to compare
            sampler.check_dataset(dataset)
        self.dataset = dataset
        self.sampler = sampler
        self.collate_fn = collate_fn
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.sampler)

    def _read(self, positions: list[int]) -> Any:
        batch = self.collate_fn(self.dataset.__getitems__(positions))
        return pin_memory(batch) if self.pin_memory else batch

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.sampler)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="lancell-batch") as pool:
            in_flight: collections.deque[Future] = collections.deque()
            try:
                for positions in batches:
                    in_flight.append(pool.submit(self._read, positions))
                    if len(in_flight) >= 2 * self.threads:
                        yield in_flight.popleft().result()
                while in_flight:
                    yield in_flight.popleft().result()
            finally:  # a loop left early: drop what was read ahead
                for future in in_flight:
                    future.cancel()
