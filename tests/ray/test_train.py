"""Ray Train on the shared local cluster: data-parallel training, checkpoints, resume, real accuracy."""

from __future__ import annotations

import os
import shutil
import socket
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import torch

from mlp.checkpoint import load_model, save_checkpoint
from mlp.distributed.trainer import RunRecorder
from mlp.distributed.runfiles import RunBusyError, RunFiles
from mlp.distributed.run import run_training


def test_two_workers_learn_and_checkpoint_loads(config_factory) -> None:
    cfg = config_factory(scaling={"num_workers": 2}, optim={"lr": 0.05}, run={"name": "two-workers"})
    summary = run_training(cfg)
    files = RunFiles(cfg.run.storage_path, "two-workers")
    history = files.read_metrics()
    assert [m["epoch"] for m in history] == [1, 2]
    node = ray.get_runtime_context().get_node_id()
    assert [(r["rank"], r["node_id"]) for r in summary["ranks"]] == [(0, node), (1, node)]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert summary["test_accuracy"] > 0.3  # chance is 0.1
    assert all(0 < m["exchange_s"] < m["epoch_s"] for m in history)  # the gradient exchange is timed
    assert "advice" in summary  # None or a sentence, depending on this machine's load

    model, loaded_cfg = load_model(summary["checkpoint"])
    assert loaded_cfg.scaling.num_workers == 2
    state = torch.load(Path(summary["checkpoint"]) / "model.pt", weights_only=True)
    assert all(not key.startswith("module.") for key in state)  # bare model, not the DDP wrapper
    assert model(torch.rand(4, 784)).shape == (4, 10)

    again = run_training(cfg)  # a finished run says so and is not retrained
    assert again["checkpoint"] == summary["checkpoint"]
    assert [m["epoch"] for m in files.read_metrics()] == [1, 2]


def test_two_workers_train_on_a_csv_table_and_the_checkpoint_carries_its_schema(config_factory, tmp_path) -> None:
    """The driver infers the table's schema; both workers read the table, standardise it the same way,
    and train; the final test accuracy passes the bar and the checkpoint rebuilds a 13-feature, 3-class model."""
    from owndata import wine_table  # tests/owndata.py

    frame = wine_table(tmp_path / "wine.csv")
    cfg = config_factory(data={"source": str(tmp_path / "wine.csv"), "label": "kind"},
                         scaling={"num_workers": 2}, model={"hidden_sizes": [64]},
                         optim={"name": "adam", "lr": 0.003}, train={"epochs": 30, "batch_size": 32},
                         run={"name": "wine"})
    summary = run_training(cfg)
    assert summary["test_accuracy"] >= 0.9, summary
    model, saved = load_model(summary["checkpoint"])
    assert saved.schema.input_size == 13 and saved.schema.classes == sorted(set(frame["kind"]))
    assert model(torch.rand(4, 13)).shape == (4, 3)


def test_killed_driver_resumes_from_last_checkpoint(config_factory) -> None:
    """The driver is SIGKILLed after its first checkpoint; the same name continues after the last one.

    The run's files are written from what Ray Train has registered (an epoch appears in
    metrics.jsonl only once its checkpoint is registered), so the test needs no timing
    guesses: epochs the first attempt finished keep their original lines, later epochs
    were trained after the restart, and every epoch is there exactly once.
    """
    cfg = config_factory(data={"synthetic_size": 40000}, train={"epochs": 4}, run={"name": "resumable"})
    files = RunFiles(cfg.run.storage_path, "resumable")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token"}
    argv = [sys.executable, "-m", "mlp.train", "--data.dataset", "synthetic", "--data.synthetic_size", "40000",
            "--train.epochs", "4", "--run.name", "resumable", "--run.storage_path", cfg.run.storage_path]
    driver = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not files.read_metrics() and time.time() < deadline:
            assert driver.poll() is None, "driver ended before its first checkpoint"
            time.sleep(0.2)
        with pytest.raises(RunBusyError, match="being trained by Ray job"):  # a live attempt is never overlapped
            files.begin_attempt(wait_s=0.5)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    killed_at = time.time()
    before = files.read_metrics()
    assert before and before[-1]["epoch"] < 4, "the kill came too late to test resume"

    summary = run_training(cfg)
    history = files.read_metrics()
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    kept = [m for m in history if m["timestamp"] < killed_at]  # restored from the last checkpoint
    assert kept[:len(before)] == before  # not retrained: the first attempt's own lines
    assert [m["epoch"] for m in kept] == list(range(1, len(kept) + 1))
    assert all(m["timestamp"] > killed_at for m in history[len(kept):])
    assert summary["epochs"] == 4
    assert files.read_attempt().job_id == ray.get_runtime_context().get_job_id()


def test_superseded_attempt_writes_nothing(tmp_path: Path, config_factory) -> None:
    """The recorder of an attempt that lost the run leaves the run's files alone; the owner's writes them."""
    cfg = config_factory(run={"name": "fenced"})
    files = RunFiles(cfg.run.storage_path, "fenced")
    old, new = files.begin_attempt(), files.begin_attempt()
    assert not files.owns(old.token) and files.owns(new.token)
    history = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]
    folder = save_checkpoint(tmp_path / "ckpt", torch.nn.Linear(784, 10), cfg, {"epoch": 2, "history": history})
    checkpoint = ray.train.Checkpoint.from_directory(str(folder))
    reports = [{**history[-1], "node_id": "n0", "node_ip": "10.0.0.1"}]

    RunRecorder(cfg.run.storage_path, "fenced", old.token).after_report(None, reports, checkpoint)
    assert files.read_metrics() == [] and files.read_ranks() == []
    RunRecorder(cfg.run.storage_path, "fenced", new.token).after_report(None, reports, checkpoint)
    assert files.read_metrics() == history
    assert files.read_ranks() == [{"rank": 0, "node_id": "n0", "node_ip": "10.0.0.1"}]


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


def test_a_dead_recorded_cluster_is_not_the_state_api_ray_trains_cleaner_asks(tmp_path: Path) -> None:
    """``ray start`` recorded a cluster that is gone: ``mlp-train`` starts its own, and names that cluster's
    dashboard as the State API to its processes, so Ray Train's PlacementGroupCleaner sees the run's controller
    (asking the dead address, it gave up only after 12 s at every run's end, logging that it could not stop)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths live below it
    try:
        (ray_tmp / "ray").mkdir()
        with socket.socket() as sock:  # an address nothing listens on
            sock.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{sock.getsockname()[1]}"
        (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        done = subprocess.run([sys.executable, "-m", "mlp.train", "--data.dataset", "synthetic",
                               "--data.synthetic_size", "2000", "--train.epochs", "1",
                               "--run.storage_path", str(tmp_path / "runs"), "--run.name", "beside-a-dead-one"],
                              env={**env, "RAY_TMPDIR": str(ray_tmp)}, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert f"ignoring the Ray cluster address {dead}" in output
    assert "test accuracy" in done.stdout
    assert "Failed to stop PlacementGroupCleaner" not in output and "Failed to query" not in output, output[-3000:]
