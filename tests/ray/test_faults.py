"""Faults injected for real on the shared session cluster: killed processes, damaged and hostile files.

Every Ray process killed here gets SIGKILL, by the pid that Ray's public State API (asked at
this cluster's own address) reports for it; every damaged file is a real file of a real run or
registry. What each test measures (epochs redone, extra seconds, failed requests, recovery
seconds) is printed (run with ``-s``) and written to ``<pytest basetemp>/fault_figures.json``;
docs/faults.md quotes the figures. Run alone: ``python -m pytest tests/ray/test_faults.py -s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import ray
import torch
from ray import serve
from ray.util.state import list_actors

from mlp.checkpoint import CheckpointError, UnsafeCheckpointError, load_model, save_checkpoint
from mlp.config import Config
from mlp.data import load_test
from mlp.model import build_model
from mlp.registry import list_versions, make_provenance, model_dir, promote, read_latest, resolve_version
from mlp.distributed.runfiles import RunFiles
from mlp.registry.storage import Location
from serve.app import DEPLOYMENT_NAME, build_from_config
from serve.options import http_options
from serve.predictor import ModelSource, load_predictor
from tune.tuner import run_sweep
from s3server import free_port  # tests/ is on sys.path while pytest runs

# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """What the tests measured; merged into <basetemp>/fault_figures.json at the end of the module."""
    found: dict[str, dict[str, Any]] = {}
    yield found
    path = tmp_path_factory.getbasetemp() / "fault_figures.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**old, **found}, indent=2))
    print(f"\nfault figures ({path}):\n{json.dumps(found, indent=2)}")


def record(figures: dict, name: str, **values: Any) -> None:
    figures[name] = values
    print(f"\n[fault figures] {name}: {json.dumps(values)}", flush=True)


def alive_actors(class_name: str) -> list[Any]:
    """ALIVE actors of this driver's job with that class, from the State API of *this* cluster."""
    job = ray.get_runtime_context().get_job_id()
    return list_actors(address=ray.get_runtime_context().gcs_address, raise_on_missing_output=False,
                       filters=[("class_name", "=", class_name), ("state", "=", "ALIVE"), ("job_id", "=", job)])


def all_actors(class_name: str) -> list[Any]:
    """Every actor of that class this cluster remembers, dead ones included (restarts leave a trail)."""
    return list_actors(address=ray.get_runtime_context().gcs_address, raise_on_missing_output=False,
                       filters=[("class_name", "=", class_name)], limit=10_000)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False



# ---------------------------------------------------------------- 1. a Ray Train worker is killed

TRAIN = {"data.synthetic_size": 24000, "train.epochs": 4, "scaling.num_workers": 2,
         "scaling.cpus_per_worker": 0.5, "optim.lr": 0.002, "run.max_failures": 1}


def train_config(config_factory, name: str) -> Config:
    sections: dict[str, dict[str, Any]] = {"run": {"name": name}}
    for key, value in TRAIN.items():
        section, field = key.split(".")
        sections.setdefault(section, {})[field] = value
    return config_factory(**sections)


class TrainDriver:
    """``python -m mlp.train`` for one run, as its own Ray job on this cluster; its output is kept."""

    def __init__(self, cfg: Config) -> None:
        self.files = RunFiles(cfg.run.storage_path, str(cfg.run.name))
        argv = [sys.executable, "-m", "mlp.train", "--data.dataset", "synthetic", "--run.name", str(cfg.run.name),
                "--run.storage_path", cfg.run.storage_path]
        for key, value in TRAIN.items():
            argv += [f"--{key}", str(value)]
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token"}
        self.process = subprocess.Popen(argv, env=env, cwd=Path(__file__).resolve().parents[2], text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def finish(self, timeout: float) -> dict[str, Any]:
        code = self.process.wait(timeout=timeout)
        self._reader.join(10)
        assert code == 0, "".join(self.lines[-40:])
        return self.files.read_summary()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def workers_by_rank(self) -> list[Any]:
        """This run's two live Train workers, rank 0 first.

        The run's Ray job is in its attempt.json and the State API lists that job's workers with
        their pids; rank 0 alone prints the per-epoch progress line (``mlp.distributed.train_worker``),
        which Ray forwards to this driver's output tagged with the worker's pid.
        """
        job = self.files.read_attempt().job_id
        workers = list_actors(address=ray.get_runtime_context().gcs_address, raise_on_missing_output=False,
                              filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE"),
                                       ("job_id", "=", job)])
        assert len(workers) == 2, workers
        pattern = re.compile(r"RayTrainWorker pid=(\d+)\)\S*\s+epoch +1/")
        printed = wait_for(lambda: {int(m.group(1)) for line in list(self.lines) if (m := pattern.search(line))},
                           30, "rank 0's first progress line in the driver's output")
        assert len(printed) == 1 and printed <= {w.pid for w in workers}, (printed, workers)
        return sorted(workers, key=lambda w: w.pid not in printed)


def test_killed_training_worker_costs_at_most_one_epoch(config_factory, figures) -> None:
    """SIGKILL rank 1 of 2 in epoch 2 with run.max_failures 1: Train restarts the worker group from
    the epoch-1 checkpoint, the run ends with every epoch once, and it computes exactly what the same
    run computes uninterrupted (run beside it, as another Ray job): synthetic data, a seeded split,
    seeded shuffles and initial weights, one thread per worker and the optimizer state in the
    checkpoint make the resumed epochs the same arithmetic."""
    workers_before = len(all_actors("RayTrainWorker"))
    clean_run = TrainDriver(train_config(config_factory, "clean"))
    killed_run = TrainDriver(train_config(config_factory, "killed-worker"))
    try:
        wait_for(killed_run.files.read_metrics, 240, "the first epoch of the run")
        victim = killed_run.workers_by_rank()[1]  # a State API query: it can take as long as an epoch
        seen = killed_run.files.read_metrics()  # the epochs done when the kill comes, read just before it
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        summary, clean = killed_run.finish(240), clean_run.finish(240)
    finally:
        killed_run.stop()
        clean_run.stop()
    assert pid_gone(victim.pid)

    history = killed_run.files.read_metrics()
    assert [m["epoch"] for m in history] == [1, 2, 3, 4] and summary["epochs"] == 4
    kept = [m for m in history if m["timestamp"] < killed_at]  # restored from the checkpoint, not retrained
    assert kept == seen[:len(kept)] and len(kept) >= len(seen) >= 1
    assert all(m["timestamp"] > killed_at for m in history[len(kept):])
    # The kill came before epoch len(seen)+1 could end (sooner after the last line than any epoch
    # took): that epoch was in progress, and it is the one (at most) that was trained twice.
    assert killed_at - seen[-1]["timestamp"] < min(m["epoch_s"] for m in history)
    redone = len(seen) + 1 - len(kept)
    assert 0 <= redone <= 1
    # Both runs' two workers, plus two replacements: the group was restarted; the run did not just fail.
    assert len(all_actors("RayTrainWorker")) - workers_before >= 6

    assert abs(summary["test_accuracy"] - clean["test_accuracy"]) <= 0.01
    assert 0.2 < clean["test_accuracy"] < 0.99  # neither chance nor saturated: a difference would show
    for resumed, uninterrupted in zip(history, clean_run.files.read_metrics(), strict=True):
        assert resumed["val_loss"] == pytest.approx(uninterrupted["val_loss"], rel=1e-6)
    record(figures, "training worker killed (rank 1 of 2, SIGKILL in epoch 2)",
           epochs_redone=redone, resumed_after_epoch=len(kept),
           lost_training_seconds=round(killed_at - kept[-1]["timestamp"], 2),
           extra_wall_seconds=round(summary["wall_seconds"] - clean["wall_seconds"], 1),
           wall_seconds=round(summary["wall_seconds"], 1), clean_wall_seconds=round(clean["wall_seconds"], 1),
           test_accuracy=summary["test_accuracy"], clean_test_accuracy=clean["test_accuracy"])


# ---------------------------------------------------------------- 2. a Tune trial's process is killed


def result_lines(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def kill_trial_mid_way(sweep: Path, epochs: int, out: dict[str, Any]) -> None:
    """Background thread: SIGKILL the trial's process once a trial has reported its first epoch but
    not its last but one (Tune writes result.json from its own loop, a little behind the trial).

    One trial at a time (``tune.max_concurrent 1``). The process is the one Tune's own result row
    names (``pid``): asking the State API for the actor took seconds under load, and the sweep
    could end before the answer came.
    """
    try:
        def mid_way() -> Any:
            for trial in sorted(sweep.glob("trial_*")):
                lines = result_lines(trial)
                if 1 <= len(lines) < epochs - 1:
                    return trial, lines
            return None

        trial, lines = wait_for(mid_way, 240, "a trial between its first and its last epochs", every=0.02)
        pid = int(lines[-1]["pid"])
        os.kill(pid, signal.SIGKILL)
        out.update(trial=trial.name, pid=pid, at=time.time(), seen=[m["epoch"] for m in lines])
    except BaseException as err:  # noqa: BLE001
        out["error"] = repr(err)


def test_killed_trial_is_retried_from_its_checkpoint(config_factory, figures) -> None:
    """SIGKILL a trial's actor mid-trial with run.max_failures 1: Tune retries that trial in a new
    process from its last checkpoint (its epochs continue; epoch 1 is not run again) and every
    trial of the sweep finishes. Tune's own result rows say which process reported each epoch."""
    epochs, samples = 6, 3
    cfg = config_factory(
        data={"synthetic_size": 48000}, train={"epochs": epochs, "batch_size": 16},
        tune={"num_samples": samples, "early_stopping": False, "max_concurrent": 1,
              "space": {"model.hidden_sizes": "choice:64,128", "optim.lr": "loguniform:0.001:0.01"}},
        run={"name": "killed-trial", "max_failures": 1},
    )
    sweep = Path(cfg.run.storage_path) / "killed-trial"
    kill: dict[str, Any] = {}
    killer = threading.Thread(target=kill_trial_mid_way, args=(sweep, epochs, kill), daemon=True)
    killer.start()
    summary = run_sweep(cfg, promote=False)
    killer.join(10)
    assert "error" not in kill and "pid" in kill, kill
    assert pid_gone(kill["pid"])

    rows = json.loads((sweep / "trials.json").read_text())
    ids = [r["trial_id"] for r in rows]
    assert len(rows) == samples == len(set(ids)) == summary["trials"] and summary["errors"] == 0
    assert all(r["status"] == "finished" and r["epochs"] == epochs for r in rows), rows
    for row in rows:
        assert sorted({m["epoch"] for m in result_lines(Path(row["path"]))}) == list(range(1, epochs + 1))

    lines = result_lines(sweep / kill["trial"])
    before = [m for m in lines if m["pid"] == kill["pid"]]
    after = [m for m in lines if m["pid"] != kill["pid"]]
    assert [m["epoch"] for m in before][:len(kill["seen"])] == kill["seen"]
    assert len(before) < epochs and after, "the kill did not land mid-trial, or the trial was not retried"
    resumed_at = after[0]["epoch"]
    assert after[0]["iterations_since_restore"] == 1  # a restored trial, in a new process
    assert resumed_at > 1, "the retried trial started from scratch"
    assert [m["epoch"] for m in after] == list(range(resumed_at, epochs + 1))
    reported_twice = len(before) - resumed_at + 1
    assert 0 <= reported_twice <= 1
    record(figures, "Tune trial actor killed (SIGKILL mid-trial)",
           trials=len(rows), finished=sum(r["status"] == "finished" for r in rows),
           killed_after_epoch=before[-1]["epoch"], resumed_at_epoch=resumed_at,
           epochs_redone=1 + reported_twice,  # the epoch in progress, plus any reported epoch trained again
           seconds_to_next_epoch=round(after[0]["timestamp"] - kill["at"], 1),
           sweep_wall_seconds=round(summary["wall_seconds"], 1))


# ---------------------------------------------------------------- models and registries for Serve


def make_checkpoint(tmp: Path, name: str, seed: int, width: int = 32, **serve_keys: Any) -> tuple[Path, Config]:
    """A small synthetic-data model saved as a checkpoint (weights seeded, not trained: Serve only loads it)."""
    cfg = Config.from_dict({
        "data": {"dataset": "synthetic", "seed": seed}, "model": {"hidden_sizes": [width]},
        "run": {"storage_path": str(tmp / "runs")}, "registry": {"path": str(tmp / "registry")},
        "serve": {"port": free_port(), "health_check_period_s": 1.0, **serve_keys}})
    model = build_model(cfg.model, seed=seed)
    return save_checkpoint(tmp / name, model, cfg, {"epoch": 0}), cfg


def replica_ids(app: str) -> set[str]:
    """Serve's ids of the app's live replicas, from the State API (each replica actor is named ...#<id>)."""
    return {a.name.rsplit("#", 1)[-1] for a in alive_actors(f"ServeReplica:{app}:{DEPLOYMENT_NAME}")}


def point_latest(root: Path, version: str) -> None:
    """Move ``latest`` the way a promotion does (an atomic pointer-file replace), to any name."""
    (Location.of(root) / "mlp" / "latest").write_text(f"{version}\n")


class Planted:
    """Unpickling this runs ``touch marker``: what an attacker would plant as model.pt."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


def plant_pickle(path: Path, marker: Path, form: str) -> None:
    """Write a hostile model.pt: a bare pickle, or a torch.save archive whose data.pkl is the same payload."""
    if form == "plain pickle":
        path.write_bytes(pickle.dumps(Planted(marker), protocol=2))
    else:
        torch.save(Planted(marker), path)


def planted_version(root: Path, source: Path, version: str, damage: Callable[[Path], None]) -> Path:
    """A copy of a good version, damaged, under a new version name (a registry damaged after the fact)."""
    folder = model_dir(root, "mlp") / version
    shutil.copytree(source, folder)
    damage(folder)
    return folder


# ---------------------------------------------------------------- 3. a Serve replica is killed under load


def test_killed_replica_under_load_loses_at_most_one_percent(tmp_path: Path, figures) -> None:
    """Two replicas, four clients sending for ~15 s; one replica SIGKILLed after 4 s. At most 1% of
    requests fail, Serve has a healthy replacement within 30 s, and every request sent after that is a 200."""
    checkpoint, cfg = make_checkpoint(tmp_path, "ckpt", seed=0, min_replicas=2, max_replicas=2)
    promote(cfg.registry.path, "mlp", checkpoint, {}, make_provenance(cfg, str(checkpoint)))
    serve.start(http_options=http_options(cfg.serve))
    try:
        serve.run(build_from_config(cfg), name="faults", route_prefix="/")
        replica_class = f"ServeReplica:faults:{DEPLOYMENT_NAME}"
        replicas = wait_for(lambda: len(found := alive_actors(replica_class)) == 2 and found, 30, "2 replicas")
        x, _ = load_test(cfg.data)
        body = json.dumps(x[0].tolist())
        results: list[tuple[float, int]] = []  # (sent at, status; 0 = no HTTP answer)
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{cfg.serve.port}", timeout=10) as http:
                while not stop.is_set():
                    sent = time.time()
                    try:
                        status = http.post("/predict", content=body,
                                           headers={"content-type": "application/json"}).status_code
                    except httpx.HTTPError:
                        status = 0
                    results.append((sent, status))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(4.0)
            victim = replicas[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.time()

            def replaced() -> bool:
                alive = {r.actor_id for r in alive_actors(replica_class)}
                app = serve.status().applications["faults"]
                running = app.deployments[DEPLOYMENT_NAME].replica_states.get("RUNNING", 0)
                return running == 2 and len(alive) == 2 and victim.actor_id not in alive

            wait_for(replaced, 30, "a healthy replacement replica", every=0.1)
            recovered_at = time.time()
            # ~15 s of load in all, and always a few seconds of it after the recovery
            time.sleep(max(3.0, killed_at + 11.0 - time.time()))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert pid_gone(victim.pid)
        failed = [(t, s) for t, s in results if s != 200]
        after = [s for t, s in results if t > recovered_at]
        assert len(results) > 200, f"only {len(results)} requests were sent"
        assert len(failed) <= 0.01 * len(results), (len(failed), len(results), failed[:10])
        assert after and all(s == 200 for s in after), [s for s in after if s != 200][:10]
        record(figures, "Serve replica killed under load (1 of 2, SIGKILL, 4 clients)",
               failed_requests=len(failed), total_requests=len(results),
               failed_percent=round(100 * len(failed) / len(results), 3),
               failed_statuses=sorted({s for _, s in failed}),
               recovery_seconds=round(recovered_at - killed_at, 1), requests_after_recovery=len(after))
    finally:
        serve.shutdown()


# ---------------------------------------------------------------- 4 and 6. damaged and hostile model files


@pytest.fixture
def good_registry(tmp_path: Path) -> tuple[Path, Path, Config]:
    """A registry with a good v1: (registry root, v1 folder, its config)."""
    checkpoint, cfg = make_checkpoint(tmp_path, "ckpt", seed=0)
    v1 = promote(cfg.registry.path, "mlp", checkpoint, {"test_accuracy": 0.5}, make_provenance(cfg, "v1"))
    return Path(cfg.registry.path), Path(v1), cfg


def test_damaged_artifacts_fail_naming_the_file(good_registry) -> None:
    """Truncated model.pt, deleted config.json, ``latest`` pointing at a missing version: each loader
    that can see the damage fails with an error naming the damaged file; undamaged, all of them load."""
    root, v1, _ = good_registry
    source = ModelSource(str(root), "mlp")
    assert source.resolve() == v1.resolve() and load_predictor(source).version == "v1" and load_model(v1)

    truncated = planted_version(root, v1, "v2", truncate_weights)
    point_latest(root, "v2")
    assert source.resolve() == truncated.resolve()  # the folder is whole; its weights file is not
    for load in (lambda: load_model(truncated), lambda: load_predictor(source)):
        with pytest.raises(CheckpointError, match=re.escape(f"{truncated / 'model.pt'} is corrupt (truncated")):
            load()

    no_config = planted_version(root, v1, "v3", lambda f: (f / "config.json").unlink())
    point_latest(root, "v3")
    with pytest.raises(FileNotFoundError, match=re.escape(f"config.json is missing ({no_config / 'config.json'})")):
        load_model(no_config)
    for load in (lambda: load_predictor(source), source.resolve):
        with pytest.raises(FileNotFoundError, match=re.escape(f"config.json missing ({no_config / 'config.json'})")):
            load()

    point_latest(root, "v9")
    for load in (lambda: load_predictor(source), source.resolve):
        with pytest.raises(FileNotFoundError, match=re.escape(
                f"{root / 'mlp' / 'latest'} points at v9, but {root / 'mlp' / 'v9'} does not exist "
                f"(complete versions: v1, v2, v3)")):
            load()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "mlp" / "v9" / "model.pt"))):
        load_model(root / "mlp" / "v9")


def truncate_weights(folder: Path) -> None:
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[:len(data) // 3])  # a copy that died a third of the way


@pytest.mark.parametrize("form", ["plain pickle", "torch.save archive"])
def test_malicious_pickle_is_refused_and_never_run(good_registry, tmp_path: Path, form: str) -> None:
    """A model.pt whose unpickling would run ``touch marker`` is refused with a clear error by
    load_model and load_predictor, and the marker never appears; the same file, loaded the unsafe
    way, does create its marker (the payload is live, so the test can fail)."""
    root, v1, _ = good_registry
    proof = tmp_path / "proof-marker"
    plant_pickle(tmp_path / "proof.pt", proof, form)
    with contextlib.suppress(Exception):  # a bare pickle runs, then torch finds no archive
        torch.load(tmp_path / "proof.pt", weights_only=False)  # what a careless loader would do
    assert proof.exists(), "the planted pickle is not live; the test would prove nothing"

    marker = tmp_path / "marker"
    evil = planted_version(root, v1, "v2", lambda folder: plant_pickle(folder / "model.pt", marker, form))
    point_latest(root, "v2")
    for load in (lambda: load_model(evil), lambda: load_predictor(ModelSource(str(root), "mlp"))):
        with pytest.raises(UnsafeCheckpointError, match=re.escape(f"{evil / 'model.pt'} refused: not a plain "
                                                                  f"tensor file") + ".*nothing in it was run"):
            load()
    assert not marker.exists()


def test_hot_swap_to_broken_versions_is_refused_and_v1_keeps_serving(tmp_path: Path, figures) -> None:
    """Through the real Serve app: ``latest`` moves to a truncated model.pt, a version without
    config.json, a hostile pickle and a version that does not exist. Each /admin/reload is refused,
    /model still says v1, /predict answers 200 with v1's prediction, /readyz and /model name the
    damaged file, the hostile pickle never runs, and the same replica serves throughout. A good
    promotion afterwards still swaps (the refusals were the damage, not a broken reload)."""
    checkpoint, cfg = make_checkpoint(tmp_path, "ckpt", seed=0, min_replicas=1, max_replicas=1)
    root = Path(cfg.registry.path)
    v1 = Path(promote(root, "mlp", checkpoint, {"test_accuracy": 0.5}, make_provenance(cfg, "v1")))
    x, _ = load_test(cfg.data)
    offline = {"v1": load_predictor(v1)}
    marker = tmp_path / "marker"
    broken = {
        "v2": (truncate_weights, f"{root / 'mlp' / 'v2' / 'model.pt'} is corrupt (truncated"),
        "v3": (lambda f: (f / "config.json").unlink(),
               f"config.json missing ({root / 'mlp' / 'v3' / 'config.json'})"),
        "v4": (lambda f: plant_pickle(f / "model.pt", marker, "plain pickle"),
               f"{root / 'mlp' / 'v4' / 'model.pt'} refused: not a plain tensor file"),
        "v9": (None, f"{root / 'mlp' / 'latest'} points at v9, but"),
    }
    serve.start(http_options=http_options(cfg.serve))
    try:
        serve.run(build_from_config(cfg), name="swap", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{cfg.serve.port}", timeout=30) as http:
            (replica,) = wait_for(lambda: len(ids := replica_ids("swap")) == 1 and ids, 30, "the replica")
            # HAProxy may route a request or two by a stale table at first (Serve's direct-ingress ports
            # are shared by every Ray cluster on the machine): wait until our replica answers.
            wait_for(lambda: http.get("/readyz").json().get("replica") == replica, 30, "our replica to answer")
            for version, (damage, words) in broken.items():
                if damage is not None:
                    planted_version(root, v1, version, damage)
                point_latest(root, version)
                reload = http.post("/admin/reload")
                assert reload.status_code == 200, reload.text
                assert (reload.json()["version"], reload.json()["changed"]) == ("v1", False), reload.json()
                problem = reload.json()["problem"]
                assert problem and words in problem, (version, problem)
                model = http.get("/model").json()
                assert model["version"] == "v1" and model["problem"] == problem
                ready = http.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert (ready.json()["version"], ready.json()["problem"]) == ("v1", problem)
                answer = http.post("/predict", json=x[0].tolist())
                assert answer.status_code == 200 and answer.json()["version"] == "v1", answer.text
                assert answer.json()["label"] == offline["v1"].predict(x[:1])[0]["label"]
            point_latest(root, "v4")  # the hostile file, left in place for several watcher ticks and health checks
            time.sleep(3.0)
            assert not marker.exists(), "the planted pickle ran in the replica"
            ready = http.get("/readyz").json()
            assert (ready["replica"], ready["version"]) == (replica, "v1") and "v4" in ready["problem"]
            assert replica_ids("swap") == {replica}, "the replica was replaced"

            second, _ = make_checkpoint(tmp_path, "ckpt2", seed=1, width=48)
            good = Path(promote(root, "mlp", second, {"test_accuracy": 0.6}, make_provenance(cfg, "good")))
            reload = http.post("/admin/reload").json()
            assert (reload["version"], reload["changed"], reload["problem"]) == (good.name, True, None), reload
            answer = http.post("/predict", json=x[0].tolist()).json()
            assert answer["version"] == good.name
            assert answer["probabilities"] == pytest.approx(load_predictor(good).predict(x[:1])[0]["probabilities"],
                                                            abs=1e-5)
        assert serve.status().applications["swap"].status == "RUNNING"
        record(figures, "hot swap to broken versions (truncated, no config.json, hostile pickle, missing)",
               refused=len(broken), replica_replaced=False, failed_predictions=0, hostile_pickle_ran=marker.exists())
    finally:
        serve.shutdown()


# ---------------------------------------------------------------- 5. a promotion is killed midway

PROMOTER = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    from mlp import registry

    root, source, signal_file = sys.argv[1:4]

    def stalling_copy(src, dst, *args, **kwargs):  # a copy that stops halfway, like a stalled disk or NFS
        data = Path(src).read_bytes()
        with open(dst, "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            os.fsync(out.fileno())
        Path(signal_file).write_text(str(dst))
        time.sleep(600)

    shutil.copy2 = stalling_copy
    registry.promote(root, "mlp", source, {"test_accuracy": 0.9}, {"trial_id": "killed"})
""")


def test_killed_promotion_leaves_no_partial_version(good_registry, tmp_path: Path, figures) -> None:
    """A promotion SIGKILLed halfway through copying model.pt (its copy stalls there, so the kill
    lands at a known point): while it hangs and after it dies, readers see v1 only and ``latest``
    is unchanged; the next promotion gets v2 and serves it."""
    root, v1, cfg = good_registry
    second, _ = make_checkpoint(tmp_path, "ckpt2", seed=1, width=48)
    signal_file = tmp_path / "copying"
    repo = Path(__file__).resolve().parents[2]
    promoter = subprocess.Popen([sys.executable, "-c", PROMOTER, str(root), str(second), str(signal_file)],
                                cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: signal_file.exists() or promoter.poll() is not None, 60, "the promotion to start copying")
        assert promoter.poll() is None, promoter.stderr.read().decode()[-2000:]
        partial = Path(signal_file.read_text())
        assert partial.parent.parent == root / "mlp" and partial.parent.name.startswith(".staging-")
        assert 0 < partial.stat().st_size < (second / "model.pt").stat().st_size
        during = (list_versions(root, "mlp"), read_latest(root, "mlp"), resolve_version(root, "mlp"))
    finally:
        promoter.send_signal(signal.SIGKILL)
        promoter.wait()
    assert promoter.returncode == -signal.SIGKILL
    assert during == ([1], "v1", v1)
    assert (list_versions(root, "mlp"), read_latest(root, "mlp"), resolve_version(root, "mlp")) == ([1], "v1", v1)
    assert load_predictor(ModelSource(str(root), "mlp")).version == "v1"
    names = sorted(p.name for p in (root / "mlp").iterdir())
    assert [n for n in names if not n.startswith(".")] == ["latest", "v1"]
    leftovers = [n for n in names if n.startswith(".")]

    v2 = Path(promote(root, "mlp", second, {"test_accuracy": 0.6}, make_provenance(cfg, "after the kill")))
    assert v2.name == "v2" and read_latest(root, "mlp") == "v2" and list_versions(root, "mlp") == [1, 2]
    assert leftovers and not [p.name for p in (root / "mlp").iterdir() if p.name.startswith(".")]  # tidied
    x = torch.rand(4, 784)
    expected, _ = load_model(second)
    served = load_predictor(ModelSource(str(root), "mlp"))
    assert served.version == "v2"
    assert torch.allclose(torch.as_tensor(served.predict_proba(x)), torch.softmax(expected(x), dim=1), atol=1e-6)
    record(figures, "promotion killed midway (SIGKILL halfway through model.pt)",
           versions_after_kill=[1], latest_after_kill="v1", next_promotion="v2",
           hidden_leftovers_after_kill=leftovers, hidden_leftovers_after_next_promotion=[])
