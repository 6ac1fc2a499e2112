"""``dataset_group``: one partition per dataset; validate, register its features, ingest its zarr group.

A file that cannot be ingested fails its run (the partition is not materialized): its partition-scoped
checks record the failure and the run's failure metadata carries the error and every check's finding. The
atlas is left as it was (ingestion is atomic; see docs/architecture.md, "Ingestion").
"""

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from lancell_assets.geo import geo_series
from lancell_assets.metadata import OWNERS
from lancell_assets.partitions import dataset_partitions
from resources import AtlasResource, LandingZone

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.ingest.landing import LandingSpec
    from lancell.standardize.pipeline import StandardizationReport
    from lancell.tables.schema import DatasetRecord

CHECKS = {
    "ingested_cleanly": "The landing file was read and ingested without error (the error otherwise).",
    "cell_count_matches": "Cells in the dataset record = rows of the file's obs = n_cells of the zarr group.",
    "nnz_matches": "Stored values in the dataset record = nnz of the zarr group.",
    "dataset_consistent": "atlas.validate(dataset_uid) finds no problem in this dataset or the registries.",
}


@dg.asset(
    partitions_def=dataset_partitions,
    deps=[dg.AssetDep(geo_series, partition_mapping=dg.AllPartitionMapping())],
    pool="lancedb_writer",
    group_name="atlas",
    kinds={"lancedb", "zarr"},
    owners=OWNERS,
    check_specs=[
        dg.AssetCheckSpec(
            name,
            asset="dataset_group",
            blocking=True,
            description=description,
            partitions_def=dataset_partitions,
        )
        for name, description in CHECKS.items()
    ],
)
def dataset_group(
    context: dg.AssetExecutionContext, atlas: AtlasResource, landing_zone: LandingZone
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """A dataset's zarr group, its feature layout, its cell rows and its dataset record.

    Files come from the landing zone (any file, including those ``geo_series`` lands). A file whose
    content is already in the atlas as another dataset is not ingested again: the metadata says
    ``outcome: duplicate`` and ``duplicate_of`` names that dataset. ``dropped_obs_columns`` lists the obs
    columns the cell schema does not declare (not stored; rename them with the sidecar's ``obs_columns``).
    With the sidecar's ``standardize``, ``standardization`` holds what it did: genes resolved per match kind
    and var entries ``resolved``, ``kept``, ``summed`` or ``first`` (``StandardizationReport.as_metadata``).
    """
    from lancell.errors import LancellError
    from lancell.ingest.landing import ingest_landing_file

    uid = context.partition_key
    started = time.perf_counter()
    reports: list[StandardizationReport] = []
    try:
        spec = landing_zone.spec(uid)
        handle = atlas.open()
        record, outcome = ingest_landing_file(handle, spec, on_standardized=reports.append)
    except LancellError as exc:
        context.log.error(f"dataset {uid}: {exc}")
        findings = {"ingested_cleanly": f"failed: {exc}"} | {
            name: "not evaluated: ingestion failed" for name in list(CHECKS)[1:]
        }
        for name, finding in findings.items():
            yield dg.AssetCheckResult(check_name=name, passed=False, metadata={"finding": finding})
        raise dg.Failure(
            description=f"dataset {uid} was not ingested: {exc}",
            metadata={
                "error": f"{type(exc).__name__}: {exc}",
                "file": dg.MetadataValue.path(str(Path(landing_zone.path) / f"{uid}.h5ad")),
                "checks": dg.MetadataValue.json(findings),
            },
        ) from exc
    seconds = time.perf_counter() - started
    if outcome == "duplicate":
        context.log.warning(f"{spec.path.name}: same content as dataset {record.uid!r}; not ingested again")
    else:
        context.log.info(f"{record.uid}: {record.n_cells} cells, {record.nnz} nnz ({outcome})")
    for report in reports:
        context.log.info(f"{uid}: standardized\n{report.summary()}")
    if record.dropped_obs_columns:
        context.log.warning(
            f"{record.uid}: obs columns not in the cell schema, not stored: {record.dropped_obs_columns}"
        )
    yield dg.MaterializeResult(
        metadata=_metadata(
            handle,
            spec,
            record,
            outcome,
            seconds if outcome == "ingested" else None,
            reports[0] if reports else None,
        ),
        check_results=_checks(handle, spec, record),
    )


def _metadata(
    handle: "RaggedAtlas",
    spec: "LandingSpec",
    record: "DatasetRecord",
    outcome: str,
    seconds: float | None,
    report: "StandardizationReport | None",
) -> dict[str, object]:
    from lancell_assets.metadata import column_schema, group_metadata

    standardized = {} if report is None else {"standardization": dg.MetadataValue.json(report.as_metadata())}
    return (
        group_metadata(handle, record, seconds)
        | {
            "dagster/row_count": dg.MetadataValue.int(record.n_cells),
            "dagster/column_schema": column_schema(handle),
            # which host/process ingested it (with a Dask or Kubernetes executor: which worker or pod)
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "outcome": outcome,
            "file": dg.MetadataValue.path(str(spec.path)),
            "obs_columns": dg.MetadataValue.json(dict(spec.obs_columns)),
            "dropped_obs_columns": dg.MetadataValue.json(list(record.dropped_obs_columns)),
        }
        | ({"duplicate_of": record.uid} if outcome == "duplicate" else {})
        | standardized
    )


def _checks(handle: "RaggedAtlas", spec: "LandingSpec", record: "DatasetRecord") -> list[dg.AssetCheckResult]:
    attrs = handle.group_attributes(record.zarr_group) or {}
    problems = handle.validate(dataset_uid=record.uid)  # the dataset's cost, not the atlas's
    # a file removed after its dataset was ingested ("present") is compared no more: record and zarr still are
    source_cells = _source_cells(spec.path) if spec.path.exists() else None
    return [
        dg.AssetCheckResult(check_name="ingested_cleanly", passed=True),
        dg.AssetCheckResult(
            check_name="cell_count_matches",
            passed=record.n_cells == attrs.get("n_cells") and source_cells in (None, record.n_cells),
            metadata={
                "record": record.n_cells,
                "file": "removed from the landing zone" if source_cells is None else source_cells,
                "zarr": attrs.get("n_cells"),
            },
        ),
        dg.AssetCheckResult(
            check_name="nnz_matches",
            passed=record.nnz == attrs.get("nnz"),
            metadata={"record": record.nnz, "zarr": attrs.get("nnz")},
        ),
        dg.AssetCheckResult(
            check_name="dataset_consistent", passed=not problems, metadata={"problems": "; ".join(problems)}
        ),
    ]


def _source_cells(path: Path) -> int:
    """Number of cells in an ``.h5ad`` (read from its obs index, nothing else)."""
    import h5py

    with h5py.File(path, "r") as f:
        obs = f["obs"]
        index = obs.attrs["_index"]
        return int(obs[index].shape[0])
