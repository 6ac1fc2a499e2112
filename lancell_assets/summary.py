"""What ``make demo`` prints after materializing: the snapshot, a query result and a loader summary."""

from __future__ import annotations

import time
from pathlib import Path

from lancell.atlas import RaggedAtlas
from lancell.dataloader import CellSampler, SparseCollate, make_loader
from lancell.dataloader.sampler import batch_entropy
from lancell.query.reconstruct import presence_matrix


def print_loader_summary(atlas: RaggedAtlas) -> None:
    """One truly random epoch over every counts cell of the snapshot, in this process."""
    dataset = (
        atlas.query()
        .where("dataset_uid IN ('celltypist_sample', 'mouse_10k')")
        .to_cell_dataset("gene_expression", "counts", features="union")
    )
    sampler = CellSampler(dataset, 256, mode="random", seed=0)
    started = time.perf_counter()
    cells = nnz = 0
    # (a union of a human and a mouse panel: the presence mask tells unmeasured genes from measured zeros)
    for batch in make_loader(dataset, sampler, num_workers=0, collate_fn=SparseCollate(presence=True)):
        cells += batch["X"].shape[0]
        nnz += batch["X"].values().numel()
    seconds = time.perf_counter() - started
    per_cell = dataset.nbytes()["pointers"] / len(dataset)
    print(
        f"\nloader: {len(dataset):,} cells x {dataset.n_features:,} features (union), batch 256, random, "
        f"0 workers: {cells / seconds:,.0f} cells/s ({nnz:,} nonzeros in {seconds:.2f} s), "
        f"{per_cell:.0f} B/cell of pointer state, batch entropy over datasets "
        f"{batch_entropy(dataset, sampler):.2f} bits (random) vs "
        f"{batch_entropy(dataset, CellSampler(dataset, 256, mode='locality', seed=0)):.2f} (locality)"
    )


def print_summary(root: Path, snapshot_label: str, classifier: dict[str, object] | None = None) -> None:
    """Print the snapshot's versions, a union query over ragged panels and a per-cell-type query."""
    db_uri = str(root / "db")
    version = RaggedAtlas.find_snapshot(db_uri, snapshot_label)
    print(
        RaggedAtlas.list_versions(db_uri)[["version", "total_cells", "n_datasets", "note"]].to_string(
            index=False
        )
    )
    atlas = RaggedAtlas.checkout(db_uri, version)
    datasets = atlas.list_datasets()
    datasets["layers"] = datasets["layers"].map(", ".join)
    print(datasets[["uid", "layers", "n_cells", "n_features", "nnz"]].to_string(index=False))
    both = [uid for uid, layers in zip(datasets["uid"], datasets["layers"], strict=True) if "," in layers]
    print(f"datasets storing several layers: {', '.join(both) or 'none (each bundled file has one matrix)'}")
    query = "cell_type = 'CD14+ Monocyte'"
    adata = atlas.query().where(query).to_anndata()
    print(f"\nsnapshot {version}: query {query!r} ->\n{adata}")
    print(adata.to_df().iloc[:3, :6])
    query = "organism = 'Homo sapiens' OR organism = 'Mus musculus'"
    # pbmc68k stores no counts: its cells are left out (the default would refuse to return them unmeasured)
    adata = atlas.query().where(query).layers("gene_expression", "counts").on_unmeasured("drop").to_anndata()
    measured = presence_matrix(adata)
    dropped = ", ".join(adata.uns["lancell"]["unmeasured_datasets"]) or "none"
    print(f"\nlayer 'counts', union over ragged panels (datasets without it dropped: {dropped}) ->\n{adata}")
    print(
        f"X nnz {adata.X.nnz:,}; measured (cell, gene) pairs {measured.nnz:,} "
        f"of {adata.n_obs * adata.n_vars:,}"
    )
    print_loader_summary(atlas)
    if classifier:
        print(
            f"cell_type_classifier@{snapshot_label}: trained on snapshot {classifier['snapshot_version']} "
            f"layer {classifier.get('layer', 'log_normalized')!r} "
            f"({', '.join(classifier['datasets'])}), loader seed {classifier['loader_seed']}, "
            f"held-out accuracy {classifier['test_accuracy']:.3f} on {classifier['n_test']} cells, "
            f"batches sha256 {str(classifier['batches_sha256'])[:12]}..."
        )
