"""Experiment tracking on the shared local cluster: TensorBoard event files and MLflow runs of real runs and sweeps."""

from __future__ import annotations

import json
from pathlib import Path

from mlp.config import TrackConfig
from mlp.distributed.trainer import build_trainer
from mlp.distributed.runfiles import RunFiles
from mlp.reports.tracking import SCALARS, TENSORBOARD_DIR, mlflow_target, start_run
from mlp.train import main as train_main
from tune.tuner import SUMMARY_FILE, run_sweep


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard's own reader finds under ``folder``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_epochs_in_tensorboard(folder: Path, history: list[dict]) -> None:
    scalars = read_scalars(folder)
    assert set(scalars) == {tag for _, tag in SCALARS}
    for key, tag in SCALARS:
        assert [step for step, _ in scalars[tag]] == [m["epoch"] for m in history]
        assert all(abs(value - m[key]) <= 1e-6 * max(1.0, abs(m[key])) for (_, value), m in zip(scalars[tag], history))


def mlflow_runs(folder: Path) -> tuple[object, list[object]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("mlp")
    return client, client.search_runs([experiment.experiment_id])


def test_controller_writes_events_and_mlflow_epochs_live(config_factory, tmp_path: Path) -> None:
    """Without the driver's end-of-run step, the Train controller alone writes every epoch to both trackers."""
    cfg = config_factory(train={"epochs": 3}, run={"name": "live"})
    files = RunFiles(cfg.run.storage_path, "live")
    run = start_run(mlflow_target(TrackConfig(mlflow=str(tmp_path / "ml"))), files.dir, "live", cfg.to_dict())
    build_trainer(cfg, mlflow_run=run).fit()

    history = files.read_metrics()
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert_epochs_in_tensorboard(Path(cfg.run.storage_path) / "live" / TENSORBOARD_DIR, history)
    client, runs = mlflow_runs(tmp_path / "ml")
    assert [r.info.run_id for r in runs] == [run.run_id]
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val_accuracy")] == \
        [(m["epoch"], m["val_accuracy"]) for m in history]


def test_training_run_is_tracked_and_promoted(config_factory, tmp_path: Path) -> None:
    cfg = config_factory(run={"name": "tracked"}, optim={"lr": 0.05})
    ml = tmp_path / "ml"
    argv = ["--data.dataset", "synthetic", "--data.synthetic_size", "2000", "--train.epochs", "2",
            "--optim.lr", "0.05", "--run.name", "tracked", "--run.storage_path", cfg.run.storage_path,
            "--registry.path", cfg.registry.path, "--track.mlflow", str(ml), "--promote"]
    assert train_main(argv) == 0
    files = RunFiles(cfg.run.storage_path, "tracked")
    summary, history = files.read_summary(), files.read_metrics()
    assert [m["epoch"] for m in history] == [1, 2]
    assert all(m["lr"] == 0.05 for m in history)

    tensorboard = Path(cfg.run.storage_path) / "tracked" / TENSORBOARD_DIR
    assert len(list(tensorboard.glob("events.out.tfevents.*"))) == 1
    assert_epochs_in_tensorboard(tensorboard, history)

    client, runs = mlflow_runs(ml)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == summary["mlflow_run_id"]
    assert json.loads((Path(cfg.run.storage_path) / "tracked" / "mlflow_run.json").read_text())["run_id"] == \
        run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["optim.lr"] == "0.05" and run.data.params["data.dataset"] == "synthetic"
    for key in ("train_loss", "val_loss", "val_accuracy", "samples_per_s", "lr"):
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == \
            [(m["epoch"], m[key]) for m in history]
    assert run.data.metrics["test_accuracy"] == summary["test_accuracy"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/model.pt",
                                                                                 "model/config.json"}
    assert run.data.tags["registry_version"] == Path(summary["promoted"]).name == "v1"
    assert run.data.tags["registry_path"] == summary["promoted"]


def test_sweep_logs_one_mlflow_run_per_trial_and_tags_the_winner(config_factory, tmp_path: Path) -> None:
    cfg = config_factory(
        tune={"space": {"optim.lr": "choice:0.05,0.0001"}, "search": "grid", "early_stopping": False},
        run={"name": "tracked-sweep"}, track={"mlflow": str(tmp_path / "ml")},
    )
    summary = run_sweep(cfg)
    assert (Path(summary["dir"]) / SUMMARY_FILE).is_file()
    rows = json.loads((Path(summary["dir"]) / "trials.json").read_text())
    assert len(rows) == 2
    for row in rows:  # Tune's own TensorBoard files are still written beside MLflow's runs
        assert list(Path(row["path"]).glob("events.out.tfevents.*"))

    client, runs = mlflow_runs(tmp_path / "ml")
    assert len(runs) == 2 and {r.data.tags["sweep"] for r in runs} == {"tracked-sweep"}
    by_trial = {r.data.tags["trial_name"]: r for r in runs}
    assert set(by_trial) == {f"trial_{row['trial_id']}" for row in rows}
    assert {float(r.data.params["optim.lr"]) for r in runs} == {0.05, 0.0001}
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    winner = by_trial.pop(f"trial_{summary['promoted']['trial_id']}")
    assert winner.data.tags["registry_version"] == summary["promoted"]["version"] == "v1"
    assert winner.data.tags["registry_path"] == summary["promoted"]["registry_dir"]
    assert all("registry_version" not in r.data.tags for r in by_trial.values())
