"""Experiment tracking without Ray: TensorBoard event files and MLflow runs, read back with their own readers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlp.config import ConfigError, TrackConfig
from mlp.registry.storage import Location
from mlp.reports.tracking import (MLFLOW_FIX, SCALARS, encode_events, event_file, finish_run, flatten, last_logged_epoch,
                          log_epochs, mlflow_target, require_mlflow, start_run, tag_trial_runs, tfrecord,
                          write_tensorboard)

REPO = Path(__file__).resolve().parents[2]


def history(epochs: int) -> list[dict]:
    """What mlp.loop records per epoch (the fields that matter here), with distinct values per epoch."""
    return [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "train_accuracy": 0.5 + e / 100,
             "val_accuracy": 0.45 + e / 100, "samples_per_s": 1000.0 * e, "lr": 0.1 / e, "epoch_s": 1.5,
             "elapsed_s": 1.5 * e, "best_val_accuracy": 0.45 + e / 100, "time_to_target_s": None,
             "timestamp": 1_700_000_000.0 + 10 * e} for e in range(1, epochs + 1)]


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar TensorBoard's own reader finds in ``folder``: tag -> [(step, value, wall_time)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(s.step, s.value, s.wall_time) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_file_holds_exactly_each_epochs_scalars(tmp_path: Path) -> None:
    epochs = history(3)
    written = write_tensorboard(Location.of(tmp_path), "run-a", epochs)
    assert Path(written.uri).parent == tmp_path / "tensorboard"
    scalars = read_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {tag for _, tag in SCALARS}
    for key, tag in SCALARS:
        assert [(step, round(value, 5)) for step, value, _ in scalars[tag]] == \
            [(e["epoch"], round(e[key], 5)) for e in epochs]
        assert [wall for _, _, wall in scalars[tag]] == [e["timestamp"] for e in epochs]


def test_rewrite_with_one_more_epoch_keeps_the_earlier_bytes(tmp_path: Path) -> None:
    two, three = encode_events(history(2)), encode_events(history(3))
    assert encode_events(history(2)) == two  # deterministic: no clock, no host name
    assert three.startswith(two) and len(three) > len(two)

    run = Location.of(tmp_path)
    target = Path(event_file(run, "run-b").uri)
    write_tensorboard(run, "run-b", history(2))
    with target.open("rb") as reader:  # a live reader keeps its open file
        write_tensorboard(run, "run-b", history(3))
        assert reader.read() == three  # appended to the same file, not replaced under it
    write_tensorboard(run, "run-b", history(3))  # a resumed run rewrites: nothing is duplicated
    assert target.read_bytes() == three
    assert [step for step, _, _ in read_scalars(target.parent)["loss/val"]] == [1, 2, 3]
    assert list(target.parent.iterdir()) == [target]


def test_tfrecord_checksums_match_tensorboardx() -> None:
    from tensorboardX.record_writer import masked_crc32c

    data = b"some event bytes"
    record = tfrecord(data)
    assert record[8:12] == masked_crc32c(record[:8]).to_bytes(4, "little")
    assert record[-4:] == masked_crc32c(data).to_bytes(4, "little")


def test_folder_maps_to_sqlite_and_uris_pass_through(tmp_path: Path) -> None:
    folder = mlflow_target(TrackConfig(mlflow=str(tmp_path / "ml")))
    assert folder.tracking_uri == f"sqlite:///{tmp_path}/ml/mlflow.db"
    assert folder.artifact_location == str(tmp_path / "ml" / "artifacts")
    assert mlflow_target(TrackConfig(mlflow=f"file://{tmp_path}/ml")) == folder
    sqlite = mlflow_target(TrackConfig(mlflow=f"sqlite:///{tmp_path}/x/db.sqlite"))
    assert sqlite.tracking_uri == f"sqlite:///{tmp_path}/x/db.sqlite"
    assert sqlite.artifact_location == str(tmp_path / "x" / "artifacts")
    server = mlflow_target(TrackConfig(mlflow="http://mlflow.internal:5000", mlflow_experiment="exp"))
    assert (server.tracking_uri, server.artifact_location, server.experiment) == \
        ("http://mlflow.internal:5000", None, "exp")
    assert mlflow_target(TrackConfig()) is None
    with pytest.raises(ConfigError, match="track.mlflow") as err:
        mlflow_target(TrackConfig(mlflow="s3://bucket/mlflow"))
    assert err.value.key == "track.mlflow"
    assert not (tmp_path / "ml").exists()  # validation writes nothing


def test_training_run_in_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    target = mlflow_target(TrackConfig(mlflow=str(tmp_path / "ml")))
    run_dir = Location.of(tmp_path / "runs" / "r1")
    config = {"optim": {"lr": 0.1}, "model": {"hidden_sizes": [100]}}
    run = start_run(target, run_dir, "r1", config)
    assert last_logged_epoch(run) == 0
    assert log_epochs(run, history(2)) == 2  # what RunRecorder does live
    assert last_logged_epoch(run) == 2
    again = start_run(target, run_dir, "r1", config)  # a resumed run continues the same MLflow run
    assert again == run
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "model.pt").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    finish_run(again, history(3), {"test_accuracy": 0.9, "test_loss": 0.3}, model, tmp_path / "registry" / "mlp" / "v3")

    client = MlflowClient(target.tracking_uri)
    experiment = client.get_experiment_by_name("mlp")
    assert experiment.artifact_location.endswith(str(tmp_path / "ml" / "artifacts"))
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run.run_id]
    logged = runs[0]
    assert logged.info.status == "FINISHED" and logged.info.run_name == "r1"
    assert logged.data.params == flatten(config) == {"optim.lr": "0.1", "model.hidden_sizes": "[100]"}
    for key in ("val_accuracy", "train_loss", "lr", "samples_per_s"):
        assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, key)] == \
            [(e["epoch"], e[key]) for e in history(3)]  # each epoch once, resume included
    assert "time_to_target_s" not in logged.data.metrics  # None is not a number
    assert logged.data.metrics["test_accuracy"] == 0.9
    assert logged.data.tags["registry_version"] == "v3"
    assert logged.data.tags["registry_path"] == str(tmp_path / "registry" / "mlp" / "v3")
    assert sorted(a.path for a in client.list_artifacts(run.run_id, "model")) == ["model/config.json",
                                                                                   "model/model.pt"]
    assert (tmp_path / "ml" / "mlflow.db").is_file()


def test_trial_runs_are_tagged_by_sweep_and_trial(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from mlp.reports.tracking import ensure_experiment

    target = mlflow_target(TrackConfig(mlflow=str(tmp_path / "ml")))
    client = MlflowClient(target.tracking_uri)
    experiment = ensure_experiment(target)
    mine = client.create_run(experiment, tags={"trial_name": "trial_a", "sweep": "s1"}).info.run_id
    other_sweep = client.create_run(experiment, tags={"trial_name": "trial_a", "sweep": "s0"}).info.run_id
    other_trial = client.create_run(experiment, tags={"trial_name": "trial_b", "sweep": "s1"}).info.run_id
    assert tag_trial_runs(target, "s1", "trial_a", "/reg/mlp/v2") == [mine]
    assert client.get_run(mine).data.tags["registry_version"] == "v2"
    for run_id in (other_sweep, other_trial):
        assert "registry_version" not in client.get_run(run_id).data.tags


def test_missing_mlflow_is_a_clear_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With mlflow not importable, --track.mlflow refuses (exit 2, naming the key and the fix) and writes nothing."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["mlflow"] = None  # what an environment without the package looks like to import
        import mlp.distributed.run
        import mlp.train
        mlp.distributed.run.init_ray = lambda: sys.exit(99)  # the refusal must come before Ray starts
        sys.exit(mlp.train.main(["--data.dataset", "synthetic", "--run.storage_path", {str(tmp_path / "runs")!r},
                                 "--track.mlflow", {str(tmp_path / "ml")!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr
    assert "config track.mlflow:" in done.stderr and MLFLOW_FIX in done.stderr
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert require_mlflow(TrackConfig()) is None  # off: mlflow is never imported
    with pytest.raises(ConfigError, match="pip install"):
        require_mlflow(TrackConfig(mlflow=str(tmp_path / "ml")))
