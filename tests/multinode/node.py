"""One ``ray start --block`` node of a test cluster and its view of the file system."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Node:
    """A node's ids, pids, folders and the environment it started with."""

    name: str  # "head" or "worker"
    home: Path  # MLP_HOME as the node sees it: the same path on both nodes
    private_home: bool  # True: a tmpfs in the node's own mount namespace, invisible from the host
    temp_dir: Path  # the node's --temp-dir (Ray's session and log files)
    log_path: Path  # stdout and stderr of its `ray start`
    env: dict[str, str]
    ports: dict[str, int]  # `ray start` option -> port
    serve_env: dict[str, str] = field(default_factory=dict)  # Serve's per-node ports, also in env
    proc: subprocess.Popen | None = None
    start_pid: int = 0  # `ray start --block`: also its process group and session id
    raylet_pid: int = 0
    node_id: str = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(self, *cmd: str, check: bool = True, timeout_s: float = 30) -> subprocess.CompletedProcess:
        """Run ``cmd`` with this node's view of the file system (``nsenter`` into its mount namespace)."""
        argv = list(cmd)
        if self.private_home:
            if not self.running:
                raise RuntimeError(f"the {self.name} node is not running: its private disk is gone")
            argv = ["nsenter", "-t", str(self.start_pid), "-m", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout_s)

    def path(self, relative: str = "") -> Path:
        return self.home / relative if relative else self.home

    def listdir(self, relative: str = "") -> list[str]:
        """Names in ``MLP_HOME/relative`` as this node sees them."""
        return sorted(self.run("ls", "-A1", str(self.path(relative))).stdout.splitlines())

    def exists(self, relative: str) -> bool:
        return self.run("test", "-e", str(self.path(relative)), check=False).returncode == 0

    def read_text(self, relative: str) -> str:
        return self.run("cat", str(self.path(relative))).stdout

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
