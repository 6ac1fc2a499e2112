"""``dataset_group``: one partition per dataset; validate, register its features, ingest its zarr group.

A file that cannot be ingested fails its run (the partition is not materialized): its partition-scoped
checks record the failure and the run's failure metadata carries the error and every check's finding. The
atlas is left as it was (ingestion is atomic; see docs/architecture.md, "Ingestion"). So does a dataset
already in the atlas whose landing file is no longer the one it was ingested from (the partition keeps its
earlier materialization; ``content_matches`` names the difference).
"""

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from lancell_assets.geo import geo_series
from lancell_assets.landing_compare import compare_landing, landed
from lancell_assets.metadata import OWNERS
from lancell_assets.partitions import dataset_partitions
from lancell_assets.pools import WRITER_POOL
from lancell_assets.warnings_log import logged_warnings
from resources import AtlasResource, LandingZone

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.ingest.landing import LandingSpec
    from lancell.standardize.pipeline import StandardizationReport
    from lancell.tables.schema import DatasetRecord

CHECKS = {
    "ingested_cleanly": "The landing file was read and ingested without error (the error otherwise).",
    "cell_count_matches": "Cells in the dataset record = n_cells of the zarr group (= rows of the file's "
    "obs, for a file read in this run).",
    "nnz_matches": "Stored values in the dataset record = nnz of the zarr group.",
    "dataset_consistent": (
        "atlas.validate(dataset_uid, checksums=True) finds no problem in this dataset (every chunk read and "
        "checked against its CRC32C) or the registries."
    ),
    "content_matches": "The landing file and its sidecar's options are those the dataset was ingested from "
    "(landing fingerprint); a dataset in the atlas is never replaced by a changed file.",
}


@dg.asset(
    partitions_def=dataset_partitions,
    deps=[dg.AssetDep(geo_series, partition_mapping=dg.AllPartitionMapping())],
    pool=WRITER_POOL,
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

    On an object store, an ingestion that fails with a store failure (rolled back) is run again twice, 5 and
    20 s later, each retry logged as a warning; a bad file, a lock that timed out, a failure no wait mends,
    one after the dataset's commit and a local atlas's failure fail at once
    (``lancell.ingest.landing_retries``).

    A dataset already in the atlas is not ingested again (``outcome: present``): its landing file, if it
    is still there, is compared with the one it was ingested from (``landing_fingerprint``, recorded at
    ingestion). A changed, corrupt or unreadable file (or sidecar) fails the run, and ``content_matches``,
    naming what differs; the atlas is left as it was.
    """
    from lancell.errors import DroppedColumnsWarning, DuplicateContentWarning, IngestError, LancellError
    from lancell.ingest.landing import (
        landing_fingerprint,
        landing_options,
        landing_state,
        present_record,
    )
    from lancell.ingest.landing_retries import ingest_retrying

    uid = context.partition_key
    started = time.perf_counter()
    warned: list[str] = []
    reports: list[StandardizationReport] = []
    file, spec, fingerprint, options, state = (
        Path(landing_zone.path),
        None,
        None,
        None,
        None,
    )  # the landing file's, once known
    try:
        handle = atlas.open()
        record, outcome = present_record(handle, uid), "present"
        if record is None:
            entry = landing_zone.entry(uid)
            if entry is None:
                raise IngestError(f"no file in landing folder {file} lands as dataset uid {uid!r}")
            file = entry.path
            if entry.spec is None:
                raise IngestError(entry.error)
            spec, state = entry.spec, landing_state(entry.spec)
            fingerprint, options = landing_fingerprint(spec), landing_options(spec)
            with logged_warnings(context, leave=(DroppedColumnsWarning, DuplicateContentWarning)) as warned:

                def again(message: str) -> None:  # (the failed ingestion's reports are not the stored one's)
                    context.log.warning(message)
                    reports.clear()

                record, outcome = ingest_retrying(
                    handle, spec, on_retry=again, on_standardized=reports.append
                )
    except LancellError as exc:
        context.log.error(f"dataset {uid}: {exc}")
        findings = {"ingested_cleanly": f"failed: {exc}"} | {
            name: "not evaluated: ingestion failed" for name in list(CHECKS)[1:]
        }
        failed = [
            dg.AssetCheckResult(check_name=name, passed=False, metadata={"finding": finding})
            for name, finding in findings.items()
        ]
        yield from _failed(f"dataset {uid} was not ingested: {exc}", exc, file, failed)
    seconds = time.perf_counter() - started
    if outcome == "present":
        landing = compare_landing(context, landing_zone, record)
        checks = [*_checks(handle, record, None), landing.check]
        spec = None if landing.entry is None else landing.entry.spec
        fingerprint, options = landing.recorded, landing.options
        if landing.problem is not None:
            context.log.warning(f"dataset {uid}: {landing.problem}")
            path = file if landing.entry is None else landing.entry.path
            description = f"dataset {uid} is in the atlas (left as it was), but {landing.problem}"
            yield from _failed(description, landing.problem, path, checks)
    else:
        # the file replaced or written while it was read twice (fingerprint, ingestion): the fingerprint
        # may name another content than the one stored
        changed = outcome == "ingested" and landing_state(spec) != state
        finding = (
            f"landing file {spec.path} changed while it was fingerprinted and ingested (its fingerprint may "
            f"name another version than the one stored): dataset {record.uid!r} is deleted again (the "
            "features it registered and its feature layout stay, its zarr group until vacuum); the next run "
            "ingests the file as it is then"
        )
        if outcome == "ingested" and not changed:  # kept at once: a run stopped during the checks below
            context.log_event(landed(context, record, fingerprint, options))
        content = dg.AssetCheckResult(
            check_name="content_matches",
            passed=not changed,
            metadata={"finding": finding} if changed else {"landing_fingerprint": fingerprint},
        )
        checks = [*_checks(handle, record, file, spec.genome), content]
        if changed:
            context.log.error(f"dataset {uid}: {finding}")
            handle.delete_dataset(record.uid)  # (this run's own dataset: no other run ingests this uid)
            yield from _failed(f"dataset {uid}: {finding}", IngestError(finding), file, checks)
    if outcome == "duplicate":
        context.log.warning(f"{file.name}: same content as dataset {record.uid!r}; not ingested again")
    else:
        context.log.info(f"{record.uid}: {record.n_cells} cells, {record.nnz} nnz ({outcome})")
    for report in reports:
        context.log.info(f"{uid}: standardized\n{report.summary()}")
    if record.dropped_obs_columns:
        context.log.warning(
            f"{record.uid}: obs columns not in the cell schema, not stored: {record.dropped_obs_columns}"
        )
    seconds = seconds if outcome == "ingested" else None
    metadata = _metadata(handle, spec, record, outcome, seconds, reports[0] if reports else None)
    if warned:  # what was not stored or not used (logged as warnings too)
        metadata["warnings"] = dg.MetadataValue.json(warned)
    if fingerprint is not None:
        metadata["landing_fingerprint"] = fingerprint
    if options is not None:  # what content_matches names when the fingerprint differs
        metadata["landing_options"] = dg.MetadataValue.json(options)
    yield dg.MaterializeResult(metadata=metadata, check_results=checks)


def _failed(
    description: str, exc: Exception, file: Path, checks: list[dg.AssetCheckResult]
) -> Iterator[dg.AssetCheckResult]:
    """Record ``checks``, then fail the run with ``exc``; the failure metadata holds each check's finding."""
    yield from checks
    raise dg.Failure(
        description=description,
        metadata={
            "error": f"{type(exc).__name__}: {exc}",
            "file": dg.MetadataValue.path(str(file)),
            "checks": dg.MetadataValue.json({c.check_name: _finding(c) for c in checks}),
        },
    ) from exc


def _finding(check: dg.AssetCheckResult) -> str:
    """A check's ``finding``, else ``passed`` or ``failed:`` and its metadata."""
    values = {key: getattr(value, "value", value) for key, value in check.metadata.items()}
    if "finding" in values:
        return str(values["finding"])
    return "passed" if check.passed else f"failed: {values}"


def _metadata(
    handle: "RaggedAtlas",
    spec: "LandingSpec | None",
    record: "DatasetRecord",
    outcome: str,
    seconds: float | None,
    report: "StandardizationReport | None",
) -> dict[str, object]:
    from lancell_assets.metadata import column_schema, group_metadata

    standardized = {} if report is None else {"standardization": dg.MetadataValue.json(report.as_metadata())}
    # a present dataset whose file was removed: no landing file to name
    landed = (
        {}
        if spec is None
        else {
            "file": dg.MetadataValue.path(str(spec.path)),
            "obs_columns": dg.MetadataValue.json(dict(spec.obs_columns)),
        }
    )
    return (
        group_metadata(handle, record, seconds)
        | {
            "dagster/row_count": dg.MetadataValue.int(record.n_cells),
            "dagster/column_schema": column_schema(handle),
            # which host/process ingested it (with a Dask or Kubernetes executor: which worker or pod)
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "outcome": outcome,
            "content_fingerprint": record.content_fingerprint,
            "dropped_obs_columns": dg.MetadataValue.json(list(record.dropped_obs_columns)),
        }
        | landed
        | ({"duplicate_of": record.uid} if outcome == "duplicate" else {})
        | standardized
    )


def _checks(
    handle: "RaggedAtlas", record: "DatasetRecord", source: Path | None, genome: str | None = None
) -> list[dg.AssetCheckResult]:
    """The checks of the atlas's dataset ``record``; ``source``: the file just read (its cells are counted;
    ``genome``: a 10x output's, from its spec), None for a dataset already in the atlas (its file is not
    read)."""
    attrs = handle.group_attributes(record.zarr_group) or {}
    # the dataset's cost, not the atlas's: one read of its chunks (and of the modalities attached to its
    # cells: a 10x output's <uid>/<feature space>), each checked against its CRC32C
    datasets = handle.list_datasets()
    attached = (
        datasets.loc[datasets["cells_of"] == record.uid, "uid"].tolist() if "cells_of" in datasets else []
    )
    problems = [
        p for uid in [record.uid, *attached] for p in handle.validate(dataset_uid=uid, checksums=True)
    ]
    source_cells = None if source is None else _source_cells(source, genome)
    return [
        dg.AssetCheckResult(check_name="ingested_cleanly", passed=True),
        dg.AssetCheckResult(
            check_name="cell_count_matches",
            passed=record.n_cells == attrs.get("n_cells") and source_cells in (None, record.n_cells),
            metadata={
                "record": record.n_cells,
                "file": "not read (already in the atlas)" if source_cells is None else source_cells,
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


def _source_cells(path: Path, genome: str | None) -> int | str:
    """Number of cells in an ``.h5ad`` (read from its obs index, nothing else) or a 10x output (its
    barcodes), or why it cannot be read."""
    import h5py

    from lancell.errors import LancellError
    from lancell.ingest.landing_spec import is_tenx_output

    if is_tenx_output(path):
        from lancell.ingest.tenx import open_10x

        try:
            return open_10x(path, genome=genome).obs.shape[0]
        except LancellError as exc:
            return f"cannot be read: {exc}"
    try:
        with h5py.File(path, "r") as f:
            obs = f["obs"]
            return int(obs[obs.attrs["_index"]].shape[0])
    except (OSError, KeyError) as exc:  # changed since it was ingested, in this run
        return f"cannot be read: {exc}"
