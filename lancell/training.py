"""A small, reproducible training run on an atlas snapshot: a cell-type classifier fed by the lancell loader.

Everything that decides the result is fixed by the snapshot and the seed: the cells (a checked-out snapshot
never changes), the held-out split (a hash of each cell's uid), the batch order (a seeded sampler) and the
weights (``torch.manual_seed``; the number of threads torch uses may change their last bits, never the
batches). Re-running on the same snapshot therefore reproduces the same batches and the same metric, however
much data was ingested since.

Only cells measured in the training layer are used (the query's ``on_unmeasured("drop")``): a dataset that
does not store the layer contributes no all-zero rows, and the report says how many cells each dataset gave.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from lancell.dataloader import CellSampler, DenseCollate, make_loader
from lancell.dataloader.checks import integer, real
from lancell.errors import QueryError, UnmeasuredDataError

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["TrainingReport", "train_cell_type_classifier", "training_inputs"]

PREFERRED_LAYERS = ("log_normalized", "counts")  # what training_inputs picks first, where any dataset has it


@dataclass
class TrainingReport:
    """What a training run used and reached."""

    snapshot_version: int | None
    seed: int
    datasets: list[str]
    cells_per_dataset: dict[str, int]
    unmeasured_per_dataset: dict[str, int]
    n_train: int
    n_test: int
    n_features: int
    classes: list[str]
    epochs: int
    test_accuracy: float
    train_loss: float
    batches_sha256: str
    seconds: float
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    feature_uids: list[str] = field(default_factory=list, repr=False)
    inputs: dict[str, object] = field(default_factory=dict)

    def checkpoint(self) -> dict[str, object]:
        """What a saved model needs to be used on its own: the weights of ``torch.nn.Linear(n_features,
        len(classes))`` (``state_dict``), the input columns in order (``feature_uids``), the output
        ``classes`` in order, how inputs were read (``inputs``: feature space, layer, label column,
        normalize) and the snapshot trained on."""
        return {
            "state_dict": self.state_dict,
            "feature_uids": list(self.feature_uids),
            "classes": list(self.classes),
            "inputs": dict(self.inputs),
            "snapshot_version": self.snapshot_version,
        }


def _uid_digests(uids: list[str]) -> np.ndarray:
    """Each uid's SHA-256, its first 8 bytes as a big-endian ``uint64``."""
    return np.array([int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "big") for u in uids], np.uint64)


def _held_out(digests: np.ndarray, fraction: float) -> np.ndarray:
    """A split that depends only on each cell's uid (its :func:`_uid_digests`' first 4 bytes: stable across
    snapshots and machines)."""
    return (digests >> np.uint64(32)).astype(np.float64) / 0xFFFFFFFF < fraction


def _names_bytes(names: list[str]) -> bytes:
    """``names`` as bytes that tell them apart from any other list (each length-prefixed)."""
    encoded = [name.encode() for name in names]
    return len(names).to_bytes(8, "little") + b"".join(len(e).to_bytes(8, "little") + e for e in encoded)


def training_inputs(
    atlas: RaggedAtlas,
    feature_space: str = "gene_expression",
    layer: str | None = None,
    normalize: bool | None = None,
) -> tuple[str, bool]:
    """``(layer, normalize)`` to train on where the caller left them None (an automated run: the atlas's
    datasets decide).

    ``layer``: the first of :data:`PREFERRED_LAYERS` that a dataset of ``feature_space`` lists, else the
    layer most of its cells are stored in. ``normalize``: whether that layer holds integers (counts: scaled
    to 10,000 per cell and ``log1p``-ed by :class:`~lancell.dataloader.DenseCollate`), read from the first
    dataset storing it.

    Raises
    ------
    UnmeasuredDataError
        No dataset of ``feature_space`` (with ``layer`` given: none storing it).
    """
    frame = atlas.list_datasets()
    frame = frame[frame["feature_space"] == feature_space]
    cells: dict[str, int] = {}
    for layers, n in zip(frame["layers"], frame["n_cells"], strict=True):
        for name in layers:
            cells[name] = cells.get(name, 0) + int(n)
    if layer is None:
        listed = [name for name in PREFERRED_LAYERS if name in cells]
        layer = listed[0] if listed else max(cells, key=cells.get, default=None)
    storing = [
        (group, list(layers))
        for group, layers in zip(frame["zarr_group"], frame["layers"], strict=True)
        if layer in layers
    ]
    if layer is None or not storing:
        what = "any layer" if layer is None else f"layer {layer!r}"
        raise UnmeasuredDataError(
            f"no dataset of {feature_space!r} stores {what} to train on (layers stored: {sorted(cells)})"
        )
    if normalize is None:
        group, listed = storing[0]  # (opened again where its record lists other layers than when opened)
        dtype = (atlas.core.group_attrs(group, listed=listed) or {}).get("layers", {}).get(layer)
        normalize = dtype is not None and np.dtype(dtype).kind in "iu"
    return layer, normalize


def train_cell_type_classifier(
    atlas: RaggedAtlas,
    *,
    label_column: str = "cell_type",
    feature_space: str = "gene_expression",
    layer: str = "log_normalized",
    seed: int = 0,
    epochs: int = 8,
    batch_size: int = 64,
    test_fraction: float = 0.2,
    normalize: bool = False,
    num_workers: int = 0,
) -> TrainingReport:
    """Train a softmax classifier of ``label_column`` on the labelled cells measured in ``layer``.

    Cells without a label, and cells whose dataset does not store ``layer``, are left out. Returns held-out
    accuracy (NaN when no cell was held out: a small ``test_fraction`` of few cells), the final training
    loss, the cells used and left out per dataset and a SHA-256 of the exact sequence of training batches
    (``batches_sha256``: each batch's cells, by uid, their labels and inputs, after the classes and the
    input features in order; equal for two runs that trained on the same data in the same order).

    Raises
    ------
    QueryError
        ``epochs`` or ``batch_size`` not a positive integer, ``seed`` not a non-negative one,
        ``test_fraction`` not in (0, 1), or a ``label_column`` that holds numbers rather than labels.
    UnmeasuredDataError
        No labelled cell is measured in ``layer``: there is nothing to train on.
    """
    started = time.perf_counter()
    epochs = integer("epochs", epochs, 1)
    batch_size = integer("batch_size", batch_size, 1)
    seed = integer("seed", seed, 0)
    if not 0 < real("test_fraction", test_fraction) < 1:
        raise QueryError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    columns = atlas.cell_arrow_schema.names
    if label_column not in columns:
        raise QueryError(f"label_column {label_column!r} is not a cell column (cell columns: {columns})")
    torch.manual_seed(seed)
    query = atlas.query().where(f"{label_column} IS NOT NULL").on_unmeasured("drop")
    dataset = query.to_cell_dataset(feature_space, layer, metadata_columns=[label_column, "uid"])
    if len(dataset) == 0 and not dataset.unmeasured:
        raise UnmeasuredDataError(
            f"no cell measured in layer {layer!r} of {feature_space!r} has a {label_column!r} label; nothing "
            "to train on"
        )
    if len(dataset) == 0:
        lacking = dataset.unmeasured
        shown = ", ".join(f"{uid!r}: {n}" for uid, n in list(lacking.items())[:5])
        more = (
            f", ... ({len(lacking)} datasets, {sum(lacking.values())} cells in all)"
            if len(lacking) > 5
            else ""
        )
        raise UnmeasuredDataError(
            f"no cell with a {label_column!r} label is measured in layer {layer!r} of {feature_space!r} "
            f"(labelled cells per dataset without it: {{{shown}{more}}}); nothing to train on: pass a layer "
            "the datasets store (lancell.training.training_inputs picks one)"
        )
    if label_column not in dataset.categories:
        kind = dataset.metadata.values[label_column].dtype
        raise QueryError(f"label column {label_column!r} holds {kind} numbers, not labels to classify")
    uids = np.asarray(dataset.categories["uid"], dtype=object)[dataset.metadata.values["uid"]]
    digests = _uid_digests(uids.tolist())
    test = _held_out(digests, test_fraction)
    per_group = np.bincount(dataset.cell_groups, minlength=len(dataset.groups.names))
    used = {uid: int(n) for uid, n in zip(dataset.groups.dataset_uids, per_group, strict=True) if n}
    classes = dataset.categories[label_column]
    model = torch.nn.Linear(dataset.n_features, len(classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    sampler = CellSampler(dataset, batch_size, mode="random", seed=seed)
    loader = make_loader(
        dataset, sampler, num_workers=num_workers, collate_fn=DenseCollate(normalize=normalize)
    )
    feature_uids = [str(uid) for uid in dataset.feature_uids]
    batches = hashlib.sha256(_names_bytes(list(classes)) + _names_bytes(feature_uids))  # (what codes mean)
    loss_value = float("nan")
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            index = batch["index"].numpy()
            train = ~test[index]
            for part in (digests[index], batch[label_column].numpy().astype(np.int64), batch["X"].numpy()):
                batches.update(np.ascontiguousarray(part).tobytes())
            if not train.any():
                continue
            logits = model(batch["X"][train])
            loss = torch.nn.functional.cross_entropy(logits, batch[label_column][train].long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
    correct = total = 0
    with torch.no_grad():
        evaluation = CellSampler(dataset, 256, mode="random", seed=seed)
        for batch in make_loader(
            dataset, evaluation, num_workers=0, collate_fn=DenseCollate(normalize=normalize)
        ):
            held = test[batch["index"].numpy()]
            if held.any():
                predicted = model(batch["X"][held]).argmax(dim=1)
                correct += int((predicted == batch[label_column][held].long()).sum())
                total += int(held.sum())
    return TrainingReport(
        snapshot_version=atlas.snapshot_version,
        seed=seed,
        datasets=sorted(used),
        cells_per_dataset=dict(sorted(used.items())),
        unmeasured_per_dataset=dict(dataset.unmeasured),
        n_train=int((~test).sum()),
        n_test=int(test.sum()),
        n_features=dataset.n_features,
        classes=list(classes),
        epochs=epochs,
        test_accuracy=correct / total if total else float("nan"),
        train_loss=loss_value,
        batches_sha256=batches.hexdigest(),
        seconds=time.perf_counter() - started,
        state_dict=model.state_dict(),
        feature_uids=feature_uids,
        inputs={
            "feature_space": feature_space,
            "layer": layer,
            "label_column": label_column,
            "normalize": normalize,
        },
    )
