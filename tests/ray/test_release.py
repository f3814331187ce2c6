"""tune.release: its watchdog frees a stopped trial's Train workers only where Ray's own cleaner cannot.

A Tune trial that runs a TorchTrainer owns the Train controller; when Tune stops the trial it
kills the trial's actor, and the placement group holding the workers' CPUs outlives it. Ray
Train 2.60's PlacementGroupCleaner frees it if the State API it auto-detects sees the dead
controller. Each test here plays Tune: an actor runs a TorchTrainer, is killed after the first
epoch, and the test watches the run's placement group. Three situations:

* this cluster's State API answers Ray's cleaner: no watchdog, Ray frees the group;
* the cleaner's State API is not this cluster's (here: ``RAY_API_SERVER_ADDRESS`` at a closed
  port; on a shared machine, the newest other cluster): without the callback the group stays,
  with it the watchdog frees it;
* the dashboard is off (its own cluster, in a subprocess): the watchdog frees it;

and Ray versions other than 2.60.x, where the callback is an inert UserCallback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import ray
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group
from ray.util.state import list_actors

from mlp.distributed.runfiles import RunFiles
from mlp.distributed import ray_compat
from tune import release

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def trial_actor():
    """An actor that trains like a Tune trial (it owns the Train controller); defined here so Ray ships it by value."""

    @ray.remote(num_cpus=0.01, max_restarts=0)
    class TrialLike:
        def decide(self) -> tuple[bool, str]:
            from tune.release import decide

            return decide()

        def train(self, config: dict, with_release: bool) -> None:
            from mlp.config import Config
            from mlp.distributed.trainer import build_trainer
            from tune.release import ReleaseStoppedWorkers

            callbacks = [ReleaseStoppedWorkers()] if with_release else []
            build_trainer(Config.from_dict(config), callbacks=callbacks).fit()

    return TrialLike


def live_groups() -> set[str]:
    return {pg for pg, info in placement_group_table().items() if info["state"] != "REMOVED"}


def actor_ids(class_name: str) -> set[str]:
    return {a.actor_id for a in list_actors(address=ray.get_runtime_context().gcs_address, limit=10_000,
                                            filters=[("class_name", "=", class_name)], raise_on_missing_output=False)}


def stop_like_tune(config_factory, name: str, env: dict[str, str], with_release: bool,
                   wait_s: float) -> tuple[tuple[bool, str], Optional[float], str]:
    """Train in a trial-like actor with ``env``, kill the actor after epoch 1, watch the run's placement group.

    Returns (the actor's release decision, seconds until the group was removed or None, the group id).
    """
    cfg = config_factory(data={"synthetic_size": 8000}, train={"epochs": 50}, run={"name": name})
    files = RunFiles(cfg.run.storage_path, name)
    owner = trial_actor().options(runtime_env={"env_vars": env}).remote()
    try:
        decision = ray.get(owner.decide.remote(), timeout=60)
        before = live_groups()
        owner.train.remote(cfg.to_dict(), with_release)
        deadline = time.monotonic() + 180
        while not files.read_metrics() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert files.read_metrics(), "the run never finished an epoch"
        (group,) = live_groups() - before
    finally:
        ray.kill(owner, no_restart=True)  # what Tune does to a trial it stops
    killed = time.monotonic()
    while group in live_groups() and time.monotonic() - killed < wait_s:
        time.sleep(0.1)
    freed = None if group in live_groups() else time.monotonic() - killed
    return decision, freed, group


def remove_leftover(group: str) -> None:
    remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group))))


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """Seconds from the kill to the freed placement group; merged into <basetemp>/fault_figures.json."""
    found: dict[str, Any] = {}
    yield found
    path = tmp_path_factory.getbasetemp() / "fault_figures.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**old, **found}, indent=2))


def test_supported_versions() -> None:
    assert ray_compat.supported() == ray.__version__.startswith("2.60.")
    assert ray_compat.supported("2.60.0") and ray_compat.supported("2.60.7")
    assert not any(ray_compat.supported(v) for v in ("2.6.0", "2.61.0", "2.600.1", "3.60.0", "2.59.9"))
    hooks = {"ControllerCallback", "WorkerGroupCallback"} <= {c.__name__ for c in release.ReleaseStoppedWorkers.__mro__}
    assert hooks == ray_compat.supported()  # the installed Ray (the project pins 2.60.*) gets the real callback


def test_other_ray_versions_get_an_inert_callback() -> None:
    """On a Ray it was not written for, the callback is a plain UserCallback: tune.release takes nothing
    from Ray Train's internal modules and decides to leave the job to Ray's own cleaner."""
    script = textwrap.dedent("""
        import json, sys, ray
        ray.__version__ = "2.61.0"  # what a newer Ray would report
        from tune import release
        from ray.train import UserCallback
        cls = release.ReleaseStoppedWorkers
        print(json.dumps({"mro": [c.__name__ for c in cls.__mro__], "user": issubclass(cls, UserCallback),
                          "decide": release.decide(),
                          "internal": sorted(set(vars(release)) & {"ControllerCallback", "WorkerGroupCallback"})}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["user"] and not {"ControllerCallback", "WorkerGroupCallback"} & set(found["mro"]), found
    assert found["internal"] == [], found
    active, why = found["decide"]
    assert active is False and "Ray 2.61.0 is not a version tune.release was written for (2.60.x)" in why


def test_state_api_answers_so_ray_frees_the_workers_and_no_watchdog_starts(config_factory, figures) -> None:
    """The cleaner's State API is this cluster's (``RAY_ADDRESS`` says so, whatever else runs on the
    machine): the callback starts no watchdog, and Ray's own cleaner frees the killed trial's workers."""
    watchdogs = actor_ids("_Watchdog")
    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    decision, freed, group = stop_like_tune(config_factory, "answered", env, with_release=True, wait_s=30)
    if freed is None:
        remove_leftover(group)
    assert decision == (False, "the State API answers Ray Train's own PlacementGroupCleaner, which frees "
                               "stopped workers"), decision
    assert freed is not None, "Ray's own cleaner did not free the stopped trial's workers"
    assert actor_ids("_Watchdog") == watchdogs, "a watchdog started although Ray's cleaner works"
    figures["stopped trial, State API answers: Ray's cleaner frees the workers"] = {"freed_after_s": round(freed, 1)}
    print(f"\n[release] State API answers: Ray's cleaner freed the workers {freed:.1f}s after the kill")


def test_blind_cleaner_leaves_the_workers_and_the_watchdog_frees_them(config_factory, figures) -> None:
    """The cleaner's State API is not this cluster's: without the callback the killed trial's placement
    group stays (the trap); with it, the decision says why and a watchdog frees the group."""
    env = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{closed_port()}"}
    cleaners = actor_ids("PlacementGroupCleaner")
    _, freed, group = stop_like_tune(config_factory, "blind-plain", env, with_release=False, wait_s=8)
    if freed is None:
        remove_leftover(group)
    assert freed is None, "Ray's cleaner freed the group although its State API is unreachable: no trap to test"

    watchdogs = actor_ids("_Watchdog")
    (active, why), freed, group = stop_like_tune(config_factory, "blind-released", env, with_release=True, wait_s=30)
    if freed is None:
        remove_leftover(group)
    assert active and why.startswith("the State API that Ray's cleaner auto-detects fails: ServerUnavailable"), why
    assert freed is not None, "the watchdog did not free the stopped trial's workers"
    assert len(actor_ids("_Watchdog") - watchdogs) == 1
    figures["stopped trial, cleaner's State API elsewhere: watchdog frees the workers"] = {
        "freed_after_s": round(freed, 1), "without_watchdog": "still held 8 s after the kill"}
    print(f"\n[release] blind cleaner: the watchdog freed the workers {freed:.1f}s after the kill")
    # Ray's blind cleaners (one per run) wait forever for an answer; they are this test's, so end them.
    for actor in list_actors(address=ray.get_runtime_context().gcs_address, raise_on_missing_output=False,
                             filters=[("class_name", "=", "PlacementGroupCleaner"), ("state", "=", "ALIVE")]):
        if actor.actor_id not in cleaners and actor.pid:
            os.kill(actor.pid, signal.SIGKILL)


def test_dashboard_off_the_watchdog_frees_the_workers(tmp_path: Path, figures) -> None:
    """Its own cluster without the dashboard (nothing serves the State API): the callback decides to
    watch, and frees the killed trial's workers. (The sweep-level trap is in tests/ray/test_tune.py.)"""
    script = textwrap.dedent(f"""
        import json, time, ray
        from ray.util.placement_group import placement_group_table
        ray.init(address="local", num_cpus=2, include_dashboard=False)  # never a cluster started elsewhere
        from mlp.config import Config
        from mlp.distributed.runfiles import RunFiles

        @ray.remote(num_cpus=0.01, max_restarts=0)
        class TrialLike:
            def decide(self):
                from tune.release import decide
                return decide()

            def train(self, config):
                from mlp.distributed.trainer import build_trainer
                from tune.release import ReleaseStoppedWorkers
                build_trainer(Config.from_dict(config), callbacks=[ReleaseStoppedWorkers()]).fit()

        live = lambda: {{pg for pg, v in placement_group_table().items() if v["state"] != "REMOVED"}}
        cfg = Config.from_dict({{"data": {{"dataset": "synthetic", "synthetic_size": 8000}}, "train": {{"epochs": 50}},
                                "run": {{"storage_path": {str(tmp_path / "runs")!r}, "name": "no-dashboard"}}}})
        # RAY_ADDRESS: the cleaner asks this cluster (not the newest one on the machine), so only the
        # missing dashboard can make it fail.
        here = {{"RAY_ADDRESS": ray.get_runtime_context().gcs_address}}
        owner = TrialLike.options(runtime_env={{"env_vars": here}}).remote()
        decision = ray.get(owner.decide.remote())
        owner.train.remote(cfg.to_dict())
        files = RunFiles(cfg.run.storage_path, "no-dashboard")
        deadline = time.time() + 180
        while not files.read_metrics() and time.time() < deadline:
            time.sleep(0.1)
        groups = live()
        ray.kill(owner, no_restart=True)
        killed = time.time()
        while live() and time.time() - killed < 30:
            time.sleep(0.1)
        print("RESULT", json.dumps({{"decision": decision, "epochs": len(files.read_metrics()), "groups": len(groups),
                                    "left": len(live()), "freed_after": time.time() - killed}}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    found: dict[str, Any] = json.loads(line[len("RESULT "):])
    active, why = found["decision"]
    assert active and why.startswith("the State API that Ray's cleaner auto-detects "), found
    assert found["epochs"] >= 1 and found["groups"] == 1, found
    assert found["left"] == 0, f"the stopped trial's workers were never released: {found}"
    freed = round(found["freed_after"], 1)
    figures["stopped trial, dashboard off: watchdog frees the workers"] = {"freed_after_s": freed}
    print(f"\n[release] dashboard off: the watchdog freed the workers {found['freed_after']:.1f}s after the kill")

