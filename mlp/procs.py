"""Whether a process on this machine still runs: how leftovers named after their creator's pid are judged.

The registry's hidden promotion folders and the shared-memory all-reduce segments
carry the pid of the process that made them; one whose process is gone is
abandoned and may be removed.
"""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; an exited process its parent has not reaped yet (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")  # the state letter follows "(comm) "
