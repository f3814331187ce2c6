"""One local Ray cluster for the whole test session (2 CPUs, dashboard on).

The dashboard stays on: Ray Train 2.60 releases the workers of a trial that
Tune stops early through the State API, which the dashboard serves.
"""

from __future__ import annotations

import pytest
import ray

from mlp.distributed import rayenv
from mlp.distributed.trainer import local_cluster_options


@pytest.fixture(scope="session", autouse=True)
def ray_cluster():
    # The cluster settings the project applies where it starts Ray (HAProxy ingress, ...); read at cluster start.
    rayenv.apply_cluster_env()
    rayenv.apply_driver_env()
    if not ray.is_initialized():
        # address="local": always a fresh cluster, even if `ray start` left one running here.
        # Its dashboard on a free port named to the session's processes, as mlp's own local clusters do: a dead
        # cluster that `ray start` recorded on this machine (the multinode tests leave one) must not be the
        # State API that Ray Train's cleaner asks (mlp.distributed.trainer.local_cluster_options).
        ray.init(address="local", num_cpus=2, include_dashboard=True, **local_cluster_options())
    yield
    ray.shutdown()
