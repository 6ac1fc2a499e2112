"""``CellSampler``: a seeded, epoch-aware, DDP-aware batch sampler for :class:`CellDataset`.

Two modes:

- ``"random"``: every epoch is a uniform random permutation of all cells of the dataset (truly random
  access; every batch draws from the whole atlas).
- ``"locality"``: the cells of each zarr group, in storage order, are cut into blocks of ``block_size``
  contiguous cells (contiguous element ranges, so one block is one coalesced read). Every epoch the blocks of
  *all* groups are shuffled together and concatenated, the sequence is cut into batches, and the cells of each
  batch are shuffled. A batch is thus ``batch_size / block_size`` blocks drawn from the whole atlas (mostly
  from different datasets), and which blocks share a batch changes every epoch.

Distributed training: ``num_replicas`` / ``rank`` default to ``torch.distributed``'s world size and rank
when a process group is initialized (else 1 / 0). Every rank computes the same epoch order (same ``seed``),
then takes its contiguous share. Every rank gets the same number of batches and, per epoch, every cell is
seen exactly once across ranks, except that

- with ``drop_last=True`` the order is truncated to a multiple of ``num_replicas * batch_size`` (at most that
  many cells minus one are skipped this epoch; which ones changes every epoch), and
- with ``drop_last=False`` the order is padded to a multiple of ``num_replicas`` by repeating cells from its
  start, as ``torch.utils.data.DistributedSampler`` does (at most ``num_replicas - 1`` extra reads: a cell is
  read twice, or, with fewer cells than replicas, by several ranks); each rank's last batch may then be
  smaller than ``batch_size`` (the same size on every rank).

Resuming: ``state_at(batches_taken)`` in the training loop and ``resume(state)`` after a restart make the
epoch's iterations go on with its next batch, the order unchanged (:mod:`.resume`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from lancell.dataloader.checks import flag, integer
from lancell.dataloader.dataset import CellDataset
from lancell.dataloader.locality import expand_blocks, locality_blocks, shuffle_within_batches
from lancell.dataloader.resume import EpochOrder, Progress, cells_digest, cells_per_rank, read_state
from lancell.errors import LancellWarning, QueryError, caller_outside_lancell

__all__ = ["CellSampler", "batch_entropy"]

SamplerMode = Literal["locality", "random"]


class CellSampler(Sampler[list[int]]):
    """Yield lists of dataset positions, one list per batch (pass it as the DataLoader's ``batch_sampler``).

    Parameters
    ----------
    dataset
        The :class:`CellDataset` (only its length and per-cell group/position arrays are used).
    batch_size
        Cells per batch.
    mode
        ``"locality"`` (default) or ``"random"``; see the module docstring.
    seed
        Base seed; epoch ``e`` uses ``(seed, e)``. Use the same seed on every rank.
    drop_last
        Drop cells that do not fill a whole batch on every rank (see the module docstring).
    num_replicas, rank
        Distributed world size and this process's rank (default: from ``torch.distributed``).
    block_size
        Locality mode: contiguous cells per block (default ``max(1, batch_size // 8)``, so a batch mixes
        about eight blocks).

    Raises
    ------
    QueryError
        A batch size, block size or ``num_replicas`` that is not a positive integer, a ``seed`` that is not a
        non-negative integer, a ``drop_last`` that is not a bool, an unknown mode, or a rank outside
        ``[0, num_replicas)``. Iterating (or
        ``set_epoch``, ``len``) raises it too when ``num_replicas`` or ``rank`` came from the defaults and
        ``torch.distributed`` now says otherwise (the sampler was built before ``init_process_group``).
        :meth:`check_ranks` (a collective, called on every rank) raises it where the ranks' samplers differ.

    Warns
    -----
    LancellWarning
        ``block_size`` in random mode (it has no effect), an epoch of no batches (fewer cells than
        ``num_replicas * batch_size`` with ``drop_last``, or none), or several replicas reading a dataset
        built on the live atlas (each rank's may hold other cells: build it from one snapshot version).
    """

    def __init__(
        self,
        dataset: CellDataset,
        batch_size: int,
        *,
        mode: SamplerMode = "locality",
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        block_size: int | None = None,
    ) -> None:
        self.batch_size = integer("batch_size", batch_size, 1)
        if mode not in ("locality", "random"):
            raise QueryError(f"mode must be 'locality' or 'random', got {mode!r}")
        self.seed = integer("seed", seed, 0)
        distributed = dist.is_available() and dist.is_initialized()
        # which of the two came from torch.distributed's defaults: checked again at every epoch
        self._defaults = (num_replicas is None, rank is None)
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        self.num_replicas = integer("num_replicas", num_replicas, 1)
        self.rank = integer("rank", rank, 0)
        if self.rank >= self.num_replicas:
            raise QueryError(f"rank {rank} is not in [0, {num_replicas})")
        default_block = max(1, self.batch_size // 8)
        self.block_size = default_block if block_size is None else integer("block_size", block_size, 1)
        if block_size is not None and mode == "random":
            warnings.warn(
                f"block_size={block_size!r} is ignored: random mode draws single cells, not blocks",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )
        if self.num_replicas > 1 and dataset.source.snapshot_version is None:
            warnings.warn(
                f"rank {self.rank} of {self.num_replicas} reads a dataset built on the live atlas: ranks "
                "that build theirs at different moments (another process writing meanwhile) split different "
                "cell lists, so cells overlap or go unread and batch counts differ (a DDP step then hangs); "
                "build it from one snapshot: atlas.snapshot() once, then RaggedAtlas.checkout(version) of "
                "that version on every rank (checkout_latest on each rank may see a newer snapshot on some)",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )
        self.n_cells = len(dataset)
        self.mode = mode
        self.drop_last = flag("drop_last", drop_last)
        self.epoch = 0
        self._cells = (list(dataset.groups.names), dataset.cell_groups, dataset.cell_positions)
        self._cells_digest: str | None = None
        self._snapshot_version = dataset.source.snapshot_version
        self._progress = Progress()
        self._blocks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if mode == "locality":
            order = dataset.locality_order()
            self._blocks = (order, *locality_blocks(order, dataset.cell_groups, self.block_size))
        if self.cells_per_rank == 0:
            why = "the dataset has no cells"
            if self.n_cells:
                step = self.num_replicas * self.batch_size
                why = (
                    f"drop_last drops all {self.n_cells} cells, fewer than num_replicas * batch_size = {step}"
                )
            warnings.warn(
                f"every epoch of this sampler has no batches: {why}",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )

    def check_dataset(self, dataset: CellDataset) -> None:
        """Raise unless this sampler was built for a dataset of ``len(dataset)`` cells (loaders call it).

        Raises
        ------
        QueryError
            The sampler's dataset had another number of cells: its epochs would cover part of ``dataset``,
            or positions outside it.
        """
        if self.n_cells != len(dataset):
            raise QueryError(
                f"the sampler was built for a dataset of {self.n_cells} cells, not this one of {len(dataset)}"
                ": build CellSampler(dataset, ...) on the dataset the loader reads"
            )

    def _check_world(self) -> None:
        """Raise if ``num_replicas`` or ``rank`` came from the defaults and torch.distributed now differs."""
        if not any(self._defaults) or not (dist.is_available() and dist.is_initialized()):
            return
        world, rank = dist.get_world_size(), dist.get_rank()
        replicas_stale = self._defaults[0] and world != self.num_replicas
        if replicas_stale or (self._defaults[1] and rank != self.rank):
            raise QueryError(
                f"this CellSampler took num_replicas={self.num_replicas}, rank={self.rank} from the defaults "
                f"when it was built, but torch.distributed now has world size {world} and this process is "
                f"rank {rank}: build the sampler after init_process_group(), or pass num_replicas and rank"
            )

    def check_ranks(self, group: dist.ProcessGroup | None = None) -> None:
        """Raise unless every rank's sampler draws its share of the same epoch order: the same cells (their
        digest), seed, mode, sizes and ``drop_last``. A collective (one ``all_gather_object`` on ``group``,
        default the default group): call it on every rank at the same point, e.g. right after building the
        sampler (with NCCL, after ``torch.cuda.set_device``). Ranks that each called ``checkout_latest``
        while a snapshot landed hold other cells: their shares would overlap and leave cells unread.

        Raises
        ------
        QueryError
            A rank's sampler differs (the message names the first rank and setting), or no process group
            of ``num_replicas`` ranks is initialized.
        """
        if not (dist.is_available() and dist.is_initialized()):
            raise QueryError("check_ranks() compares the ranks' samplers: init_process_group() first")
        self._check_world()
        world = dist.get_world_size(group)
        if world != self.num_replicas:
            raise QueryError(
                f"the sampler splits epochs into {self.num_replicas} shares, the group has {world} ranks"
            )
        mine = (self._order_key(), self._snapshot_version, self.rank)
        every: list[Any] = [None] * world
        dist.all_gather_object(every, mine, group=group)
        shares = sorted(share for _, _, share in every)
        if shares != list(range(world)):  # (rank=LOCAL_RANK on several nodes: two samplers of rank 0)
            twice = sorted({share for share in shares if shares.count(share) > 1})
            raise QueryError(
                f"the samplers of the {world} ranks take the shares {shares}: share(s) {twice} twice and "
                f"{sorted(set(range(world)) - set(shares))} never, so cells would be read twice and others "
                "never. Pass each process its global rank (dist.get_rank(), not the local one), or none"
            )
        first_key, first_version, _ = every[0]
        for rank, (key, version, _) in enumerate(every):
            differing = [
                f.name for f in dataclasses.fields(key) if getattr(key, f.name) != getattr(first_key, f.name)
            ]
            if differing:
                name = differing[0]
                shown = (
                    "their digests differ"
                    if name == "cells"
                    else f"{getattr(first_key, name)!r} against {getattr(key, name)!r}"
                )
                raise QueryError(
                    f"rank {rank}'s sampler differs from rank 0's in {name} ({shown}; rank 0 reads snapshot "
                    f"{first_version}, rank {rank} snapshot {version}): their epochs would overlap and leave "
                    "cells unread. Check out one snapshot version on every rank "
                    "(RaggedAtlas.checkout(version)) and build the same query and sampler"
                )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields (call before each epoch).

        Raises
        ------
        QueryError
            ``epoch`` is not a non-negative integer, or the defaults the sampler took no longer hold (see the
            class).
        """
        epoch = integer("epoch", epoch, 0)
        if dropped := self._progress.set_epoch(self.epoch, epoch, len(self)):
            warnings.warn(dropped, LancellWarning, stacklevel=caller_outside_lancell())
        self.epoch = epoch
        self._check_world()

    def _order_key(self) -> EpochOrder:
        if self._cells_digest is None:
            self._cells_digest = cells_digest(*self._cells)
        block_size = self.block_size if self.mode == "locality" else 0
        return EpochOrder(
            self.seed,
            self.mode,
            self.batch_size,
            block_size,
            self.drop_last,
            self.num_replicas,
            self.n_cells,
            self._cells_digest,
        )

    def state_at(self, batches_taken: int) -> dict[str, Any]:
        """Where this sampler's epoch stands once the training loop has taken ``batches_taken`` batches of
        the current iteration: save it with the model's checkpoint, give it to :meth:`resume`.

        Count the batches the loop has *used* (``step + 1`` in ``for step, batch in enumerate(loader)``),
        not those a loader read ahead; after a resume, count from the resumed iteration's first batch (the
        sampler adds where it began). Before an iteration of the epoch has begun, ``0`` gives where it will
        begin (a loaded state's point). A plain dict of ints, strings, bools and None
        (``snapshot_version``). (Not named ``state_dict``: torchdata's ``StatefulDataLoader`` would take the
        sampler for one it checkpoints and call that without the count; it fast-forwards this one.)

        Raises
        ------
        QueryError
            ``batches_taken`` is not a whole number, or exceeds the batches an iteration begun since the
            epoch was set has yielded.
        """
        point = self._progress.point(self.epoch, integer("batches_taken", batches_taken, 0))
        return point.state(self._order_key(), self._snapshot_version)

    def resume(self, state: dict[str, Any]) -> None:
        """Go on from ``state`` (from :meth:`state_at`): ``epoch`` becomes the state's, and its iterations
        start after the batches the state has done (a batch peeked at first, or a loop retried, begins
        there again) until one has drawn every batch (a peek's too, when its loader read the rest of the
        epoch ahead: peek before resuming) or ``set_epoch`` names another epoch (with a warning if no
        iteration used the point). ``len(sampler)`` stays the batches of a whole epoch.

        Raises
        ------
        ArgumentError
            ``state`` is not a dict.
        QueryError
            The state is malformed, or it stops mid-epoch and this sampler's epoch order differs from its
            own (seed, mode, batch or block size, ``drop_last``, world size, or the dataset's cells: the
            message names which).
        """
        self._check_world()
        point = read_state(state, self._order_key(), len(self), self._snapshot_version)
        self.epoch = point.epoch
        self._progress.load(point)

    @property
    def cells_per_rank(self) -> int:
        """Positions each rank yields per epoch (padding included)."""
        return cells_per_rank(self.n_cells, self.num_replicas, self.batch_size, self.drop_last)

    def __len__(self) -> int:
        self._check_world()
        return -(-self.cells_per_rank // self.batch_size)

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """int64: every rank's positions of ``epoch`` (default: the current one), concatenated (rank ``r``
        has the ``r``-th share)."""
        self._check_world()
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        if self._blocks is None:
            order = rng.permutation(self.n_cells)
        else:
            cells, starts, lengths = self._blocks
            permutation = rng.permutation(starts.size)
            order = expand_blocks(cells, starts[permutation], lengths[permutation])
        total = self.cells_per_rank * self.num_replicas
        order = order[:total] if total <= order.size else np.resize(order, total)
        if self._blocks is not None and order.size:
            shuffle_within_batches(order, self.cells_per_rank, self.batch_size, rng)
        return order.astype(np.int64, copy=False)

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's batches of the current epoch, after a loaded state's point (the iteration begins here;
        its order is computed at the first ``next()``: torch's DataLoader makes an iterator and drops it)."""
        epoch = self.epoch
        skip, count = self._progress.begin(epoch)
        return self._counted(self.epoch_batches(skip, epoch), epoch, count)

    def _counted(self, batches: Iterator[list[int]], epoch: int, count: Any) -> Iterator[list[int]]:
        for batch in batches:
            self._progress.yielded(count)
            yield batch
        self._progress.end(epoch)

    def epoch_batches(self, skip: int = 0, epoch: int | None = None) -> Iterator[list[int]]:
        """This rank's batches of ``epoch`` (default: the current one) after the first ``skip``, whatever
        resume point is loaded (it is neither used nor counted)."""
        order = self.epoch_order(epoch)
        share = order[self.rank * self.cells_per_rank : (self.rank + 1) * self.cells_per_rank]
        for begin in range(skip * self.batch_size, share.size, self.batch_size):
            yield share[begin : begin + self.batch_size].tolist()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the dataset's cells as their digest, not their pointers."""
        self._order_key()  # computes the digest
        return {**self.__dict__, "_cells": None}


def batch_entropy(
    dataset: CellDataset, batches: Sequence[Sequence[int]] | CellSampler, column: str | None = None
) -> float:
    """Mean Shannon entropy (bits) of the dataset labels inside each batch.

    0 means every batch comes from one dataset; ``log2(k)`` means every batch is spread evenly over ``k``
    datasets. Compare with the entropy of the labels over the whole dataset (what uniform random batches
    approach).

    Parameters
    ----------
    dataset
        The dataset the positions refer to.
    batches
        Lists of positions (or a sampler: its current epoch's batches, whole; a loaded resume point stays).
    column
        A categorical metadata column to use as labels instead of the dataset (group) of each cell.
    """
    labels = dataset.cell_groups if column is None else dataset.metadata.values[column]
    entropies = []
    for batch in batches.epoch_batches() if isinstance(batches, CellSampler) else batches:
        _, counts = np.unique(labels[np.asarray(batch, dtype=np.int64)], return_counts=True)
        p = counts / counts.sum()
        entropies.append(float(-(p * np.log2(p)).sum()))
    return float(np.mean(entropies)) if entropies else 0.0
