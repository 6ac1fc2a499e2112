"""GEO series -> landing-zone files: each sample's 10x supplementary file becomes ``<GSM>.h5ad`` + sidecar.

The landing zone then treats GEO samples like any other landed dataset (one Dagster partition each), with
provenance (accession, source URL, title) in the sidecar and the sample characteristics as obs columns.
Supplementary files come through obstore from ``mirror`` (a local folder or bucket laid out like NCBI's
server), never by ad-hoc HTTP code.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lancell.errors import GeoError
from lancell.ingest.geo import broadcast_obs, fetch_supplementary, plan_datasets, read_soft
from lancell.ingest.tenx import read_10x

__all__ = ["land_geo_series"]

log = logging.getLogger(__name__)

TENX_FILES = r"(\.h5$|matrix\.mtx(\.gz)?$)"


def land_geo_series(
    soft_path: str | os.PathLike[str],
    landing: str | os.PathLike[str],
    *,
    mirror: str | None,
    zarr_layer: str = "counts",
    file_pattern: str = TENX_FILES,
    store_kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write one landing file per sample of the series that has a 10x supplementary file; return their uids.

    Samples without a matching supplementary file are skipped (logged). Existing landing files are kept.

    Raises
    ------
    GeoError
        The SOFT file cannot be parsed or a listed supplementary file is missing from the mirror.
    """
    series = read_soft(soft_path)
    landing = Path(landing)
    landing.mkdir(parents=True, exist_ok=True)
    landed = []
    for dataset in plan_datasets(series, file_pattern=file_pattern):
        uid = dataset.record.uid
        target = landing / f"{uid}.h5ad"
        if not dataset.files:
            log.info("%s: no 10x supplementary file, skipped", uid)
            continue
        if not target.exists():
            with tempfile.TemporaryDirectory() as scratch:
                local = fetch_supplementary(
                    dataset.files[0], scratch, mirror=mirror, store_kwargs=store_kwargs
                )
                adata = broadcast_obs(read_10x(local), dataset.obs)
                adata.obs_names_make_unique()
                partial = target.with_suffix(".h5ad.part")
                adata.write_h5ad(partial)
                partial.replace(target)
        sidecar = {
            "uid": uid,
            "zarr_layer": zarr_layer,
            "var_uid_column": "gene_ids",
            "symbol_column": "gene_symbol",
            "organism": dataset.sample.organism,
            "name": dataset.record.name,
            "source": dataset.record.source,
            "accession": dataset.record.accession,
        }
        target.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
        landed.append(uid)
    if not landed:
        raise GeoError(f"{soft_path}: no sample has a supplementary file matching {file_pattern!r}")
    return landed
