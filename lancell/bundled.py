"""The real datasets bundled in ``data/`` (see ``data/PROVENANCE.md``) and an example schema for them.

Used by ``make demo``, the tests and the benchmarks, so that every one of them stores the same data (the
same cells, values and features; the global indices follow the order in which each build registers the
genes): two human panels that overlap (PBMC 68k, log-normalized floats; celltypist sample, integer UMI
counts) and a mouse panel (10x 10k subset, integer-valued floats given as a dense matrix, genes keyed by
Ensembl id because its symbols repeat).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import pandas as pd

from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata, open_h5ad
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

__all__ = [
    "BUNDLED",
    "BundledDataset",
    "CellSchema",
    "GeneFeature",
    "build_bundled_atlas",
    "gene_features",
    "land_bundled_data",
]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class GeneFeature(FeatureBaseSchema):
    """A gene: the registry uid is the symbol for human genes and the Ensembl id for mouse genes."""

    gene_symbol: str
    organism: str | None = None


class CellSchema(LancellBaseSchema):
    """Cells of the bundled atlas."""

    cell_type: str | None = None
    louvain: str | None = None
    n_counts: float | None = None
    organism: str | None = None
    gene_expression: SparseZarrPointer | None = None


@dataclass(frozen=True)
class BundledDataset:
    """One bundled file and how it is ingested."""

    uid: str
    filename: str
    zarr_layer: str
    organism: str
    var_uid_column: str | None
    description: str

    @property
    def path(self) -> Path:
        return DATA_DIR / self.filename

    def read(self, *, backed: bool = False) -> ad.AnnData:
        """Read the file (``backed="r"`` when ``backed``); obs gets an ``organism`` column."""
        adata = ad.read_h5ad(self.path, backed="r" if backed else None)
        adata.obs["organism"] = self.organism
        return adata


BUNDLED: tuple[BundledDataset, ...] = (
    BundledDataset(
        "pbmc68k",
        "pbmc68k_reduced.h5ad",
        "log_normalized",
        "Homo sapiens",
        None,
        "PBMC 68k reduced (scanpy), 700 cells x 765 genes, log1p-normalized float32",
    ),
    BundledDataset(
        "celltypist_sample",
        "celltypist_sample.h5ad",
        "counts",
        "Homo sapiens",
        None,
        "celltypist sample, 559 cells x 32,786 genes, integer UMI counts",
    ),
    BundledDataset(
        "mouse_10k",
        "mouse_10k_subset.h5ad",
        "counts",
        "Mus musculus",
        "gene_ids",
        "10x mouse 10k subset (scanpy tests), 10,000 cells x 1,000 genes, dense integer-valued float32",
    ),
)


def gene_features(datasets: tuple[BundledDataset, ...] = BUNDLED) -> pd.DataFrame:
    """Registry rows (``uid``, ``gene_symbol``, ``organism``) for every gene of ``datasets``."""
    frames = []
    for dataset in datasets:
        var = open_h5ad(dataset.path).var
        uids = var.index if dataset.var_uid_column is None else var[dataset.var_uid_column]
        frames.append(
            pd.DataFrame(
                {
                    "uid": uids.astype(str),
                    "gene_symbol": var["gene_symbol"].astype(str),
                    "organism": dataset.organism,
                }
            )
        )
    return pd.concat(frames).drop_duplicates("uid").reset_index(drop=True)


def ingest_bundled(atlas: RaggedAtlas, dataset: BundledDataset, *, backed: bool = False) -> DatasetRecord:
    """Ingest one bundled dataset into the ``gene_expression`` feature space."""
    record = DatasetRecord(uid=dataset.uid, name=dataset.description, source=f"data/{dataset.filename}")
    return add_from_anndata(
        atlas,
        dataset.read(backed=backed),
        feature_space="gene_expression",
        zarr_layer=dataset.zarr_layer,
        dataset_record=record,
        var_uid_column=dataset.var_uid_column,
    )


def land_bundled_data(landing: Path) -> None:
    """Copy the bundled datasets into a landing folder, each ``<uid>.h5ad`` with its JSON sidecar."""
    landing.mkdir(parents=True, exist_ok=True)
    for dataset in BUNDLED:
        shutil.copyfile(dataset.path, landing / f"{dataset.uid}.h5ad")
        spec = {
            "zarr_layer": dataset.zarr_layer,
            "var_uid_column": dataset.var_uid_column,
            "organism": dataset.organism,
            "name": dataset.description,
            "source": f"data/{dataset.filename}",
        }
        (landing / f"{dataset.uid}.json").write_text(json.dumps(spec, indent=2))


def build_bundled_atlas(
    root: str | os.PathLike[str], datasets: tuple[BundledDataset, ...] = BUNDLED
) -> RaggedAtlas:
    """Create an atlas under ``root`` (``db/`` and ``arrays/``), ingest ``datasets``, optimize, snapshot."""
    root = Path(root)
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        CellSchema,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    atlas.register_features("gene_expression", gene_features(datasets))
    for dataset in datasets:
        ingest_bundled(atlas, dataset)
    atlas.optimize()
    atlas.snapshot(note="bundled datasets")
    return atlas
