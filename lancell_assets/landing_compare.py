"""Whether a dataset already in the atlas still lands from the file it was ingested from: its landing file's
fingerprint (bytes and sidecar options) against the one recorded when it was ingested, by the
``dataset_group`` run that ingested it (an observation logged once the dataset is committed, then its
materialization)."""

from typing import TYPE_CHECKING, NamedTuple

import dagster as dg

from resources import LandingZone
from resources.landing import LandingEntry

if TYPE_CHECKING:
    from lancell.errors import IngestError
    from lancell.tables.schema import DatasetRecord

__all__ = ["Landing", "compare_landing", "landed"]


class Landing(NamedTuple):
    """A present dataset's landing file against the one it was ingested from."""

    entry: "LandingEntry | None"  # None: no file lands as the dataset any more
    recorded: str | None  # the landing fingerprint recorded when the dataset was ingested
    options: dict[str, object] | None  # the sidecar options recorded with it (None: not recorded)
    check: dg.AssetCheckResult  # content_matches
    problem: "IngestError | None"  # what fails the run


def landed(
    context: dg.AssetExecutionContext, record: "DatasetRecord", fingerprint: str, options: dict[str, object]
) -> dg.AssetObservation:
    """What an ingestion of this partition recorded, once its dataset is committed: the landing file's
    fingerprint and options with the content stored. Logged before the checks (which read every chunk), so
    a run stopped then (killed, out of memory) still tells the next run what was ingested."""
    return dg.AssetObservation(
        asset_key=context.asset_key,
        partition=record.uid,
        metadata={
            "content_fingerprint": record.content_fingerprint,
            "landing_fingerprint": fingerprint,
            "landing_options": dg.MetadataValue.json(options),
        },
    )


_LOOKBACK = 50  # a partition's newest materializations and observations searched for its landing fingerprint


def _recorded_landing(
    context: dg.AssetExecutionContext, record: "DatasetRecord"
) -> tuple[str | None, dict[str, object] | None]:
    """``(landing fingerprint, sidecar options)`` recorded with the dataset's current content: by the newest
    materialization or observation (:func:`landed`) of this partition that recorded both (a run that found
    the dataset present records only what it found recorded, and none before the ingesting run recorded
    it), else ``(None, None)``."""
    partition = dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[record.uid])
    events = [
        *context.instance.fetch_materializations(partition, limit=_LOOKBACK).records,
        *context.instance.fetch_observations(partition, limit=_LOOKBACK).records,
    ]
    for event in sorted(events, key=lambda e: e.storage_id, reverse=True):
        meta = event.asset_event.metadata
        if "content_fingerprint" not in meta or "landing_fingerprint" not in meta:
            continue
        if meta["content_fingerprint"].value == record.content_fingerprint:
            options = meta.get("landing_options")
            return meta["landing_fingerprint"].value, None if options is None else options.value
    return None, None


def compare_landing(
    context: dg.AssetExecutionContext, landing_zone: LandingZone, record: "DatasetRecord"
) -> Landing:
    """``content_matches`` of a dataset already in the atlas: its landing file's fingerprint against the
    one recorded at ingestion (:func:`_recorded_landing`)."""
    from lancell.errors import IngestError, LancellError
    from lancell.ingest.landing import landing_fingerprint, landing_options

    recorded, options = _recorded_landing(context, record)
    entry = None
    try:
        entry = landing_zone.entry(record.uid)
        if entry is None:
            finding = "no landing file lands as this dataset any more: not compared"
            return Landing(None, recorded, options, _content(True, finding), None)
        if entry.spec is None:
            raise IngestError(entry.error)
        current = landing_fingerprint(entry.spec)
    except LancellError as exc:
        problem = IngestError(f"its landing file cannot be compared with it: {exc}")
        return Landing(entry, recorded, options, _content(False, str(problem)), problem)
    if recorded is None:
        finding = (
            f"{entry.path.name}: this Dagster instance recorded no landing fingerprint of dataset "
            f"{record.uid!r} as the atlas holds it (ingested outside Dagster, by an older lancell, by "
            "another Dagster instance, such as a dagster dev session since restarted, or replaced since): "
            "not compared"
        )
        context.log.warning(finding)
        return Landing(entry, None, None, _content(False, finding, dg.AssetCheckSeverity.WARN), None)
    if current != recorded:
        problem = IngestError(
            f"landing file {entry.path} (with its sidecar's options) is not the one it was ingested from: "
            f"{_differs(options, landing_options(entry.spec))} (landing fingerprint {current}, at ingestion "
            f"{recorded}); the atlas keeps what was ingested: delete the dataset and re-materialize this "
            "partition to replace it (or land the original again)"
        )
        return Landing(entry, recorded, options, _content(False, str(problem)), problem)
    return Landing(entry, recorded, options, _content(True, f"{entry.path.name} is the file ingested"), None)


def _differs(recorded: dict[str, object] | None, current: dict[str, object]) -> str:
    """What differs between the sidecar options recorded at ingestion and the current ones, else that the
    file's bytes do."""
    if recorded is None:
        return "its bytes or its sidecar's options differ (the options at ingestion were not recorded)"
    changed = {key: (recorded.get(key), current.get(key)) for key in sorted({*recorded, *current})}
    changed = {key: pair for key, pair in changed.items() if pair[0] != pair[1]}
    if not changed:
        return "its bytes differ (its sidecar's options are the same)"
    return "its sidecar's options differ (its bytes may too): " + ", ".join(
        f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()
    )


def _content(
    passed: bool, finding: str, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="content_matches", passed=passed, severity=severity, metadata={"finding": finding}
    )
