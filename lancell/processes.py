"""A process named so that another process can tell, later, whether it is gone.

A lock's holder (:mod:`lancell.tables.locks`) and a Dagster run's worker (``lancell_assets.dead_runs``) record
:func:`this_process`: the host, the process id, the process-id namespace, and when the process started as
``<boot id>:<clock ticks since boot>`` (Linux ``/proc``; not a wall-clock time, which moves when the clock is
stepped). :func:`process_gone` says a recorded process is gone only when that is certain: same host, boot
and namespace (a namespace's inode alone does not tell machines apart), and no process has its id, or the
one that has it is a zombie (exited, not yet reaped by its parent) or started at another tick (the id was
reused); of another boot, gone when the machine id (``/etc/machine-id``) is this one's: the machine rebooted
since. A process of another host, machine or namespace, or one this process cannot see, is never judged gone.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["is_this_process", "process_gone", "this_process"]

_PROC = Path("/proc")


@functools.cache
def _boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


@functools.cache
def _machine_id() -> str | None:
    """This machine's id (``/etc/machine-id``, kept across reboots), or None where it has none."""
    try:
        return Path("/etc/machine-id").read_text().strip() or None
    except OSError:
        return None


def _namespace() -> str | None:
    """This process's process-id namespace (its inode), or None without ``/proc``."""
    try:
        return str(os.stat(_PROC / "self/ns/pid").st_ino)
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, str] | None:
    """Process ``pid``'s state letter and its start as ``<boot id>:<clock ticks since boot>``, or None where
    ``/proc`` does not tell (another OS, no such process, hidden from this user)."""
    boot = _boot_id()
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    if boot is None:
        return None
    # the command name (field 2) is in parentheses and may hold anything: the fields after it are plain;
    # the state is field 3, the start time field 22
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], f"{boot}:{fields[19]}"


def this_process() -> dict[str, Any]:
    """``{"host", "machine", "pid", "started", "namespace"}`` of this process (``machine``, ``started`` and
    ``namespace`` None where ``/etc/machine-id`` or ``/proc`` does not tell)."""
    pid = os.getpid()
    stat = _stat(pid)
    return {
        "host": socket.gethostname(),
        "machine": _machine_id(),
        "pid": pid,
        "started": stat[1] if stat else None,
        "namespace": _namespace(),
    }


def process_gone(recorded: Mapping[str, Any]) -> bool:
    """Whether the process :func:`this_process` recorded is certainly gone (module doc). A record without
    a namespace (written before it was recorded) is judged by its host alone."""
    if recorded.get("host") != socket.gethostname() or "pid" not in recorded:
        return False
    if recorded.get("namespace") not in (None, _namespace()):
        return False
    started = recorded.get("started")
    if started is not None and not isinstance(started, str):
        return False  # not a record this module wrote
    if started is not None and started.rsplit(":", 1)[0] != _boot_id():
        # this machine before a reboot (its processes are all gone), or another of the same name
        return recorded.get("machine") is not None and recorded.get("machine") == _machine_id()
    pid = int(recorded["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user has this id: its start time tells whose
        pass
    stat = _stat(pid)
    if stat is None:
        return False
    state, now = stat
    return state == "Z" or (started is not None and now != started)


def process_alive(recorded: Mapping[str, Any]) -> bool:
    """Whether the process :func:`this_process` recorded certainly runs: this host, boot and namespace,
    and its id names a live process started at the recorded time."""
    if recorded.get("host") != socket.gethostname() or "pid" not in recorded:
        return False
    started = recorded.get("started")
    if recorded.get("namespace") != _namespace() or not isinstance(started, str):
        return False
    if started.rsplit(":", 1)[0] != _boot_id():
        return False
    stat = _stat(int(recorded["pid"]))
    return stat is not None and stat[0] != "Z" and stat[1] == started


def is_this_process(recorded: Mapping[str, Any]) -> bool:
    """Whether :func:`this_process` recorded this very process (host, namespace, id and start alike; never
    where ``/proc`` does not tell the start)."""
    me = this_process()
    return me["started"] is not None and all(
        recorded.get(key) == me[key] for key in ("host", "namespace", "pid", "started")
    )
