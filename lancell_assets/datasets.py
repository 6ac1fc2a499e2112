"""``dataset_group``: one partition per dataset; validate, register its features, ingest its zarr group."""

import os
import socket
import time
from pathlib import Path

import dagster as dg
import h5py

from lancell.errors import LancellError
from lancell.landing import ingest_landing_file
from lancell_assets.metadata import group_metadata
from lancell_assets.partitions import dataset_partitions
from resources import AtlasResource, LandingZone

CHECKS = ("ingested_cleanly", "cell_count_matches", "nnz_matches", "dataset_consistent")


@dg.asset(
    partitions_def=dataset_partitions,
    pool="lancedb_writer",
    group_name="atlas",
    kinds={"lancedb", "zarr"},
    check_specs=[dg.AssetCheckSpec(name, asset="dataset_group", blocking=True) for name in CHECKS],
)
def dataset_group(
    context: dg.AssetExecutionContext, atlas: AtlasResource, landing_zone: LandingZone
) -> dg.MaterializeResult:
    """A dataset's zarr group, its feature layout, its cell rows and its dataset record.

    A file whose content is already in the atlas as another dataset is not ingested again: the metadata
    says ``outcome: duplicate`` and ``duplicate_of`` names that dataset. ``dropped_obs_columns`` lists the
    obs columns the cell schema does not declare (not stored).
    """
    spec = landing_zone.spec(context.partition_key)
    handle = atlas.open()
    started = time.perf_counter()
    try:
        record, outcome = ingest_landing_file(handle, spec)
    except LancellError as exc:
        context.log.error(f"{spec.path.name}: {exc}")
        failed = dg.AssetCheckResult(
            check_name="ingested_cleanly", passed=False, metadata={"error": str(exc), "file": str(spec.path)}
        )
        skipped = [
            dg.AssetCheckResult(check_name=name, passed=False, metadata={"reason": "ingestion failed"})
            for name in CHECKS[1:]
        ]
        return dg.MaterializeResult(metadata={"error": str(exc)}, check_results=[failed, *skipped])
    seconds = time.perf_counter() - started
    fresh = outcome == "ingested"
    if outcome == "duplicate":
        context.log.warning(f"{spec.path.name}: same content as dataset {record.uid!r}; not ingested again")
    else:
        context.log.info(f"{record.uid}: {record.n_cells} cells, {record.nnz} nnz ({outcome})")
    if record.dropped_obs_columns:
        context.log.warning(
            f"{record.uid}: obs columns not in the cell schema, not stored: {record.dropped_obs_columns}"
        )
    attrs = handle._group_attrs(record.zarr_group) or {}
    problems = [p for p in handle.validate() if record.uid in p]
    source_cells = _source_cells(spec.path)
    return dg.MaterializeResult(
        # which host/process ingested it (with a Dask or Kubernetes executor: which worker or pod)
        metadata=group_metadata(handle, record, seconds if fresh else None)
        | {
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "outcome": outcome,
            "dropped_obs_columns": dg.MetadataValue.json(list(record.dropped_obs_columns)),
        }
        | ({"duplicate_of": record.uid} if outcome == "duplicate" else {}),
        check_results=[
            dg.AssetCheckResult(check_name="ingested_cleanly", passed=True),
            dg.AssetCheckResult(
                check_name="cell_count_matches",
                passed=record.n_cells == source_cells == attrs.get("n_cells"),
                metadata={"record": record.n_cells, "file": source_cells, "zarr": attrs.get("n_cells")},
            ),
            dg.AssetCheckResult(
                check_name="nnz_matches",
                passed=record.nnz == attrs.get("nnz"),
                metadata={"record": record.nnz, "zarr": attrs.get("nnz")},
            ),
            dg.AssetCheckResult(
                check_name="dataset_consistent",
                passed=not problems,
                metadata={"problems": "; ".join(problems)},
            ),
        ],
    )


def _source_cells(path: Path) -> int:
    """Number of cells in an ``.h5ad`` (read from its obs index, nothing else)."""
    with h5py.File(path, "r") as f:
        obs = f["obs"]
        index = obs.attrs["_index"]
        return int(obs[index].shape[0])
