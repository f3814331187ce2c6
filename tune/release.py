"""Free the Train workers of a trial that Tune stops early, without Ray's State API.

When ASHA stops a trial that runs a ``TorchTrainer``, Tune kills the trial's
actor; the Train controller it owns dies with it, but the placement group
holding the workers' CPUs does not. Ray Train 2.60 removes it from a detached
``PlacementGroupCleaner`` that asks the State API whether the controller is
alive. With the dashboard off (no State API), or on a machine running several
Ray clusters (the cleaner finds the cluster by auto-detection and gives up),
that question fails, the group is never removed, and the next trials hang at
worker-group start until Train's 60 s timeout.

``ReleaseStoppedWorkers`` is a Train callback that starts one tiny detached
watchdog per worker group. The watchdog pings the controller through its actor
handle (plain Ray core, no dashboard) and removes the placement group once the
controller is gone. After a normal finish the controller has already removed
it, and the watchdog just exits.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

log = logging.getLogger(__name__)
PING_INTERVAL_S = 1.0
PING_TIMEOUT_S = 30.0  # a controller busy for longer than this is still treated as alive


@ray.remote(num_cpus=0, max_restarts=0)
class _Watchdog:
    """Removes ``placement_group`` once ``controller`` has died."""

    def run(self, controller: Any, placement_group: Any) -> None:
        from ray.util.placement_group import placement_group_table, remove_placement_group

        while True:
            try:
                ray.get(controller.__ray_ready__.remote(), timeout=PING_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                pass
            except ray.exceptions.RayError:  # dead, or its owner (the trial actor) is
                break
            time.sleep(PING_INTERVAL_S)
        try:
            if placement_group_table(placement_group).get("state", "REMOVED") != "REMOVED":
                log.warning("Train controller is gone; removing its placement group %s", placement_group.id.hex())
                remove_placement_group(placement_group)
        except Exception:  # noqa: BLE001  (log it: exit_actor below would hide it)
            log.exception("could not remove placement group %s", placement_group.id.hex())
        ray.actor.exit_actor()


class ReleaseStoppedWorkers(ControllerCallback, WorkerGroupCallback):
    """Runs in the Train controller: watch each worker group's placement group from outside."""

    def __init__(self) -> None:
        self._controller: Any = None

    def after_controller_start(self, train_run_context: Any) -> None:
        self._controller = ray.get_runtime_context().current_actor

    def after_worker_group_start(self, worker_group: Any) -> None:
        placement_group = worker_group.get_worker_group_state().placement_group_handle.placement_group
        # Detached, and outside the trial's placement group (Tune captures child actors
        # into it and kills them all when the trial stops): it must outlive both.
        watchdog = _Watchdog.options(lifetime="detached", scheduling_strategy="DEFAULT").remote()
        watchdog.run.remote(self._controller, placement_group)
