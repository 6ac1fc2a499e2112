"""Training data loading: a map-style dataset with batched reads, a sampler, collates, a loader.

See docs/architecture.md, "Training data loading".

The dataset's cells and output columns are those of ``to_anndata()`` for the same query: its
``features()``, ``feature_join()`` and ``on_unmeasured()`` apply. Typical use::

    query = atlas.query().where("organism = 'Homo sapiens'").on_unmeasured("drop")  # no counts: left out
    dataset = query.to_cell_dataset("gene_expression", "counts", metadata_columns=["cell_type"])
    sampler = CellSampler(dataset, 256, mode="locality", seed=0)
    loader = make_loader(dataset, sampler, num_workers=2, collate_fn=DenseCollate(normalize=True))
    for epoch in range(10):
        sampler.set_epoch(epoch)
        for batch in loader:
            ...  # batch["X"], batch["cell_type"], batch["index"]

Several layers: ``to_cell_dataset("gene_expression", ["counts", "log_normalized"])`` gives batches with the
first layer as ``X`` and ``batch["layers"]["log_normalized"]``, as ``to_anndata()`` fills ``X``, ``.layers``.
"""

from lancell.dataloader.batch import CellBatch, SparseRows
from lancell.dataloader.collate import DenseCollate, SparseCollate, collate_dense, collate_sparse
from lancell.dataloader.dataset import CellDataset
from lancell.dataloader.handoff import WorkerLoader
from lancell.dataloader.loader import make_loader
from lancell.dataloader.sampler import CellSampler, batch_entropy
from lancell.dataloader.source import DatasetSource
from lancell.dataloader.threaded import ThreadedLoader
from lancell.dataloader.transport import SharedMemoryCollate

__all__ = [
    "CellBatch",
    "CellDataset",
    "CellSampler",
    "DatasetSource",
    "DenseCollate",
    "SharedMemoryCollate",
    "SparseCollate",
    "SparseRows",
    "ThreadedLoader",
    "WorkerLoader",
    "batch_entropy",
    "collate_dense",
    "collate_sparse",
    "make_loader",
]
