"""One local Ray cluster for the whole test session (2 CPUs, dashboard on).

The dashboard stays on: Ray Train 2.60 releases the workers of a trial that
Tune stops early through the State API, which the dashboard serves.
"""

from __future__ import annotations

import pytest
import ray

from serve.env import apply_serving_env


@pytest.fixture(scope="session", autouse=True)
def ray_cluster():
    # The serving settings users get from `python -m serve` (HAProxy ingress, ...); read at cluster start.
    apply_serving_env()
    if not ray.is_initialized():
        # address="local": always a fresh cluster, even if `ray start` left one running here.
        ray.init(address="local", num_cpus=2, include_dashboard=True)
    yield
    ray.shutdown()
