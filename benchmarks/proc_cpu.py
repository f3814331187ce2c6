"""CPU time of every process on the machine, read from /proc: who used the cores during a measurement.

Shared by the benchmarks that attribute a run's CPU to its parts (training workers against Ray's own
processes; serving replicas against HAProxy and the peer), so each figure says where the time went.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class ProcCpu(NamedTuple):
    """One process at one instant: its command line, parent pid, and user + system clock ticks so far."""

    command: str
    ppid: int
    ticks: int


def cpu_ticks() -> dict[int, ProcCpu]:
    """Every live process's ``ProcCpu`` by pid (processes that vanish while being read are skipped)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
        found[int(stat.parent.name)] = ProcCpu(command, int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


def descendants(root: int, snapshot: dict[int, ProcCpu]) -> set[int]:
    """``root`` and every process below it in ``snapshot`` (e.g. a server and the workers it forked)."""
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, proc in snapshot.items():
            if proc.ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree
