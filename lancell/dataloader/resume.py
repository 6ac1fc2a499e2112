"""A :class:`~lancell.dataloader.sampler.CellSampler`'s resume point: where an interrupted epoch goes on.

An epoch's batches are a function of the sampler's seed, the epoch, its settings (mode, batch size, block
size, ``drop_last``, world size) and the dataset's cells in their order. A state records the epoch, the
batches done and all of those; loading it mid-epoch refuses any difference, since the resumed epoch would
then be another order cut at the same place: cells of the done part read twice, others never, without a
word. At an epoch's start (no batch done) only the epoch is taken: a new epoch may run on other settings or
on a newer snapshot.

The cells are compared by a digest of each cell's zarr group and position in it (the dataset's pointers),
computed once per sampler, at its first state (about 0.1 s per 10M cells).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from lancell.dataloader.checks import integer
from lancell.errors import ArgumentError, QueryError

__all__ = ["STATE_FORMAT", "EpochOrder", "ResumePoint", "cells_digest", "read_state"]

STATE_FORMAT = 1  # the layout of a state dict (its "format" entry)


def cells_digest(group_names: Sequence[str], cell_groups: np.ndarray, cell_positions: np.ndarray) -> str:
    """Hex digest of which stored cell is at each dataset position (group path and position in it)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\0".join(group_names).encode())
    digest.update(np.ascontiguousarray(cell_groups, dtype="<i4").tobytes())
    digest.update(np.ascontiguousarray(cell_positions, dtype="<i8").tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class EpochOrder:
    """What an epoch's order depends on, besides the epoch (compared field by field when resuming).

    ``block_size`` is 0 in random mode (it plays no part there).
    """

    seed: int
    mode: str
    batch_size: int
    block_size: int
    drop_last: bool
    num_replicas: int
    n_cells: int
    cells: str


_ORDER_FIELDS = tuple(field.name for field in fields(EpochOrder))
_REMEDY = {
    "num_replicas": "resume on as many ranks",
    "n_cells": "build the dataset from the same snapshot and query",
    "cells": "build the dataset from the same snapshot and query",
}


@dataclass(frozen=True)
class ResumePoint:
    """An epoch and the batches of it already done (per rank)."""

    epoch: int
    batches_done: int

    def state(self, order: EpochOrder) -> dict[str, Any]:
        """The state dict: plain ints, strings and bools (``torch.save`` and JSON keep it)."""
        return {"format": STATE_FORMAT, **asdict(self), **asdict(order)}


def _entry(state: Mapping[str, Any], key: str) -> Any:
    if key not in state:
        raise QueryError(f"this sampler state has no {key!r}: pass what CellSampler.state_dict() returned")
    return state[key]


def read_state(state: object, order: EpochOrder, batches_per_epoch: int) -> ResumePoint:
    """The resume point of ``state`` for a sampler whose epochs have ``order``.

    Raises
    ------
    ArgumentError
        ``state`` is not a mapping.
    QueryError
        An entry is missing or malformed, its format is another, ``batches_done`` exceeds an epoch's batches,
        or, mid-epoch, an entry of ``order`` differs (named with both values and the remedy).
    """
    if not isinstance(state, Mapping):
        raise ArgumentError(
            f"a sampler state is a dict from CellSampler.state_dict(), got {type(state).__name__}"
        )
    if _entry(state, "format") != STATE_FORMAT:
        raise QueryError(
            f"sampler state format {state['format']!r} is not {STATE_FORMAT}, the one this lancell reads"
        )
    point = ResumePoint(
        integer("the state's epoch", _entry(state, "epoch"), 0),
        integer("the state's batches_done", _entry(state, "batches_done"), 0),
    )
    if point.batches_done == 0:
        return point
    saved = {key: _entry(state, key) for key in _ORDER_FIELDS}
    now = asdict(order)
    for key in _ORDER_FIELDS:
        if saved[key] != now[key]:
            remedy = _REMEDY.get(key, f"build the sampler with {key}={saved[key]!r}")
            what = (
                "the dataset's cells differ"
                if key == "cells"
                else f"{key} was {saved[key]!r}, now {now[key]!r}"
            )
            raise QueryError(
                f"cannot resume epoch {point.epoch} after batch {point.batches_done}: {what}, so the rest of "
                f"the epoch would be another order (cells read twice or never); {remedy}, or resume at the "
                f"start of an epoch (batches_done=0)"
            )
    if point.batches_done > batches_per_epoch:
        raise QueryError(
            f"the state's batches_done={point.batches_done} exceeds the {batches_per_epoch} batches of an "
            "epoch"
        )
    return point
