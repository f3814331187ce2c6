"""Free the Train workers of a trial that Tune stops early, when Ray's own cleaner cannot.

When ASHA stops a trial that runs a ``TorchTrainer``, Tune kills the trial's
actor; the Train controller it owns dies with it, but the placement group
holding the workers' CPUs does not. Ray Train removes it from a detached
``PlacementGroupCleaner`` that asks the State API whether the controller is
alive, at the address it auto-detects (``RAY_API_SERVER_ADDRESS``,
``RAY_ADDRESS``, else the newest ``ray start`` cluster on the machine). With
the dashboard off (no State API), or when that address is another cluster's
(several clusters on one machine), the question fails, the group is never
removed, and the next trials hang at worker-group start until Train's 60 s
timeout.

``ReleaseStoppedWorkers`` is a Train callback that then starts one tiny
detached watchdog per worker group. The watchdog pings the controller through
its actor handle (plain Ray core, no dashboard) and removes the placement group
once the controller is gone. After a normal finish the controller has already
removed it, and the watchdog just exits.

It acts only where it is needed and only where it was tested, because it
plugs into Ray Train's internal callback interfaces:

* on a Ray version ``mlp.distributed.ray_compat`` was not written for it is an inert
  ``ray.train.UserCallback`` and nothing internal is imported;
* on a supported Ray it asks, once per run in the controller, the State API question
  Ray's cleaner will ask (is this controller alive?) through the same address
  auto-detection. Answered: Ray's cleaner does the job and no watchdog starts.
  An error (the dashboard is off: nothing serves the State API), a cluster
  that does not know this controller, or no answer within ``PROBE_TIMEOUT_S``:
  the watchdog starts. (A dashboard-off cluster cannot be told apart cheaply:
  Ray registers a dashboard address for it all the same.)
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

import ray

from mlp.distributed.ray_compat import RAY_SERIES, supported, train_controller_callback_bases, worker_group_placement_group

log = logging.getLogger(__name__)
PING_INTERVAL_S = 1.0
PING_TIMEOUT_S = 30.0  # a controller busy for longer than this is still treated as alive
PROBE_TIMEOUT_S = 8.0  # the State API question; its address lookup alone can retry for 40 s


_BASES = train_controller_callback_bases()  # another Ray: a UserCallback with no hooks, trusting Ray's cleaner


def _state_api_sees(actor_id: str) -> Optional[str]:
    """None if the auto-detected State API knows ``actor_id`` as not dead, else what went wrong.

    Asked exactly as Ray's ``PlacementGroupCleaner`` asks (``get_actor`` without an address),
    in a daemon thread, because a wrong address can keep the client retrying for a long time.
    """
    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            from ray.util.state import get_actor

            state = get_actor(actor_id, timeout=5)
            answer["state"] = state.state if state is not None else "unknown to that cluster"
        except Exception as err:  # noqa: BLE001  (any failure means Ray's cleaner fails the same way)
            answer["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"

    thread = threading.Thread(target=ask, name="release-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    if "error" in answer:
        return f"the State API that Ray's cleaner auto-detects fails: {answer['error']}"
    if "state" not in answer:
        return f"the State API that Ray's cleaner auto-detects did not answer within {PROBE_TIMEOUT_S:g}s"
    # Ray's cleaner counts any state but DEAD as alive (ray.train.v2's is_actor_alive); a controller
    # still finishing its own creation reads PENDING_CREATION here, which is this cluster all the same.
    if answer["state"] == "DEAD" or answer["state"] == "unknown to that cluster":
        return (f"the State API that Ray's cleaner auto-detects reports this live controller as "
                f"{answer['state']}: it is another cluster's")
    return None


def decide() -> tuple[bool, str]:
    """(start watchdogs?, why), for the Ray actor this runs in (the Train controller).

    Call it inside an actor: the question is whether the State API sees *this* actor.
    """
    if not supported():
        return False, (f"Ray {ray.__version__} is not a version tune.release was written for "
                       f"({RAY_SERIES}x); relying on Ray Train's own PlacementGroupCleaner")
    actor_id = ray.get_runtime_context().get_actor_id()
    if actor_id is None:
        return True, "not running in an actor, so the State API cannot be checked"
    problem = _state_api_sees(actor_id)
    if problem is not None:
        return True, problem
    return False, "the State API answers Ray Train's own PlacementGroupCleaner, which frees stopped workers"


@ray.remote(num_cpus=0, max_restarts=0)
class _Watchdog:
    """Removes ``placement_group`` once ``controller`` has died, then exits.

    The watch starts in the constructor, not in a method call: a call made by a controller
    that dies while this actor is still being created is dropped, and the watchdog would idle forever.
    """

    def __init__(self, controller: Any, placement_group: Any) -> None:
        threading.Thread(target=self._watch, args=(controller, placement_group), daemon=True).start()

    def _watch(self, controller: Any, placement_group: Any) -> None:
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
        except Exception:  # noqa: BLE001  (log it: the kill below would hide it)
            log.exception("could not remove placement group %s", placement_group.id.hex())
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)  # detached: nobody else ends it


class ReleaseStoppedWorkers(*_BASES):  # type: ignore[misc]
    """Runs in the Train controller: watch each worker group's placement group from outside, if needed.

    The State API question runs in a thread from controller start, so it overlaps the worker
    group's start instead of delaying it. On a Ray version ``ray_compat`` does not support this is
    a plain ``UserCallback`` with no hooks.
    """

    def __init__(self) -> None:
        self._controller: Any = None
        self._decision: dict[str, Any] = {}
        self._deciding: Optional[threading.Thread] = None
        self._told = False

    def after_controller_start(self, train_run_context: Any) -> None:
        self._controller = ray.get_runtime_context().current_actor
        self._deciding = threading.Thread(target=self._decide, name="release-decide", daemon=True)
        self._deciding.start()

    def _decide(self) -> None:
        try:
            active, why = decide()
        except Exception as err:  # noqa: BLE001  (undecided: watch, which is always safe)
            active, why = True, f"the State API check failed ({type(err).__name__}: {err})"
        self._decision.update(active=active, why=why)

    @property
    def active(self) -> bool:
        """Whether this run's worker groups get watchdogs; waits for the decision (at most the probe's time)."""
        if self._deciding is None:  # the controller hook never ran: nothing to watch from
            return False
        if not self._told:
            self._deciding.join(PROBE_TIMEOUT_S + 2.0)
            if "active" not in self._decision:
                self._decision.update(active=True, why="the State API check did not finish")
            if self._decision["active"]:
                log.warning("tune.release: watching for stopped Train workers myself, because %s",
                            self._decision["why"])
            else:
                log.info("tune.release: no watchdog: %s", self._decision["why"])
            self._told = True
        return bool(self._decision["active"])

    def after_worker_group_start(self, worker_group: Any) -> None:
        if not self.active:
            return
        placement_group = worker_group_placement_group(worker_group)
        # Detached, and outside the trial's placement group (Tune captures child actors
        # into it and kills them all when the trial stops): it must outlive both.
        _Watchdog.options(lifetime="detached", scheduling_strategy="DEFAULT").remote(self._controller, placement_group)
