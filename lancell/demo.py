"""``make demo``: build an atlas from the bundled real data, snapshot it, and print a query result.

Run as ``python -m lancell.demo [ROOT]`` (default ``demo_atlas/``, rebuilt from scratch).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, build_bundled_atlas
from lancell.reconstruct import presence_matrix


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", nargs="?", default="demo_atlas", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(args.root, ignore_errors=True)
    started = time.perf_counter()
    build_bundled_atlas(args.root, BUNDLED)
    print(f"built atlas at {args.root} in {time.perf_counter() - started:.1f} s")
    print(RaggedAtlas.list_versions(str(args.root / "db"))[["version", "total_cells", "n_datasets", "note"]])
    atlas = RaggedAtlas.checkout_latest(str(args.root / "db"))
    print(atlas.list_datasets()[["uid", "n_cells", "n_features", "nnz", "layer"]].to_string(index=False))
    print(
        "cells per organism:",
        atlas.query().where("organism = 'Homo sapiens'").count(),
        "human,",
        atlas.query().where("organism = 'Mus musculus'").count(),
        "mouse",
    )
    query = "cell_type = 'CD14+ Monocyte'"
    adata = atlas.query().where(query).to_anndata()
    print(f"\nquery {query!r} ->\n{adata}")
    print(adata.to_df().iloc[:3, :6])
    query = "organism = 'Homo sapiens'"
    adata = atlas.query().where(query).layers("gene_expression", "counts").to_anndata()
    measured = presence_matrix(adata)
    print(f"\nquery {query!r}, layer 'counts', union over ragged panels ->\n{adata}")
    print(f"X nnz {adata.X.nnz}; measured (cell, gene) pairs {measured.nnz} of {adata.n_obs * adata.n_vars}")
    print(adata.obs.groupby("dataset_uid", observed=True).size().to_string())


if __name__ == "__main__":
    main()
