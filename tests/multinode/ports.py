"""Port blocks for test clusters that share one machine with other Ray clusters.

Other clusters on this machine use Ray's defaults (GCS 6379, dashboard 8265,
client server 10001, dashboard agent 52365, worker ports 10002-19999, Serve
8000/9000, HAProxy 8404/9101, Serve direct ingress 30000-31000 and
40000-41000), and the kernel hands out ephemeral ports from 32768 up. A test
cluster therefore takes every port it uses from one block in 20000-29999,
which none of those touch.

A block is claimed with an ``flock`` on a file in ``LOCK_DIR``: two harnesses
(two pytest sessions, two engineers) never get the same block, and the lock
goes away with the process that held it, even after a crash. Each port is
also checked to be free when the block is claimed.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
from pathlib import Path

PORT_BASE = 20000
BLOCK_SIZE = 512
N_BLOCKS = 19  # 20000 + 19 * 512 = 29728: stays below 30000
LOCK_DIR = Path("/tmp/mlp-multinode-ports")
WORKER_PORTS_PER_NODE = 120
DIRECT_INGRESS_PORTS_PER_NODE = 30
NODE_PORT_OPTIONS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                     "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")


def port_is_free(port: int) -> bool:
    """True when a server could listen on ``port`` on every interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so TIME_WAIT leftovers of a previous test are no obstacle.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class PortBlock:
    """A claimed block of ports, handed out in order by ``take`` and ``take_range``."""

    def __init__(self, start: int, size: int, lock_fd: int) -> None:
        self.start = start
        self.size = size
        self._next = start
        self._lock_fd: int | None = lock_fd

    def take(self) -> int:
        return self.take_range(1)[0]

    def take_range(self, count: int) -> tuple[int, int]:
        """``count`` consecutive ports as (first, last), both inclusive."""
        first = self._next
        if first + count > self.start + self.size:
            raise RuntimeError(f"port block {self.start}+{self.size} is exhausted")
        self._next += count
        return first, first + count - 1

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None


def claim_port_block() -> PortBlock:
    """Claim a free block (random order, so parallel sessions rarely even try the same one)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    blocks = list(range(N_BLOCKS))
    random.shuffle(blocks)
    for index in blocks:
        start = PORT_BASE + index * BLOCK_SIZE
        fd = os.open(LOCK_DIR / f"block-{start}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if all(port_is_free(port) for port in range(start, start + BLOCK_SIZE)):
            return PortBlock(start, BLOCK_SIZE, fd)
        os.close(fd)
    raise RuntimeError(f"no free port block of {BLOCK_SIZE} in {PORT_BASE}-{PORT_BASE + N_BLOCKS * BLOCK_SIZE}")


def node_port_plan(block: PortBlock, worker: bool) -> tuple[dict[str, int], dict[str, str]]:
    """One node's ports: ``ray start`` options, and Serve's env-chosen ports (distinct per node:
    HAProxy and direct ingress run on every node). The head's proxy binds ``http_options.port``,
    a worker node's the ``RAY_SERVE_WORKER_PROXY_*`` ports."""
    options = {option: block.take() for option in NODE_PORT_OPTIONS}
    options["min-worker-port"], options["max-worker-port"] = block.take_range(WORKER_PORTS_PER_NODE)
    http_lo, http_hi = block.take_range(DIRECT_INGRESS_PORTS_PER_NODE)
    grpc_lo, grpc_hi = block.take_range(DIRECT_INGRESS_PORTS_PER_NODE)
    env = {
        "RAY_SERVE_HAPROXY_STATS_PORT": block.take(),
        "RAY_SERVE_HAPROXY_METRICS_PORT": block.take(),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": block.take(),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": block.take(),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": http_lo,
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": http_hi,
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": grpc_lo,
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": grpc_hi,
    }
    if worker:
        env["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = block.take()
        env["RAY_SERVE_WORKER_PROXY_GRPC_PORT"] = block.take()
    return options, {key: str(value) for key, value in env.items()}
