"""Runs whose in-process worker died: found and failed, so that their pool slots are free again.

``take_snapshot`` runs ``snapshot_job`` in its own process. Killed there without a chance to clean up
(SIGKILL, the OOM killer, a CI job's timeout), the run stays ``STARTED`` and keeps its ``lancedb_writer``
slot: every later LanceDB-writing step, of any run, would wait for it forever. Each such run carries
:data:`WORKER_TAG` (host, process id and the process's start time); :func:`fail_dead_runs` marks the
unfinished runs whose process is gone from this host as failed and frees their slots. Runs launched by the
Dagster daemon are watched by Dagster's run monitoring (``dagster.yaml``).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    import dagster as dg

__all__ = ["WORKER_TAG", "fail_dead_runs", "worker_tags"]

WORKER_TAG = "lancell/worker"


def worker_tags() -> dict[str, str]:
    """The tags naming this process as a run's worker: ``{WORKER_TAG: "host:pid:start time"}``."""
    me = psutil.Process()
    return {WORKER_TAG: f"{socket.gethostname()}:{me.pid}:{me.create_time():.3f}"}


def _alive(worker: str) -> bool:
    """Whether the process a :data:`WORKER_TAG` names still runs (a process of another host is taken to)."""
    host, pid, started = worker.rsplit(":", 2)
    if host != socket.gethostname():
        return True
    try:
        return f"{psutil.Process(int(pid)).create_time():.3f}" == started  # not a reused process id
    except psutil.NoSuchProcess:
        return False


def fail_dead_runs(instance: dg.DagsterInstance, job_name: str) -> list[str]:
    """Mark the unfinished runs of ``job_name`` whose worker process (:data:`WORKER_TAG`) is gone as failed
    and free the concurrency slots they hold; return their run ids."""
    import dagster as dg

    unfinished = instance.get_runs(
        dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    )
    dead = [run for run in unfinished if WORKER_TAG in run.tags and not _alive(run.tags[WORKER_TAG])]
    for run in dead:
        instance.report_run_failed(
            run, f"its worker process ({run.tags[WORKER_TAG]}) is gone: killed without cleaning up"
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return [run.run_id for run in dead]
