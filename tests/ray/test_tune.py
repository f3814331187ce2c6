"""Ray Tune sweeps on the shared local cluster: ASHA, promotion, resume, trial sizing, real accuracy."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray
import torch

from mlp.checkpoint import load_model
from mlp.data import load_test
from mlp.loop import evaluate
from mlp.registry import read_latest, resolve_version
from tune.sweep import main
from tune.tuner import SUMMARY_FILE, promote_finished, run_sweep

# Good learning rates first: grid trials start in order, so the bad ones reach ASHA's
# first rung after good ones have recorded there and are stopped.
LR_GRID = "choice:0.03,0.01,0.0001,0.00001,0.00002,0.00003"


def result_lines(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_asha_sweep_stops_trials_and_promotes_the_winner(config_factory) -> None:
    cfg = config_factory(
        train={"epochs": 4},
        tune={"space": {"optim.lr": LR_GRID}, "search": "grid", "grace_period": 1, "reduction_factor": 2},
        run={"name": "asha"},
    )
    summary = run_sweep(cfg)
    sweep = Path(cfg.run.storage_path) / "asha"
    rows = json.loads((sweep / "trials.json").read_text())
    assert len(rows) == 6 and summary["trials"] == 6
    # From Tune's own per-trial results, not just our table: someone stopped before max epochs.
    epochs_run = {r["trial_id"]: len(result_lines(Path(r["path"]))) for r in rows}
    assert {r["trial_id"]: r["epochs"] for r in rows} == epochs_run
    stopped = [t for t, n in epochs_run.items() if n < 4]
    assert stopped and summary["stopped_early"] == len(stopped)
    assert max(epochs_run.values()) == 4
    assert [r["rank"] for r in rows] == list(range(1, 7))
    assert rows[0]["best_val_accuracy"] == max(r["best_val_accuracy"] for r in rows)
    for name in ("trials.csv", "val_accuracy_vs_lr.png", "learning_curves.png"):
        assert (sweep / name).stat().st_size > 0
    assert (sweep / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert all(len(list(Path(r["path"]).glob("checkpoint_*"))) <= cfg.run.checkpoints_kept for r in rows)

    root, name = cfg.registry.path, cfg.registry.model_name
    v1 = resolve_version(root, name)
    assert v1.name == "v1" and read_latest(root, name) == "v1"
    metrics = json.loads((v1 / "metrics.json").read_text())
    provenance = json.loads((v1 / "provenance.json").read_text())
    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "epochs", "time_to_target_s",
                "time_to_best_val_s", "train_seconds"):
        assert key in metrics
    assert metrics["trial_id"] == rows[0]["trial_id"] == provenance["trial_id"]
    assert metrics["best_val_accuracy"] == pytest.approx(rows[0]["best_val_accuracy"])
    assert provenance["dataset"] == "synthetic" and provenance["seed"] == 0 and provenance["code_version"]
    assert set(provenance["libraries"]) >= {"torch", "torchvision", "ray"}
    assert set(json.loads((v1 / "config.json").read_text())) >= {"model", "optim", "data"}

    torch.load(v1 / "model.pt", weights_only=True)
    model, loaded = load_model(v1)
    assert loaded.optim.lr == float(metrics["hyperparameters"]["optim.lr"])
    x, y = load_test(loaded.data)
    assert model(x[:5]).shape == (5, 10)
    assert evaluate(model, x, y)[1] == pytest.approx(metrics["test_accuracy"])
    assert metrics["test_accuracy"] > 0.15  # chance is 0.1

    again = run_sweep(cfg)  # a finished sweep is reported, not re-run or re-promoted
    assert again["promoted"]["version"] == "v1" and resolve_version(root, name).name == "v1"
    promoted = promote_finished(cfg)
    assert promoted["version"] == "v2" and read_latest(root, name) == "v2"
    assert resolve_version(root, name, "v1").is_dir()


def _terminated(sweep: Path) -> set[str]:
    """Trial ids Tune's last experiment snapshot records as finished (what a restart sees)."""
    done = set()
    for state in sweep.glob("experiment_state-*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (ValueError, KeyError):  # caught mid-write
            continue
        for trial_json, _ in trials:
            trial = json.loads(trial_json)
            if trial["status"] == "TERMINATED":
                done.add(trial["trial_id"])
    return done


def test_killed_sweep_resumes_and_runs_every_trial_once(config_factory, tmp_path: Path) -> None:
    """The driver is SIGKILLed after two of five trials finished; --resume finishes the rest only.

    Trials last a few seconds each (24,000 samples), well beyond Tune's 2 s experiment snapshot,
    so the kill always lands while trials are left: with 1 s trials a quiet machine finished all five first.
    """
    args = ["--data.dataset", "synthetic", "--data.synthetic_size", "24000", "--train.epochs", "6",
            "--tune.num_samples", "5", "--tune.early_stopping", "false", "--tune.max_concurrent", "1",
            "--registry.path", str(tmp_path / "registry"), "--run.storage_path", str(tmp_path / "runs"),
            "--run.name", "resume", "--no-promote"]
    sweep = tmp_path / "runs" / "resume"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token"}
    driver = subprocess.Popen([sys.executable, "-m", "tune.sweep", *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while len(_terminated(sweep)) < 2 and time.time() < deadline:
            assert driver.poll() is None, "driver ended before two trials finished"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finished_before = _terminated(sweep)
    assert 2 <= len(finished_before) < 5, "the kill came too late to test resume"
    untouched = {t: hashlib.sha256((sweep / f"trial_{t}" / "result.json").read_bytes()).hexdigest()
                 for t in finished_before}

    assert main([*args, "--resume"]) == 0
    rows = json.loads((sweep / "trials.json").read_text())
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 5 and finished_before <= set(ids)
    for t, digest in untouched.items():  # finished trials were not run again
        assert hashlib.sha256((sweep / f"trial_{t}" / "result.json").read_bytes()).hexdigest() == digest
    for row in rows:
        lines = result_lines(Path(row["path"]))
        assert sorted({r["epoch"] for r in lines}) == list(range(1, 7))
        assert lines[-1]["training_iteration"] == 6 and row["epochs"] == 6 and row["status"] == "finished"


def test_trainer_trials_share_two_cpus_and_free_stopped_workers_without_dashboard(tmp_path: Path) -> None:
    """One TorchTrainer per trial on a 2-CPU cluster started with include_dashboard=False.

    Trap 1: trial drivers reserve 0.01 CPU (Ray refuses 0), so two trials run at once.
    Trap 2: without the State API Ray Train 2.60 never frees the workers of a trial ASHA
    stops, and the trials after it hang at worker-group start (60 s, then an error);
    tune.release frees them, so every trial finishes and no placement group is left.
    Its own cluster: the shared one keeps the dashboard on.
    """
    runs = tmp_path / "runs"
    script = textwrap.dedent(f"""
        import json, sys, time, ray
        ray.init(address="local", num_cpus=2, include_dashboard=False)  # never a cluster started elsewhere
        from tune.sweep import main
        code = main(["--tune.runner", "trainer", "--data.dataset", "synthetic", "--data.synthetic_size", "1000",
                     "--train.epochs", "2", "--tune.search", "grid", "--tune.grace_period", "1",
                     "--tune.reduction_factor", "2", "--tune.space.optim.lr", "choice:0.03,0.01,0.00001,0.00002",
                     "--run.storage_path", {str(runs)!r}, "--run.name", "trainer", "--no-promote"])
        deadline = time.time() + 20
        live = lambda: [p for p, v in ray.util.placement_group_table().items() if v["state"] != "REMOVED"]
        while live() and time.time() < deadline:
            time.sleep(0.5)
        print("LIVE_PLACEMENT_GROUPS", json.dumps(live()))
        sys.exit(code)
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "45"  # a hung trial fails sooner
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "LIVE_PLACEMENT_GROUPS []" in done.stdout, "a stopped trial's Train workers were never released"

    summary = json.loads((runs / "trainer" / SUMMARY_FILE).read_text())
    rows = json.loads((runs / "trainer" / "trials.json").read_text())
    assert summary["errors"] == 0 and len(rows) == 4 and summary["stopped_early"] >= 1
    spans = []
    for row in rows:
        lines = result_lines(Path(row["path"]))
        assert all(r.get("checkpoint_path") for r in lines)  # reported by Train workers via TuneReportCallback
        spans.append((lines[0]["timestamp"] - lines[0]["time_total_s"], lines[-1]["timestamp"]))
    first, second = sorted(spans)[:2]
    assert second[0] < first[1], "the first two trials did not run at the same time"


@pytest.mark.slow
def test_fashion_mnist_sweep_finds_a_good_model(config_factory) -> None:
    cfg = config_factory(
        data={"dataset": "fashion-mnist"}, train={"epochs": 8},
        tune={"space": {"model.hidden_sizes": "choice:128,256", "optim.lr": "loguniform:0.05:0.3"},
              "num_samples": 4, "grace_period": 2, "reduction_factor": 2},
        run={"name": "fashion"},
    )
    summary = run_sweep(cfg)
    assert summary["promoted"]["test_accuracy"] >= 0.86
    assert (Path(summary["dir"]) / SUMMARY_FILE).is_file()
