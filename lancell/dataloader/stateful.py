"""``StatefulBatchSampler``: a :class:`CellSampler` as torchdata's ``StatefulDataLoader`` checkpoints it.

``StatefulDataLoader`` asks its batch sampler for ``state_dict()`` without arguments each time it hands a
batch's positions to a worker, keeps those snapshots, and on loading replays the batches the loop took
since the snapshot it restores: so it wants the state after every batch the sampler has yielded. That is
right there and wrong under lancell's own loaders, which read ahead without a word to the sampler, so
:meth:`CellSampler.state_at` takes the batches the loop used; this wrapper gives torchdata what it asks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lancell.dataloader.sampler import CellSampler
from lancell.errors import ArgumentError

__all__ = ["StatefulBatchSampler"]


class StatefulBatchSampler:
    """The ``batch_sampler`` for ``torchdata.stateful_dataloader.StatefulDataLoader``: ``sampler``'s batches,
    with the state after the batches it has yielded (see the module docstring).

    Use it only with a loader that replays what it read ahead, as ``StatefulDataLoader`` does: with
    ``make_loader`` (or torch's own DataLoader), save ``sampler.state_at(batches_taken)`` instead.

    Parameters
    ----------
    sampler
        The :class:`CellSampler` (call ``set_epoch`` on either before each epoch).

    Raises
    ------
    ArgumentError
        ``sampler`` is not a :class:`CellSampler`.
    """

    def __init__(self, sampler: CellSampler) -> None:
        if not isinstance(sampler, CellSampler):
            raise ArgumentError(f"StatefulBatchSampler wraps a CellSampler, got {type(sampler).__name__}")
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """:meth:`CellSampler.set_epoch`."""
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state after every batch of the current iteration it has yielded."""
        return self.sampler.state_at(self.sampler.batches_yielded)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """:meth:`CellSampler.resume`."""
        self.sampler.resume(state)
