"""Finding a test cluster's processes through /proc, so they can be stopped by pid.

A process belongs to a cluster when it is in the session of one of its
``ray start`` processes (each starts one with ``setsid``), or when its
environment carries ``MLP_MULTINODE_CLUSTER=<id>`` (drivers, which run in the
caller's session). The process group is not enough: Ray starts its workers
(``ray::IDLE``, actors) in groups of their own, and they can outlive
``ray start`` for a moment when a node goes down. Nor is the marker alone:
processes that rename themselves (``ray::DashboardAgent``, ``ray-dashboard-*``)
overwrite the memory that ``/proc/<pid>/environ`` shows.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from pathlib import Path

MARKER = "MLP_MULTINODE_CLUSTER"


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, process group, session) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain spaces
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def _pids() -> Iterable[int]:
    return (int(entry) for entry in os.listdir("/proc") if entry.isdigit())


def has_marker(pid: int, cluster_id: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER}={cluster_id}".encode() in environ.split(b"\0")


def belongs(pid: int, cluster_id: str, sessions: Collection[int]) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z" and (stat[3] in sessions or has_marker(pid, cluster_id))


def cluster_pids(cluster_id: str, sessions: Collection[int]) -> list[int]:
    """Live (non-zombie) processes of the cluster: in one of ``sessions`` or carrying the marker."""
    return [pid for pid in _pids() if belongs(pid, cluster_id, sessions)]


def kill_pids(pids: Iterable[int], cluster_id: str, sessions: Collection[int], sig: int) -> None:
    """Signal each pid that still belongs to the cluster (checked right before: pids get reused)."""
    for pid in pids:
        if belongs(pid, cluster_id, sessions):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def find_raylet(parent_pid: int) -> tuple[int, str] | None:
    """(pid, node id) of the raylet that ``ray start`` (``parent_pid``) launched, once it runs."""
    for pid in _pids():
        stat = proc_stat(pid)
        if stat is None or stat[1] != parent_pid or stat[0] == "Z":
            continue
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "raylet":
                continue
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in argv:
            if arg.startswith(b"--node_id="):
                return pid, arg.split(b"=", 1)[1].decode()
    return None


def signal_group(pgid: int, live: Iterable[int], sig: int) -> None:
    """``killpg`` only while a process of ours is still in the group.

    A process group number is not reused while a member lives; once the group is
    empty the number may belong to someone else's process.
    """
    if any((stat := proc_stat(pid)) is not None and stat[2] == pgid for pid in live):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass


