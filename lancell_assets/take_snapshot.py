"""Snapshot on demand: add the snapshot partition and run ``snapshot_job`` for it, from a shell or CI.

``python -m lancell_assets.take_snapshot LABEL [--no-train]`` uses the Dagster instance of
``DAGSTER_HOME`` and the atlas of ``LANCELL_ROOT`` (or ``LANCELL_DB_URI`` ...; see ``definitions.py``),
so the run, its partition and its metadata (including what changed since the previous snapshot) appear in
the UI like the nightly ones. ``dagster asset materialize --partition LABEL`` alone cannot do this: it
refuses a snapshot partition that does not exist yet. Exit status 0 when the run succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg

from lancell_assets.dead_runs import fail_dead_runs, fail_runs, slot_holders, worker_tags
from lancell_assets.partitions import snapshot_partitions
from lancell_assets.pools import WRITER_POOL
from resources.models import check_label

if TYPE_CHECKING:
    from dagster._utils.error import SerializableErrorInfo

log = logging.getLogger(__name__)

# the run's events stay in the instance (the UI shows them); a failed step's traceback, which Dagster logs at
# ERROR, would bury the one line this command prints for it
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def take_snapshot(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    label: str,
    *,
    train: bool = True,
    failed: Sequence[str] = (),
) -> dg.ExecuteInProcessResult:
    """Add snapshot partition ``label`` (if new) and run ``snapshot_job`` for it in this process.

    ``train=False`` leaves out the assets downstream of ``atlas_snapshot`` (the classifier). Runs whose
    process was killed without cleaning up are marked failed first, and their pool slots freed
    (:mod:`lancell_assets.dead_runs`): they would block this run forever. So are the runs ``failed``
    names (runs of the Dagster CLI, which nothing here can judge: their user says they are dead); every other
    run still holding a slot of the writers' pool is named in a warning (this run waits for it).

    Raises
    ------
    lancell.errors.SnapshotLabelError
        ``label`` cannot name a snapshot partition (:func:`resources.models.check_label`); nothing is added.
    lancell.errors.ArgumentValueError
        A run of ``failed`` does not exist, has finished or runs on this machine; nothing of ``failed`` is
        failed and no partition is added.
    """
    check_label(label)
    for run_id in fail_dead_runs(instance):
        log.warning("run %s: its process was killed; marked failed, its pool slots freed", run_id)
    fail_runs(instance, list(failed))
    for run_id in failed:
        log.warning("run %s: marked failed as asked, its pool slots freed", run_id)
    for run in slot_holders(instance, WRITER_POOL):
        log.warning(
            "run %s (%s, %s) holds a %r pool slot: this snapshot waits until it ends; if its process is "
            "gone (killed), stop this command and run it again with --fail-run %s; else it ends on its own",
            run.run_id,
            run.job_name,
            run.status.value,
            WRITER_POOL,
            run.run_id,
        )
    if not instance.has_dynamic_partition(snapshot_partitions.name, label):
        instance.add_dynamic_partitions(snapshot_partitions.name, [label])
    job = defs.resolve_job_def("snapshot_job")
    selection = None
    if not train:
        selection = [dg.AssetKey(name) for name in ("feature_registry", "optimized_atlas", "atlas_snapshot")]
    return job.execute_in_process(
        run_config=QUIET,
        instance=instance,
        partition_key=label,
        raise_on_error=False,
        asset_selection=selection,
        tags=worker_tags(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("label", help="the snapshot's label (its partition key and note)")
    parser.add_argument("--no-train", action="store_true", help="do not train the models on the snapshot")
    parser.add_argument(
        "--fail-run",
        action="append",
        default=[],
        metavar="RUN_ID",
        help="first mark this unfinished run failed and free its pool slots (a run of the Dagster CLI whose "
        "process was killed: this command names the runs it waits for); repeatable",
    )
    args = parser.parse_args(argv)
    from definitions import defs
    from lancell.errors import ArgumentValueError, SnapshotLabelError

    with dg.DagsterInstance.get() as instance:
        try:
            result = take_snapshot(defs, instance, args.label, train=not args.no_train, failed=args.fail_run)
        except (SnapshotLabelError, ArgumentValueError) as exc:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        if not result.success:
            errors = [_cause(e.event_specific_data.error) for e in result.get_step_failure_events()]
            print(
                f"snapshot {args.label!r}: run {result.run_id} failed: {'; '.join(errors)}", file=sys.stderr
            )
            return 1
        event = result.asset_materializations_for_node("atlas_snapshot")[0]
        meta = {key: value.value for key, value in event.metadata.items()}
        print(
            f"snapshot {args.label!r}: version {meta['snapshot_version']}, {meta['cells']} cells "
            f"(run {result.run_id}); since snapshot {meta['previous_snapshot']}: "
            f"datasets added {meta['datasets_added']}, removed {meta['datasets_removed']}, "
            f"changed {meta['datasets_changed']}, "
            f"cells added {meta['cells_added']}, features added {meta['features_added']}"
        )
    return 0


def _cause(error: SerializableErrorInfo) -> str:
    """The asset's own error of a step failure (``"ErrorClass: message"``, one line): the first in the chain
    that is not Dagster's (``DagsterExecutionStepExecutionError`` names only the step), not the lowest (a
    lancell error names what and where; the store's error it was raised from does not)."""
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    return " ".join(line.strip() for line in error.message.strip().splitlines()) or error.cls_name


if __name__ == "__main__":
    sys.exit(main())
