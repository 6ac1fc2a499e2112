"""Runs whose in-process worker died: found and failed, so that their pool slots are free again.

``take_snapshot`` (and ``make demo``) run jobs in their own process. Killed there without a chance to clean
up (SIGKILL, the OOM killer, a CI job's timeout), a run stays ``STARTED`` and keeps its ``lancedb_writer``
slot: every later LanceDB-writing step, of any run, would wait for it forever. Each such run carries
:data:`WORKER_TAG`, its process as :func:`lancell.processes.this_process` names it (host, process id, pid
namespace, start in clock ticks since boot); :func:`fail_dead_runs` marks the unfinished runs whose process
is certainly gone (:func:`lancell.processes.process_gone`) as failed and frees their slots. A run of another
machine, boot or container namespace is left alone (nothing here can tell whether it lives); runs launched
by the Dagster daemon are watched by Dagster's run monitoring (``dagster.yaml``). Neither watches a run of
the Dagster CLI (``dagster job execute``, ``dagster asset materialize``): :func:`slot_holders` names the
unfinished runs holding a pool's slots, so that a command waiting for them can say which, and
:func:`fail_runs` fails those its user knows are dead.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

__all__ = ["WORKER_TAG", "fail_dead_runs", "fail_runs", "slot_holders", "worker_tags"]

WORKER_TAG = "lancell/worker"


def worker_tags() -> dict[str, str]:
    """The tags naming this process as a run's worker (none where ``/proc`` cannot tell, e.g. macOS)."""
    from lancell.processes import this_process  # lancell loads with the run, not the definitions

    me = this_process()
    return {WORKER_TAG: json.dumps(me, sort_keys=True)} if me["started"] else {}


def _recorded(worker: str) -> dict | None:
    """The process a worker tag records, None for a tag this module did not write."""
    try:
        recorded = json.loads(worker)
    except ValueError:
        return None
    return recorded if isinstance(recorded, dict) else None


def _gone(worker: str) -> bool:
    from lancell.processes import process_gone

    recorded = _recorded(worker)
    return recorded is not None and process_gone(recorded)


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark the unfinished runs whose worker process (:data:`WORKER_TAG`) is provably gone as failed and free
    the concurrency slots they hold; return their run ids."""
    import dagster as dg

    unfinished = instance.get_runs(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    )
    dead = [run for run in unfinished if WORKER_TAG in run.tags and _gone(run.tags[WORKER_TAG])]
    for run in dead:
        why = f"its worker process ({run.tags[WORKER_TAG]}) is gone: killed without cleaning up"
        _fail(instance, run, why)
    return [run.run_id for run in dead]


def _fail(instance: dg.DagsterInstance, run: dg.DagsterRun, why: str) -> None:
    instance.report_run_failed(run, why)
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


def slot_holders(instance: dg.DagsterInstance, pool: str) -> list[dg.DagsterRun]:
    """The unfinished runs holding slots of ``pool``."""
    claimed = {slot.run_id for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots}
    runs = [instance.get_run_by_id(run_id) for run_id in sorted(claimed)]
    return [run for run in runs if run is not None and not run.is_finished]


def fail_runs(instance: dg.DagsterInstance, run_ids: list[str]) -> None:
    """Mark the unfinished runs ``run_ids`` failed and free their pool slots (their user says their
    processes are gone); every one is checked before any is failed.

    Raises
    ------
    lancell.errors.ArgumentValueError
        A run that does not exist, has finished, or whose worker process (:data:`WORKER_TAG`) is this
        machine's and alive; nothing is failed.
    """
    from lancell.errors import ArgumentValueError
    from lancell.processes import process_alive

    runs = []
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            what = "no such run" if run is None else f"it has finished ({run.status.value})"
            raise ArgumentValueError(f"run {run_id!r} cannot be failed: {what} (nothing was failed)")
        worker = _recorded(run.tags.get(WORKER_TAG, ""))
        if worker is not None and process_alive(worker):
            raise ArgumentValueError(
                f"run {run_id!r} cannot be failed: its worker process ({run.tags[WORKER_TAG]}) is alive on "
                "this machine (nothing was failed)"
            )
        runs.append(run)
    for run in runs:
        _fail(instance, run, "failed by its user: its process is gone (killed without cleaning up)")
