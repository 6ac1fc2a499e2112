"""What ``make demo`` prints after materializing: the snapshot, a query result and a loader summary."""

from __future__ import annotations

from pathlib import Path

from lancell.atlas import RaggedAtlas
from lancell.reconstruct import presence_matrix


def print_summary(root: Path, snapshot_label: str) -> None:
    """Print the snapshot's versions, a union query over ragged panels and a per-cell-type query."""
    db_uri = str(root / "db")
    version = RaggedAtlas.find_snapshot(db_uri, snapshot_label)
    print(
        RaggedAtlas.list_versions(db_uri)[["version", "total_cells", "n_datasets", "note"]].to_string(
            index=False
        )
    )
    atlas = RaggedAtlas.checkout(db_uri, version)
    print(atlas.list_datasets()[["uid", "layer", "n_cells", "n_features", "nnz"]].to_string(index=False))
    query = "cell_type = 'CD14+ Monocyte'"
    adata = atlas.query().where(query).to_anndata()
    print(f"\nsnapshot {version}: query {query!r} ->\n{adata}")
    print(adata.to_df().iloc[:3, :6])
    query = "organism = 'Homo sapiens' OR organism = 'Mus musculus'"
    adata = atlas.query().where(query).layers("gene_expression", "counts").to_anndata()
    measured = presence_matrix(adata)
    print(f"\nlayer 'counts', union over ragged panels ->\n{adata}")
    print(
        f"X nnz {adata.X.nnz:,}; measured (cell, gene) pairs {measured.nnz:,} "
        f"of {adata.n_obs * adata.n_vars:,}"
    )
