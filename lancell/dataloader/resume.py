"""A :class:`~lancell.dataloader.sampler.CellSampler`'s resume point: where an interrupted epoch goes on.

An epoch's batches are a function of the sampler's seed, the epoch, its settings (mode, batch size, block
size, ``drop_last``, world size) and the dataset's cells in their order. A state records the epoch, the
batches done and all of those; loading it mid-epoch refuses any difference, since the resumed epoch would
then be another order cut at the same place: cells of the done part read twice, others never, without a
word. At an epoch's start (no batch done) or end (every batch done) only the epoch is taken: a new epoch may
run on other settings or on a newer snapshot.

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

__all__ = [
    "STATE_FORMAT",
    "EpochOrder",
    "Progress",
    "ResumePoint",
    "cells_digest",
    "cells_per_rank",
    "read_state",
]

STATE_FORMAT = 1  # the layout of a state dict (its "format" entry)


_DIGEST_CELLS = 1 << 20  # cells digested per step: the temporaries stay ~12 MB


def cells_digest(group_names: Sequence[str], cell_groups: np.ndarray, cell_positions: np.ndarray) -> str:
    """Hex digest of the dataset's pointers: each position's group code and position in the group, and the
    group paths in code order (the locality order sorts cells by group code: a renumbering is another
    order)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\0".join(group_names).encode())
    for lo in range(0, len(cell_groups), _DIGEST_CELLS):
        digest.update(np.ascontiguousarray(cell_groups[lo : lo + _DIGEST_CELLS], dtype="<i4"))
        digest.update(np.ascontiguousarray(cell_positions[lo : lo + _DIGEST_CELLS], dtype="<i8"))
    return digest.hexdigest()


def cells_per_rank(n_cells: int, num_replicas: int, batch_size: int, drop_last: bool) -> int:
    """Positions each rank yields per epoch (padding included)."""
    if drop_last:
        return n_cells // (num_replicas * batch_size) * batch_size
    return -(-n_cells // num_replicas)


def _epoch_batches(order: Mapping[str, Any]) -> int | None:
    """The batches of one rank's epoch under a state's ``order`` entries (None where they are no numbers)."""
    n_cells, replicas, size, drop = (
        order[key] for key in ("n_cells", "num_replicas", "batch_size", "drop_last")
    )
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (replicas, size)):
        return None
    if not (isinstance(n_cells, int) and isinstance(drop, bool)):
        return None
    return -(-cells_per_rank(n_cells, replicas, size, drop) // size)


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
_REMEDY = {"num_replicas": "resume on as many ranks"}


def _snapshot_remedy(saved: object, now: int | None) -> str:
    """What to build the dataset from, given the snapshot the state was saved reading (None: live)."""
    if isinstance(saved, int) and not isinstance(saved, bool):
        if saved == now:
            return f"build the dataset with the state's query (both read snapshot {saved})"
        reads = "the live atlas" if now is None else f"snapshot {now}"
        return (
            f"the state was saved reading snapshot {saved} and this dataset reads {reads}: build it with "
            f"the same query on RaggedAtlas.checkout(db, {saved})"
        )
    return "the state was saved reading the live atlas: build the dataset from the same cells and query"


@dataclass(frozen=True)
class ResumePoint:
    """An epoch and the batches of it already done (per rank)."""

    epoch: int
    batches_done: int

    def state(self, order: EpochOrder, snapshot_version: int | None) -> dict[str, Any]:
        """The state dict: plain ints, strings, bools and None (``torch.save`` and JSON keep it); the
        snapshot the dataset reads is named in messages, not compared (the cells are)."""
        return {"format": STATE_FORMAT, **asdict(self), **asdict(order), "snapshot_version": snapshot_version}


def _entry(state: Mapping[str, Any], key: str) -> Any:
    if key not in state:
        raise QueryError(f"this sampler state has no {key!r}: pass what CellSampler.state_at() returned")
    return state[key]


def read_state(
    state: object, order: EpochOrder, batches_per_epoch: int, snapshot_version: int | None
) -> ResumePoint:
    """The resume point of ``state`` for a sampler whose epochs have ``order`` (its dataset reading snapshot
    ``snapshot_version``, None: the live atlas).

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
            f"a sampler state is a dict from CellSampler.state_at(), got {type(state).__name__}"
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
    if point.batches_done == _epoch_batches(saved):  # a finished epoch: none of it is left, in any order
        return ResumePoint(point.epoch, batches_per_epoch)
    now = asdict(order)
    for key in _ORDER_FIELDS:
        if saved[key] != now[key]:
            remedy = _REMEDY.get(key, f"build the sampler with {key}={saved[key]!r}")
            if key in ("n_cells", "cells"):
                remedy = _snapshot_remedy(state.get("snapshot_version"), snapshot_version)
            what = (
                "the dataset's cells differ"
                if key == "cells"
                else f"{key} was {saved[key]!r}, now {now[key]!r}"
            )
            raise QueryError(
                f"cannot resume epoch {point.epoch} after batch {point.batches_done}: {what}, so the rest of "
                f"the epoch would be another order (cells read twice or never); {remedy}; or leave the "
                f"state and start the epoch over (set_epoch({point.epoch}))"
            )
    if point.batches_done > batches_per_epoch:
        raise QueryError(
            f"the state's batches_done={point.batches_done} exceeds the {batches_per_epoch} batches of an "
            "epoch"
        )
    return point


class _Count:
    """Batches one iteration has yielded."""

    def __init__(self) -> None:
        self.n = 0


class Progress:
    """Where a sampler's iterations stand, for its states.

    A loaded resume point holds for the iterations of its epoch until one of them has drawn every batch
    (the loop's, or a peek's whose loader read the rest ahead) or ``set_epoch`` names another epoch: a
    batch peeked at first, ``next(iter(loader))``, or a loop retried after an error begins there again.
    ``set_epoch`` with the current epoch changes nothing. Each iteration counts the batches it yielded: a
    training loop cannot have taken more from it (loaders read ahead, never behind).
    """

    def __init__(self) -> None:
        self.loaded: ResumePoint | None = None
        self.used = False  # an iteration began from the loaded point
        self.current: ResumePoint | None = None  # the iteration begun last since the epoch was set
        self.last = _Count()  # its count
        self.most = 0  # the most batches one iteration begun since then has yielded

    def _new_epoch(self) -> None:
        self.current, self.last, self.most = None, _Count(), 0

    def load(self, point: ResumePoint) -> None:
        self.loaded, self.used = point, False
        self._new_epoch()

    def set_epoch(self, old: int, new: int, batches_per_epoch: int) -> str | None:
        """Note epoch ``new`` set over ``old``; return a warning when that drops a loaded state no iteration
        used."""
        if new == old:  # (the usual loop's call after a resume, or a second call: nothing changes)
            return None
        self._new_epoch()
        loaded, self.loaded = self.loaded, None
        if loaded is None:
            return None
        if self.used or (loaded.batches_done >= batches_per_epoch and new == loaded.epoch + 1):
            return None  # its epoch was read from the point, or was whole: the loop moves on
        if loaded.batches_done:
            return (
                f"set_epoch({new}) drops the resume point loaded for epoch {loaded.epoch} (after batch "
                f"{loaded.batches_done}), which no iteration used: epoch {new} starts at its first batch; "
                "start the epoch loop at sampler.epoch (the loaded state's epoch)"
            )
        return (
            f"set_epoch({new}) after loading a state at the start of epoch {loaded.epoch}: start the epoch "
            "loop at sampler.epoch"
        )

    def begin(self, epoch: int) -> tuple[int, _Count]:
        """An iteration of ``epoch`` begins: the batches it skips, and its count."""
        skip = 0
        if self.loaded is not None:
            skip, self.used = self.loaded.batches_done, True
        self.current, self.last = ResumePoint(epoch, skip), _Count()
        return skip, self.last

    def end(self, epoch: int) -> None:
        """An iteration of ``epoch`` has drawn every batch: a loaded point of it is spent."""
        if self.loaded is not None and self.loaded.epoch == epoch:
            self.loaded = None

    def yielded(self, count: _Count) -> None:
        count.n += 1
        self.most = max(self.most, count.n)

    def point(self, epoch: int, taken: int) -> ResumePoint:
        """The resume point after ``taken`` batches of the iteration of ``epoch`` begun last (none begun
        since the epoch was set or a state loaded: where the next one begins, ``taken`` must be 0).

        Raises
        ------
        QueryError
            More batches than an iteration begun since has yielded.
        """
        if self.current is None:
            begun = self.loaded.batches_done if self.loaded is not None else 0
        else:
            begun = self.current.batches_done
        if taken > self.most:
            raise QueryError(
                f"batches_taken={taken}, but this iteration of epoch {epoch} has yielded {self.most} "
                f"batches (from batch {begun}): count the batches the training loop used in this iteration, "
                "from its first (step + 1), not from the epoch's start"
            )
        return ResumePoint(epoch, begun + taken)
