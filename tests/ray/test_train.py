"""Ray Train on the shared local cluster: data-parallel training, checkpoints, resume, real accuracy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from mlp.checkpoint import load_model
from mlp.distributed import METRICS_FILE
from mlp.train import run_training


def reported_epochs(run_dir: Path) -> list[int]:
    path = run_dir / METRICS_FILE
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def test_two_workers_learn_and_checkpoint_loads(config_factory) -> None:
    cfg = config_factory(scaling={"num_workers": 2}, optim={"lr": 0.05}, run={"name": "two-workers"})
    summary = run_training(cfg)
    run_dir = Path(cfg.run.storage_path) / "two-workers"
    history = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert [m["epoch"] for m in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert summary["test_accuracy"] > 0.3  # chance is 0.1

    model, loaded_cfg = load_model(summary["checkpoint"])
    assert loaded_cfg.scaling.num_workers == 2
    state = torch.load(Path(summary["checkpoint"]) / "model.pt", weights_only=True)
    assert all(not key.startswith("module.") for key in state)  # bare model, not the DDP wrapper
    assert model(torch.rand(4, 784)).shape == (4, 10)

    again = run_training(cfg)  # a finished run says so and is not retrained
    assert again["checkpoint"] == summary["checkpoint"]
    assert reported_epochs(run_dir) == [1, 2]


def test_killed_driver_resumes_from_last_checkpoint(tmp_path: Path, config_factory) -> None:
    """The driver is SIGKILLed after its first checkpoint; the same name continues after it."""
    cfg = config_factory(data={"synthetic_size": 40000}, train={"epochs": 4}, run={"name": "resumable"})
    run_dir = Path(cfg.run.storage_path) / "resumable"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token"}
    argv = [sys.executable, "-m", "mlp.train", "--data.dataset", "synthetic", "--data.synthetic_size", "40000",
            "--train.epochs", "4", "--run.name", "resumable", "--run.storage_path", cfg.run.storage_path]
    driver = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not _snapshot_epochs(run_dir) and time.time() < deadline:
            assert driver.poll() is None, "driver ended before its first checkpoint"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    checkpointed = max(_snapshot_epochs(run_dir))
    assert 1 <= checkpointed < 4, "the kill came too late to test resume"
    before = len(reported_epochs(run_dir))

    summary = run_training(cfg)
    resumed = reported_epochs(run_dir)[before:]
    assert resumed[0] == checkpointed + 1 and resumed[-1] == 4
    assert resumed == list(range(checkpointed + 1, 5))
    assert summary["epochs"] == 4


def _snapshot_epochs(run_dir: Path) -> list[int]:
    """Epochs of the checkpoints Ray Train has registered for the run (what a restart sees)."""
    epochs = []
    for folder in run_dir.glob("checkpoint_*"):
        state = folder / "state.json"
        if state.is_file() and (run_dir / "checkpoint_manager_snapshot.json").is_file() \
                and folder.name in (run_dir / "checkpoint_manager_snapshot.json").read_text():
            epochs.append(json.loads(state.read_text())["epoch"])
    return epochs


@pytest.mark.slow
def test_fashion_mnist_reaches_85_percent(config_factory) -> None:
    pytest.importorskip("torchvision")
    if not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("MLP_DATA_DIR"):
        pytest.fail("Fashion-MNIST missing: apt-get install dataset-fashion-mnist (CI installs it)")
    cfg = config_factory(data={"dataset": "fashion-mnist"}, train={"epochs": 10},
                         scaling={"num_workers": 2}, optim={"lr": 0.1}, run={"name": "fashion"})
    summary = run_training(cfg)
    assert summary["epochs"] == 10
    assert summary["test_accuracy"] >= 0.85
