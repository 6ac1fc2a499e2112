"""Runs whose in-process worker died: found and failed, so that their pool slots are free again.

``take_snapshot`` (and ``make demo``) run jobs in their own process. Killed there without a chance to clean
up (SIGKILL, the OOM killer, a CI job's timeout), a run stays ``STARTED`` and keeps its ``lancedb_writer``
slot: every later LanceDB-writing step, of any run, would wait for it forever. Each such run carries
:data:`WORKER_TAG`, naming its process by what does not change while it lives and is never reused: the
machine's boot id, its process-id namespace, the process id and the process's start time in clock ticks
since boot (not a wall-clock time, which moves when the clock is stepped). :func:`fail_dead_runs` marks the
unfinished runs whose process is provably gone as failed and frees their slots: same boot and namespace,
and no process with that id, or one started at another tick. A run of another machine, boot or container
namespace is left alone (nothing here can tell whether it lives); runs launched by the Dagster daemon are
watched by Dagster's run monitoring (``dagster.yaml``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

__all__ = ["WORKER_TAG", "fail_dead_runs", "worker_tags"]

WORKER_TAG = "lancell/worker"
_PROC = Path("/proc")


def _start_ticks(pid: int) -> str | None:
    """Process ``pid``'s start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None
    where it cannot be read (no such process, no ``/proc``, or hidden from this user)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name (which may hold spaces)


def _machine() -> str:
    """This boot and process-id namespace: ``"<boot id>/<pid namespace inode>"``, or "" without ``/proc``."""
    try:
        boot = (_PROC / "sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat(_PROC / 'self/ns/pid').st_ino}"
    except OSError:
        return ""


def worker_tags() -> dict[str, str]:
    """The tags naming this process as a run's worker (none where ``/proc`` cannot tell, e.g. macOS)."""
    machine, ticks = _machine(), _start_ticks(os.getpid())
    return {WORKER_TAG: f"{machine}:{os.getpid()}:{ticks}"} if machine and ticks else {}


def _gone(worker: str) -> bool:
    """Whether the process a :data:`WORKER_TAG` names is provably gone (module doc)."""
    machine, pid, ticks = worker.rsplit(":", 2)
    if machine != _machine():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process of that id: it exists
        pass
    now = _start_ticks(int(pid))
    return now is not None and now != ticks  # the id was reused by a later process


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark the unfinished runs whose worker process (:data:`WORKER_TAG`) is provably gone as failed and free
    the concurrency slots they hold; return their run ids."""
    import dagster as dg

    unfinished = instance.get_runs(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    )
    dead = [run for run in unfinished if WORKER_TAG in run.tags and _gone(run.tags[WORKER_TAG])]
    for run in dead:
        instance.report_run_failed(
            run, f"its worker process ({run.tags[WORKER_TAG]}) is gone: killed without cleaning up"
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return [run.run_id for run in dead]
