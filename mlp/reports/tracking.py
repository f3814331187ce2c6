"""Experiment tracking: TensorBoard event files and MLflow runs, written from a run's epoch history.

TensorBoard
    A training run's per-epoch scalars go to one event file,
    ``<run folder>/tensorboard/events.out.tfevents.<run name>.mlp``. The file is
    encoded here (TFRecord framing, ``Event``/``Summary`` protobufs) from the
    history stored in each checkpoint, so it is a pure function of that
    history: wall times come from the history's timestamps, and rewriting it
    after each checkpoint gives the same bytes with one more epoch at the end.
    A live TensorBoard therefore sees a file that only grows, and a resumed run
    ends with each epoch exactly once. It is written through ``mlp.registry.storage``
    (any node, local folder or ``s3://``) by Ray Train's controller, never by a
    worker on its own disk. Tune trials keep Tune's own event files.

MLflow (optional, ``--track.mlflow``)
    A plain folder becomes ``sqlite:///<folder>/mlflow.db`` with artifacts in
    ``<folder>/artifacts``, so no server is needed (MLflow 3's file store
    refuses to run by default). ``mlflow`` is imported only when tracking is
    on; without it the command exits 2 naming ``track.mlflow`` before anything
    is written. The MLflow run id of a training run is kept in the run folder
    (``mlflow_run.json``), so a resumed run continues the same MLflow run.

What it is not: a logger the training loop calls. The loop stays plain
PyTorch; everything here reads the history the loop already records.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import struct
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlparse

from mlp.config import ConfigError, TrackConfig
from mlp.registry.storage import Location, PathLike, is_uri, resolve

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
EVENT_FILE_PREFIX = "events.out.tfevents."
EVENT_FILE_SUFFIX = ".mlp"
MLFLOW_RUN_FILE = "mlflow_run.json"
MLFLOW_FIX = 'pip install -e ".[mlflow]"'
# Per-epoch history key -> TensorBoard tag. Tags share a prefix per chart group
# (loss, accuracy) so TensorBoard shows train and val side by side.
SCALARS: tuple[tuple[str, str], ...] = (
    ("train_loss", "loss/train"), ("val_loss", "loss/val"),
    ("train_accuracy", "accuracy/train"), ("val_accuracy", "accuracy/val"),
    ("samples_per_s", "throughput/samples_per_s"), ("lr", "optim/lr"),
)
# Tracking URI schemes MLflow serves itself; a folder (or file://) is mapped to sqlite.
MLFLOW_SCHEMES = ("sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql")
NOT_LOGGED = ("timestamp",)  # carried as the metrics' own time, not as a metric


# ---------------------------------------------------------------- TensorBoard


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C, rotated and offset so that a CRC of CRCs stays distinct."""
    from tensorboardX.crc32c import crc32c

    crc = crc32c(data) & 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, its checksum, the payload, the payload's checksum (little-endian)."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked_crc32c(header)) + data + struct.pack("<I", _masked_crc32c(data))


def _start_time(history: Sequence[Mapping[str, Any]]) -> float:
    """When the run began: the first epoch's end minus its duration (0 when the history has no times)."""
    first = history[0] if history else {}
    return float(first.get("timestamp") or 0.0) - float(first.get("epoch_s") or 0.0)


def encode_events(history: Sequence[Mapping[str, Any]]) -> bytes:
    """A whole event file for ``history``: a version record, then one scalar summary per epoch.

    Deterministic: the same history gives the same bytes, and a history with one
    more epoch gives these bytes plus that epoch's record.
    """
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary

    out = [tfrecord(Event(wall_time=max(_start_time(history), 0.0), step=0,
                          file_version="brain.Event:2").SerializeToString())]
    for entry in history:
        values = [Summary.Value(tag=tag, simple_value=float(entry[key]))
                  for key, tag in SCALARS if _is_number(entry.get(key))]
        event = Event(wall_time=float(entry.get("timestamp") or 0.0), step=int(entry["epoch"]),
                      summary=Summary(value=values))
        out.append(tfrecord(event.SerializeToString()))
    return b"".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def event_file(run_dir: Location, run_name: str) -> Location:
    """The run's one event file; its name is fixed by the run name, so every rewrite hits the same file."""
    return run_dir / TENSORBOARD_DIR / f"{EVENT_FILE_PREFIX}{run_name}{EVENT_FILE_SUFFIX}"


def write_growing(target: Location, data: bytes) -> None:
    """Write ``data`` so that a reader following the file sees it grow, when that is possible.

    On a local disk, when the file already holds a prefix of ``data``, only the new
    tail is appended (a reader holding the file open keeps reading where it was);
    otherwise, and on object stores (which have no append), the file is replaced whole.
    """
    _, path = resolve(target.uri)
    if target.is_local and os.path.isfile(path):
        with open(path, "rb") as current:
            old = current.read()
        if data.startswith(old):
            if len(data) > len(old):
                with open(path, "ab") as out:
                    out.write(data[len(old):])
            return
    target.write_bytes(data)


def write_tensorboard(run_dir: Location, run_name: str, history: Sequence[Mapping[str, Any]]) -> Location:
    """Rewrite the run's event file from its whole history; returns where it is."""
    target = event_file(run_dir, run_name)
    write_growing(target, encode_events(history))
    return target


# ---------------------------------------------------------------- MLflow: where


@dataclass(frozen=True)
class MlflowTarget:
    """Where runs are tracked: the tracking URI, where new experiments keep artifacts, the experiment."""

    tracking_uri: str
    artifact_location: Optional[str]
    experiment: str


def mlflow_target(track: TrackConfig) -> Optional[MlflowTarget]:
    """The MLflow target of ``track`` (None when off); a value MLflow cannot use is a ConfigError.

    A folder (or ``file://`` URI) maps to ``sqlite:///<folder>/mlflow.db`` with
    artifacts in ``<folder>/artifacts``; a ``sqlite:///x.db`` keeps its artifacts
    beside the database; a server URI decides its artifact store itself.
    """
    if track.mlflow is None:
        return None
    value = track.mlflow.strip()
    if not is_uri(value) or value.startswith("file://"):
        folder = urlparse(value).path if value.startswith("file://") else value
        folder = os.path.abspath(os.path.expanduser(folder))
        return MlflowTarget(f"sqlite:///{folder}/mlflow.db", os.path.join(folder, "artifacts"),
                            track.mlflow_experiment)
    scheme = value.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in MLFLOW_SCHEMES:
        raise ConfigError("track.mlflow", f"MLflow cannot track to {value!r}: give a folder, sqlite:///file.db "
                                          "or http(s)://server:5000 (artifacts on s3:// are the server's choice)")
    artifacts = None
    if scheme == "sqlite":
        database = value[len("sqlite:///"):]
        artifacts = os.path.join(os.path.dirname(os.path.abspath(database)) or ".", "artifacts")
    return MlflowTarget(value, artifacts, track.mlflow_experiment)


def require_mlflow(track: TrackConfig) -> Optional[MlflowTarget]:
    """``mlflow_target``, after checking that mlflow can be imported: call before anything is written."""
    target = mlflow_target(track)
    if target is None:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("track.mlflow", f"MLflow tracking needs the mlflow package, which is not installed: "
                                          f"{MLFLOW_FIX} (or unset --track.mlflow)") from None
    return target


def _client(tracking_uri: str) -> Any:
    """An MlflowClient for ``tracking_uri``; a local sqlite database's folder is created first."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(tracking_uri[len("sqlite:///"):])), exist_ok=True)
    return MlflowClient(tracking_uri)


def ensure_experiment(target: MlflowTarget) -> str:
    """The experiment's id, created with the target's artifact location when it does not exist yet.

    Created here rather than by MLflow on first use: MLflow's default artifact
    root is ``./mlruns`` in whatever folder the process happens to run in.
    """
    client = _client(target.tracking_uri)
    found = client.get_experiment_by_name(target.experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(target.experiment, artifact_location=target.artifact_location)
    except Exception:  # another process created it first
        found = client.get_experiment_by_name(target.experiment)
        if found is None:
            raise
        return found.experiment_id


# ---------------------------------------------------------------- MLflow: training runs


@dataclass(frozen=True)
class MlflowRun:
    """One MLflow run, small and picklable: it travels to Ray Train's controller inside ``RunRecorder``."""

    tracking_uri: str
    experiment_id: str
    run_id: str


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": "0.1"}``: the dotted keys the CLI takes."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return flat


def _resumable(saved: Location, target: MlflowTarget) -> Optional[MlflowRun]:
    """The run recorded in ``mlflow_run.json`` when it is on this tracking URI and still exists."""
    if not saved.is_file():
        return None
    run = MlflowRun(**json.loads(saved.read_text()))
    if run.tracking_uri != target.tracking_uri:
        return None
    try:
        existing = _client(run.tracking_uri).get_run(run.run_id)
    except Exception:  # deleted from the store, or another store
        return None
    return run if existing.info.lifecycle_stage == "active" else None


def start_run(target: MlflowTarget, run_dir: Location, run_name: str, config: Mapping[str, Any]) -> MlflowRun:
    """Start the MLflow run of a training run, or continue the one a previous attempt started.

    A new run gets the flattened config as params (MLflow refuses to change a
    param once logged, so a resumed run keeps the ones it started with) and its
    id is saved in ``<run>/mlflow_run.json`` on the run's storage.
    """
    saved = run_dir / MLFLOW_RUN_FILE
    resumed = _resumable(saved, target)
    if resumed is not None:
        _client(resumed.tracking_uri).update_run(resumed.run_id, status="RUNNING")
        return resumed
    experiment_id = ensure_experiment(target)
    client = _client(target.tracking_uri)
    created = client.create_run(experiment_id, run_name=run_name,
                                tags={"kind": "train", "run_folder": str(run_dir)})
    run = MlflowRun(target.tracking_uri, experiment_id, created.info.run_id)
    _log_params(client, run.run_id, flatten(config))
    saved.write_text(json.dumps(asdict(run), indent=2))
    return run


def _log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow's limit per batch
        client.log_batch(run_id, params=items[start:start + 100])


def last_logged_epoch(run: MlflowRun) -> int:
    """The last epoch already in the MLflow run (0 for none): ``epoch`` is logged with step=epoch."""
    metrics = _client(run.tracking_uri).get_run(run.run_id).data.metrics
    return int(metrics.get("epoch", 0))


def epoch_records(history: Iterable[Mapping[str, Any]], after_epoch: int) -> list[Any]:
    """MLflow ``Metric`` records of every numeric value of the epochs after ``after_epoch``.

    Timestamps are the epochs' own, so logging an epoch twice writes identical records.
    """
    from mlflow.entities import Metric

    records = []
    for entry in history:
        epoch = int(entry["epoch"])
        if epoch <= after_epoch:
            continue
        stamp = int(float(entry.get("timestamp") or 0.0) * 1000)
        records += [Metric(key, float(value), stamp, epoch) for key, value in entry.items()
                    if key not in NOT_LOGGED and _is_number(value)]
    return records


def log_epochs(run: MlflowRun, history: Sequence[Mapping[str, Any]], after_epoch: Optional[int] = None) -> int:
    """Log the epochs of ``history`` the run does not hold yet; returns the last epoch it now holds."""
    if after_epoch is None:
        after_epoch = last_logged_epoch(run)
    records = epoch_records(history, after_epoch)
    client = _client(run.tracking_uri)
    for start in range(0, len(records), 1000):  # MLflow's limit per batch
        client.log_batch(run.run_id, metrics=records[start:start + 1000])
    return max([after_epoch, *(int(h["epoch"]) for h in history)])


def finish_run(run: MlflowRun, history: Sequence[Mapping[str, Any]], test: Mapping[str, float],
               model_folder: PathLike, promoted: Optional[Any] = None) -> None:
    """Close a training run: missing epochs, test metrics, the model files, the registry version.

    The epochs are logged live by ``RunRecorder``; logging the missing ones here
    too makes the MLflow run complete even when the controller could not reach it.
    """
    log_epochs(run, history)
    client = _client(run.tracking_uri)
    step = int(history[-1]["epoch"]) if history else 0
    for key, value in test.items():
        client.log_metric(run.run_id, key, float(value), step=step)
    for name in ("model.pt", "config.json"):
        client.log_artifact(run.run_id, os.path.join(str(model_folder), name), artifact_path="model")
    if promoted is not None:
        tag_registry_version(client, run.run_id, promoted)
    client.set_terminated(run.run_id, "FINISHED")


def end_run(run: Optional[MlflowRun], status: str) -> None:
    """Mark a run that stopped early (``KILLED``, ``FAILED``); resuming sets it running again."""
    if run is None:
        return
    try:
        _client(run.tracking_uri).set_terminated(run.run_id, status)
    except Exception as err:  # the run's own error is the one to report
        log.warning("could not mark MLflow run %s as %s: %s", run.run_id, status, err)


def tag_registry_version(client: Any, run_id: str, version: Any) -> None:
    """Tag a run with the registry version it was promoted to (``registry_version=v3``, its path)."""
    path = str(version)
    client.set_tag(run_id, "registry_version", posixpath.basename(path.rstrip("/")))
    client.set_tag(run_id, "registry_path", path)


# ---------------------------------------------------------------- MLflow: sweeps


SWEEP_TAG = "sweep"
TRIAL_TAG = "trial_name"  # set by Ray's MLflowLoggerCallback to the trial's name


def tag_trial_runs(target: MlflowTarget, sweep: str, trial_name: str, version: Any) -> list[str]:
    """Tag every MLflow run of one sweep trial with its registry version; returns their ids.

    A trial that resumed after an interrupted sweep has two MLflow runs (Ray's
    callback starts a new one per trial start), so all of them are tagged.
    """
    client = _client(target.tracking_uri)
    experiment = client.get_experiment_by_name(target.experiment)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_name}'")
    ids = [r.info.run_id for r in runs if r.data.tags.get(SWEEP_TAG) == sweep]
    for run_id in ids:
        tag_registry_version(client, run_id, version)
    return ids
