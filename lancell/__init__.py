"""lancell: a cell-centric ML training backend (LanceDB cell metadata, sharded Zarr v3 arrays).

The public names are importable from the package itself (``import lancell as lc; lc.RaggedAtlas``); each is
imported at first use, so ``import lancell`` stays cheap and a script pays only for what it touches.
"""

from __future__ import annotations

import atexit
import importlib
from typing import TYPE_CHECKING, Any

from lancell.native_exit import wait_for_native_callbacks
from lancell.version import __version__

atexit.register(wait_for_native_callbacks)  # before any library it imports registers its own

if TYPE_CHECKING:
    from lancell import errors
    from lancell.atlas import RaggedAtlas
    from lancell.dataloader import CellDataset, CellSampler, DenseCollate, SparseCollate, make_loader
    from lancell.ingest.from_anndata import add_from_anndata
    from lancell.ingest.modalities import add_from_mudata, attach_modality
    from lancell.ingest.tenx import add_from_10x
    from lancell.standardize.pipeline import standardize_and_ingest, standardize_anndata
    from lancell.tables.schema import (
        DatasetRecord,
        DenseZarrPointer,
        FeatureBaseSchema,
        LancellBaseSchema,
        SparseZarrPointer,
    )

_PUBLIC = {
    "RaggedAtlas": "lancell.atlas",
    "add_from_anndata": "lancell.ingest.from_anndata",
    "add_from_10x": "lancell.ingest.tenx",
    "add_from_mudata": "lancell.ingest.modalities",
    "attach_modality": "lancell.ingest.modalities",
    "standardize_anndata": "lancell.standardize.pipeline",
    "standardize_and_ingest": "lancell.standardize.pipeline",
    "LancellBaseSchema": "lancell.tables.schema",
    "FeatureBaseSchema": "lancell.tables.schema",
    "DatasetRecord": "lancell.tables.schema",
    "SparseZarrPointer": "lancell.tables.schema",
    "DenseZarrPointer": "lancell.tables.schema",
    "CellDataset": "lancell.dataloader",
    "CellSampler": "lancell.dataloader",
    "DenseCollate": "lancell.dataloader",
    "SparseCollate": "lancell.dataloader",
    "make_loader": "lancell.dataloader",
}

__all__ = [
    "CellDataset",
    "CellSampler",
    "DatasetRecord",
    "DenseCollate",
    "DenseZarrPointer",
    "FeatureBaseSchema",
    "LancellBaseSchema",
    "RaggedAtlas",
    "SparseCollate",
    "SparseZarrPointer",
    "__version__",
    "add_from_10x",
    "add_from_anndata",
    "add_from_mudata",
    "attach_modality",
    "errors",
    "make_loader",
    "standardize_and_ingest",
    "standardize_anndata",
]


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("lancell.errors")
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'lancell' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
