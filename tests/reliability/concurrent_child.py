"""One process of the concurrency test; its role is the first argument.

    python concurrent_child.py ingest   ROOT PREFIX FILE...   register PREFIX's genes, ingest each file
    python concurrent_child.py optimize ROOT STOP             optimize() until the file STOP exists
    python concurrent_child.py read     ROOT STOP VERSION     query snapshot VERSION until STOP exists
    python concurrent_child.py snapshot ROOT                  take one snapshot, print its version

Every role prints one JSON line on success; any exception fails the process (exit status 1).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord


def _open(root: str) -> RaggedAtlas:
    return RaggedAtlas.open(f"{root}/db", store=f"{root}/arrays")


def ingest(root: str, prefix: str, files: list[str]) -> dict[str, object]:
    atlas = _open(root)
    for i, path in enumerate(files):
        backed = ad.read_h5ad(path, backed="r")
        genes = backed.var_names.tolist()
        backed.file.close()
        atlas.register_features("gene_expression", pd.DataFrame({"uid": genes}))
        add_from_anndata(
            atlas,
            path,
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=f"{prefix}{i}"),
            progress=False,
        )
    return {"ingested": len(files)}


def optimize(root: str, stop: str) -> dict[str, object]:
    atlas, rounds = _open(root), 0
    while not Path(stop).exists() or rounds == 0:
        atlas.optimize()
        rounds += 1
    return {"optimized": rounds}


def answer(atlas: RaggedAtlas) -> list[object]:
    """What a reader sees: cell count, per-type counts, and a digest of the reconstructed matrix."""
    adata = atlas.query().where("cell_type = 'T cell'").to_anndata()
    x = adata.X.tocsr()
    digest = hashlib.sha1()
    names = [adata.obs_names.to_numpy().astype(str), adata.var_names.to_numpy().astype(str)]
    for part in (*names, x.indptr, x.indices, x.data):
        digest.update(np.ascontiguousarray(part).tobytes())
    per_type = {str(k): int(v) for k, v in atlas.query().count(group_by="cell_type").items()}
    return [atlas.query().count(), sorted(per_type.items()), digest.hexdigest()]


def read(root: str, stop: str, version: int) -> dict[str, object]:
    answers, rounds = set(), 0
    while not Path(stop).exists() or rounds == 0:
        atlas = RaggedAtlas.checkout(f"{root}/db", version, store=f"{root}/arrays")
        answers.add(json.dumps(answer(atlas)))
        rounds += 1
    return {"rounds": rounds, "answers": sorted(answers)}


def snapshot(root: str) -> dict[str, object]:
    return {"version": _open(root).snapshot(), "at": time.time()}


def main() -> None:
    role, root, *rest = sys.argv[1:]
    if role == "ingest":
        result = ingest(root, rest[0], rest[1:])
    elif role == "optimize":
        result = optimize(root, rest[0])
    elif role == "read":
        result = read(root, rest[0], int(rest[1]))
    elif role == "snapshot":
        result = snapshot(root)
    else:
        raise SystemExit(f"unknown role {role!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
