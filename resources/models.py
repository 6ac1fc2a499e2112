"""``ModelStore``: where trained models are saved, one file per model and snapshot partition."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    import torch


class ModelStore(dg.ConfigurableResource):
    """A local folder of ``<model>/<partition>.pt`` files."""

    path: str = Field(description="folder for trained model weights")

    def save(self, model: str, partition: str, state: dict[str, torch.Tensor]) -> Path:
        """Save ``state`` for ``model`` trained on snapshot partition ``partition``; return the file."""
        import torch  # at first use: loading the definitions must not pay for torch

        target = Path(self.path) / model / f"{partition}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)
        return target
