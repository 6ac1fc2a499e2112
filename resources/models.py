"""``ModelStore``: where trained models are saved, one file per model and snapshot partition.

A snapshot partition's label names its model files (``<model>/<label>.pt``), so :func:`check_label` keeps
labels to one plain file name: ``take_snapshot`` and ``atlas_snapshot`` refuse another before anything is
written, and :meth:`ModelStore.save` before it writes.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import dagster as dg
from pydantic import Field

LABEL_MAX_BYTES = 200  # a file name is at most 255 bytes: "<label>.pt" stays well below


def check_label(label: object) -> None:
    """Refuse a snapshot label that is not one plain file name.

    Raises
    ------
    lancell.errors.SnapshotLabelError
        The label is not a string, is empty, has surrounding spaces, is not text UTF-8 can store, is longer
        than ``LABEL_MAX_BYTES`` (UTF-8), holds ``/``, ``\\`` or a character that does not print, or starts
        with ``.``.
    """
    from lancell.errors import SnapshotLabelError, require_text
    from lancell.tables.names import named_characters

    if not isinstance(label, str) or not label or label != label.strip():
        raise SnapshotLabelError(
            f"snapshot label {label!r} must be a non-empty string without surrounding spaces"
        )
    require_text("snapshot label", label, SnapshotLabelError)
    if len(label.encode()) > LABEL_MAX_BYTES:
        raise SnapshotLabelError(
            f"snapshot label {label[:40]!r}... is {len(label.encode())} bytes long; at most "
            f"{LABEL_MAX_BYTES} (it names the snapshot's model files)"
        )
    bad = sorted({c for c in label if c in "/\\" or not c.isprintable()})
    if bad or label.startswith("."):
        raise SnapshotLabelError(
            f"snapshot label {label!r} is not a plain file name (it names the snapshot's model files, "
            "<model>/<label>.pt): no '/', '\\' or characters that do not print, and no leading '.'"
            + (f" (it holds {named_characters(bad)})" if bad else "")
        )


class ModelStore(dg.ConfigurableResource):
    """A local folder of ``<model>/<partition>.pt`` files."""

    path: str = Field(description="folder for trained model weights")

    def save(self, model: str, partition: str, state: dict[str, object]) -> Path:
        """Save ``state`` (a checkpoint: ``torch.load(path)`` gives it back) for ``model`` trained on snapshot
        partition ``partition``; return the file. The file is written beside and renamed over the earlier one
        when complete: a run stopped while it writes (killed, a full disk) leaves the earlier model whole, and
        two runs of one partition each replace the file whole.

        Raises
        ------
        lancell.errors.SnapshotLabelError
            ``partition`` is not a label :func:`check_label` accepts (nothing is written).
        """
        import torch  # at first use: loading the definitions must not pay for torch

        check_label(partition)
        target = Path(self.path) / model / f"{partition}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        # a hidden name of its own: no partition's file (labels never start with ".") and no other run's
        written = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with written.open("wb") as file:
                torch.save(state, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(written, target)
            folder = os.open(target.parent, os.O_RDONLY)
            try:  # the rename itself on disk
                os.fsync(folder)
            finally:
                os.close(folder)
        finally:
            with contextlib.suppress(OSError):  # (a read-only folder: EROFS even for no file)
                written.unlink(missing_ok=True)
        return target
