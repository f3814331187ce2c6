"""The one typed configuration tree shared by train, tune and serve.

Precedence is defaults <- YAML file <- CLI dotted overrides (``--optim.lr 0.1``).
Every field carries its own help text (shown by ``--help``) and every section
validates itself in ``__post_init__``, so a bad value is refused with the key
named before anything is written. Across the Ray boundary the config travels as
a plain dict (``to_dict``) and is rebuilt with ``from_dict`` on the other side;
no other code handles raw dicts.

``from_dict`` (with ``coerce`` and ``build``, below) needs no CLI module: the
parsers in ``mlp.options`` end in it, and Ray workers call it directly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import yaml

DATASETS = ("mnist", "fashion-mnist", "synthetic")
ACTIVATIONS = ("relu", "tanh", "gelu")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "constant", "cosine", "step")  # none and constant are one schedule
NORMALIZE = ("standard", "none")
INGEST = ("auto", "memory", "stream")  # auto is resolved to one of the others in the driver (mlp.data.resolve_data)
SEARCHERS = ("random", "grid", "optuna")
TRIAL_RUNNERS = ("auto", "process", "trainer")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray's placement group names
# A registry version reference: latest, vN, or an alias (champion, candidate, ...); see mlp.registry.
VERSION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class ConfigError(ValueError):
    """A config value is wrong; ``key`` is the dotted name the user typed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def default_home() -> str:
    """Root for runs and the registry: ``$MLP_HOME`` or ``~/mlp``.

    A home-relative default (not the working directory) matters under
    ``ray job submit``, where the working directory is a temporary copy.
    """
    return os.path.expanduser(os.environ.get("MLP_HOME", "~/mlp"))


@dataclass
class ModelConfig:
    hidden_sizes: list[int] = field(
        default_factory=lambda: [100],
        metadata=_help("widths of the hidden layers, e.g. 100 or 256,128"),
    )
    activation: str = field(default="relu", metadata=_help("hidden activation: relu | tanh | gelu"))
    dropout: float = field(default=0.0, metadata=_help("dropout after each hidden layer while training, in [0, 1)"))

    def __post_init__(self) -> None:
        _require(len(self.hidden_sizes) > 0, "model.hidden_sizes", "needs at least one layer")
        _require(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        for size in self.hidden_sizes:
            _require(size >= 1, "model.hidden_sizes", f"every width must be >= 1, got {size}")
        _require(self.activation in ACTIVATIONS, "model.activation",
                 f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")


@dataclass
class OptimConfig:
    name: str = field(default="sgd", metadata=_help("optimizer: sgd | adam | adamw"))
    lr: float = field(default=0.01, metadata=_help("learning rate (the first epoch's, under a schedule)"))
    momentum: float = field(default=0.0, metadata=_help("SGD momentum in [0, 1); sgd only"))
    weight_decay: float = field(
        default=0.0, metadata=_help("weight decay (>= 0): L2 for sgd and adam, decoupled for adamw"))
    schedule: str = field(
        default="constant",
        metadata=_help("learning rate per epoch: constant (or none) | cosine (lr down to 0 over train.epochs) | "
                       "step (lr x gamma every step_size epochs)"))
    step_size: int = field(default=3, metadata=_help("schedule step: epochs between decays"))
    gamma: float = field(default=0.1, metadata=_help("schedule step: factor at each decay, in (0, 1]"))

    def __post_init__(self) -> None:
        _require(self.name in OPTIMIZERS, "optim.name",
                 f"must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        _require(math.isfinite(self.lr) and self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, "optim.momentum", f"must be in [0, 1), got {self.momentum}")
        _require(self.momentum == 0 or self.name == "sgd", "optim.momentum",
                 f"applies to sgd only; {self.name} keeps its own moment estimates (set it to 0)")
        _require(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.schedule in SCHEDULES, "optim.schedule",
                 f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _require(self.step_size >= 1, "optim.step_size", f"must be >= 1, got {self.step_size}")
        _require(0 < self.gamma <= 1, "optim.gamma", f"must be in (0, 1], got {self.gamma}")


@dataclass
class DataConfig:
    dataset: str = field(default="mnist", metadata=_help("built-in dataset: mnist | fashion-mnist | synthetic"))
    source: Optional[str] = field(
        default=None,
        metadata=_help("your own table instead: a Parquet or CSV file, folder or glob, local or a URI such as "
                       "s3://bucket/table/ (a built-in name works too, as data.dataset)"),
    )
    label: str = field(default="label", metadata=_help("the table's label column"))
    features: list[str] = field(
        default_factory=list, metadata=_help("the table's feature columns, e.g. a,b,c (default: every other column)"))
    test_fraction: float = field(
        default=0.2, metadata=_help("share of a table's rows held out for the final test (built-ins have their own)"))
    test_source: Optional[str] = field(
        default=None, metadata=_help("a separate table for the final test, with the same columns "
                                     "(then data.test_fraction is not used)"))
    normalize: str = field(
        default="standard", metadata=_help("table features: standard (mean 0, std 1 on the training rows) "
                                           "or none (used as they are)"))
    ingest: str = field(
        default="auto", metadata=_help("how workers get a table: memory (each loads its rows), stream "
                                       "(Ray Data shards, for tables larger than memory) or auto"))
    memory_budget_mb: int = field(
        default=0, metadata=_help("largest table (as float32) that data.ingest auto keeps in each worker's "
                                  "memory; 0: an eighth of this machine's memory"))
    dir: Optional[str] = field(
        default=None,
        metadata=_help("folder holding the IDX files (searched first; then $MLP_DATA_DIR, "
                       "/usr/share/datasets/<name>, then a download)"),
    )
    val_fraction: float = field(default=0.1, metadata=_help("share of the training set held out for validation"))
    seed: int = field(default=0, metadata=_help("seed for the split, the shuffles and the initial weights"))
    synthetic_size: int = field(default=6000, metadata=_help("training samples of the synthetic dataset"))

    def __post_init__(self) -> None:
        if self.source in DATASETS:  # --data.source fashion-mnist is the built-in, as --data.dataset says
            self.dataset, self.source = self.source, None
        _require(self.source is None or bool(self.source.strip()), "data.source", "must be a path or URI (or unset)")
        _require(bool(self.label), "data.label", "must name a column")
        _require(0 < self.test_fraction < 1, "data.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        _require(self.test_source is None or self.source is not None, "data.test_source",
                 "needs data.source (built-in datasets have their own test set)")
        _require(self.normalize in NORMALIZE, "data.normalize",
                 f"must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}")
        _require(self.ingest in INGEST, "data.ingest", f"must be one of {', '.join(INGEST)}, got {self.ingest!r}")
        _require(self.memory_budget_mb >= 0, "data.memory_budget_mb", f"must be >= 0, got {self.memory_budget_mb}")
        _require(self.dataset in DATASETS, "data.dataset",
                 f"must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        _require(0 < self.val_fraction < 1, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        _require(self.synthetic_size >= 100, "data.synthetic_size", f"must be >= 100, got {self.synthetic_size}")

    @property
    def name(self) -> str:
        """What the data is called in run names and summaries: the built-in's name, or the table's."""
        if self.source is None:
            return self.dataset
        parts = [p for p in re.split(r"[/\\]", self.source.rstrip("/")) if p and not any(c in p for c in "*?[")]
        stem = parts[-1].split(".")[0] if parts else ""
        return stem or "table"


@dataclass
class SchemaConfig:
    """What the model's input and output are, inferred from the data by the driver (``mlp.data.resolve_data``).

    Not an option to set by hand: it is filled before training starts and travels with
    the config into every worker, checkpoint and registry version, so evaluation and
    serving rebuild the model and its preprocessing from the checkpoint alone.
    """

    DERIVED = True  # mlp.options offers no command-line option for it

    input_size: int = field(default=784, metadata=_help("features per sample"))
    classes: list[str] = field(default_factory=list, metadata=_help("class names, by label index (empty: built-in)"))
    features: list[str] = field(default_factory=list, metadata=_help("a table's feature columns, in input order"))
    mean: list[float] = field(default_factory=list, metadata=_help("per-feature mean of the training rows"))
    std: list[float] = field(default_factory=list, metadata=_help("per-feature standard deviation of the training rows"))

    def __post_init__(self) -> None:
        _require(self.input_size >= 1, "schema.input_size", f"must be >= 1, got {self.input_size}")
        _require(len(self.classes) != 1, "schema.classes", "needs at least two classes")
        for key in ("mean", "std"):
            values = getattr(self, key)
            _require(not values or len(values) == self.input_size, f"schema.{key}",
                     f"needs {self.input_size} values, got {len(values)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes) or 10


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata=_help("passes over the training set"))
    batch_size: int = field(
        default=64,
        metadata=_help("GLOBAL batch size; each of N workers takes batch_size / N per step"),
    )
    target_accuracy: Optional[float] = field(
        default=None, metadata=_help("report the time at which val accuracy first reaches this")
    )
    threads: int = field(default=0, metadata=_help("torch threads per worker; 0 = the worker's CPUs"))

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.target_accuracy is None or 0 < self.target_accuracy <= 1, "train.target_accuracy",
                 f"must be in (0, 1], got {self.target_accuracy}")
        _require(self.threads >= 0, "train.threads", f"must be >= 0, got {self.threads}")


@dataclass
class ScalingConfig:
    num_workers: int = field(default=1, metadata=_help("data-parallel training workers"))
    use_gpu: bool = field(default=False, metadata=_help("one GPU per worker (NCCL backend)"))
    cpus_per_worker: float = field(default=1.0, metadata=_help("CPUs reserved by each worker"))
    shared_memory_allreduce: bool = field(
        default=True,
        metadata=_help("CPU workers on one machine average gradients through shared memory before each "
                       "optimizer step, without DDP (exact, same result); false, or workers on several "
                       "machines: DDP over gloo"),
    )
    placement_strategy: str = field(
        default="PACK",
        metadata=_help("where workers go, in Ray's terms: PACK (fewest nodes) | SPREAD (across nodes) | "
                       "STRICT_PACK | STRICT_SPREAD"),
    )

    def __post_init__(self) -> None:
        self.placement_strategy = self.placement_strategy.upper()
        _require(self.placement_strategy in PLACEMENT_STRATEGIES, "scaling.placement_strategy",
                 f"must be one of {', '.join(PLACEMENT_STRATEGIES)}, got {self.placement_strategy!r}")
        _require(self.num_workers >= 1, "scaling.num_workers", f"must be >= 1, got {self.num_workers}")
        _require(self.cpus_per_worker > 0, "scaling.cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")


@dataclass
class RunConfig:
    name: Optional[str] = field(
        default=None,
        metadata=_help("run name; re-running with the same name resumes it (default: <dataset>-<timestamp>)"),
    )
    storage_path: str = field(
        default_factory=lambda: os.path.join(default_home(), "runs"),
        metadata=_help("where runs, checkpoints and metrics are written: a folder or a URI such as "
                       "s3://bucket/runs; on a cluster, storage every node reaches ($MLP_HOME/runs)"),
    )
    checkpoints_kept: int = field(default=2, metadata=_help("most recent checkpoints kept per run"))
    max_failures: int = field(default=0, metadata=_help("worker failures retried from the last checkpoint"))

    def __post_init__(self) -> None:
        if self.name is not None:
            _require(bool(self.name) and "/" not in self.name and not self.name.startswith("."),
                     "run.name", f"must be a plain folder name, got {self.name!r}")
        _require(self.checkpoints_kept >= 1, "run.checkpoints_kept", f"must be >= 1, got {self.checkpoints_kept}")
        _require(self.max_failures >= -1, "run.max_failures", f"must be >= -1, got {self.max_failures}")


@dataclass
class RegistryConfig:
    path: str = field(
        default_factory=lambda: os.path.join(default_home(), "registry"),
        metadata=_help("model registry shared by train, tune and serve: a folder or a URI such as "
                       "s3://bucket/registry; on a cluster, storage every node reaches ($MLP_HOME/registry)"),
    )
    model_name: str = field(default="mlp", metadata=_help("name the model is promoted under"))

    def __post_init__(self) -> None:
        _require(bool(self.model_name) and "/" not in self.model_name, "registry.model_name",
                 f"must be a plain folder name, got {self.model_name!r}")


@dataclass
class TrackConfig:
    tensorboard: bool = field(
        default=True,
        metadata=_help("write TensorBoard event files: a training run's under <run>/tensorboard "
                       "(tensorboard --logdir <run storage>); Tune trials always write their own"),
    )
    mlflow: Optional[str] = field(
        default=None,
        metadata=_help("MLflow tracking URI: a folder (kept as <folder>/mlflow.db plus artifacts, no server), "
                       "sqlite:///file.db, or http://server:5000; off when unset. Needs the mlflow extra"),
    )
    mlflow_experiment: str = field(default="mlp", metadata=_help("MLflow experiment the runs are logged under"))

    def __post_init__(self) -> None:
        _require(self.mlflow is None or bool(self.mlflow.strip()), "track.mlflow",
                 "must be a folder or a tracking URI (or unset)")
        _require(bool(self.mlflow_experiment.strip()), "track.mlflow_experiment", "must not be empty")


@dataclass
class TuneConfig:
    num_samples: int = field(default=8, metadata=_help("trials to sample from the space"))
    space: dict[str, str] = field(
        default_factory=lambda: {"model.hidden_sizes": "choice:32,64,128,256,512",
                                 "optim.lr": "loguniform:0.001:0.5"},
        metadata=_help("search space by dotted key, e.g. --tune.space.optim.lr loguniform:1e-3:0.5"),
    )
    search: str = field(default="random", metadata=_help("random | grid | optuna"))
    grace_period: int = field(default=1, metadata=_help("ASHA: epochs every trial runs before it may be stopped"))
    reduction_factor: float = field(default=3.0, metadata=_help("ASHA: keep 1/reduction_factor at each rung"))
    early_stopping: bool = field(default=True, metadata=_help("stop poor trials early with ASHA"))
    workers_per_trial: int = field(default=1, metadata=_help("training workers inside each trial"))
    max_concurrent: int = field(default=0, metadata=_help("trials at once; 0 = as many as the cluster's CPUs fit"))
    resume: bool = field(default=False, metadata=_help("finish an interrupted sweep of the same run.name"))
    runner: str = field(
        default="auto",
        metadata=_help("how a trial trains: process (the loop in the trial's actor) | trainer (a TorchTrainer "
                       "per trial) | auto (process for 1 worker, measured faster; trainer for more)"),
    )

    def __post_init__(self) -> None:
        _require(self.num_samples >= 1, "tune.num_samples", f"must be >= 1, got {self.num_samples}")
        _require(self.search in SEARCHERS, "tune.search",
                 f"must be one of {', '.join(SEARCHERS)}, got {self.search!r}")
        _require(self.grace_period >= 1, "tune.grace_period", f"must be >= 1, got {self.grace_period}")
        _require(self.reduction_factor > 1, "tune.reduction_factor", f"must be > 1, got {self.reduction_factor}")
        _require(self.workers_per_trial >= 1, "tune.workers_per_trial", f"must be >= 1, got {self.workers_per_trial}")
        _require(self.max_concurrent >= 0, "tune.max_concurrent", f"must be >= 0, got {self.max_concurrent}")
        _require(self.runner in TRIAL_RUNNERS, "tune.runner",
                 f"must be one of {', '.join(TRIAL_RUNNERS)}, got {self.runner!r}")
        _require(not (self.runner == "process" and self.workers_per_trial > 1), "tune.runner",
                 "process runs one worker per trial; use trainer (or auto) for workers_per_trial > 1")


@dataclass
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata=_help("HTTP bind address (0.0.0.0 exposes it)"))
    port: int = field(default=8000, metadata=_help("HTTP port"))
    version: str = field(
        default="latest",
        metadata=_help("registry version to serve: latest, vN, or an alias such as champion "
                       "(set with `mlp-registry alias set champion vN`); latest and aliases are followed live"),
    )
    checkpoint: Optional[str] = field(default=None, metadata=_help("serve this checkpoint folder instead"))
    max_batch_size: int = field(default=64, metadata=_help("dynamic batching: most requests per model call"))
    batch_wait_timeout_s: float = field(
        default=0.0,
        metadata=_help("dynamic batching: longest wait to fill a batch; 0 batches only the requests already "
                       "queued, so a lone request never waits"),
    )
    max_instances: int = field(default=1024, metadata=_help("most instances in one request"))
    max_body_bytes: int = field(default=8 * 1024 * 1024, metadata=_help("largest request body"))
    max_image_pixels: int = field(
        default=1024 * 1024,
        metadata=_help("largest uploaded image (width*height): every image is reduced to 28x28 and decoding costs "
                       "time per pixel, so 1024x1024 (36x the model's 28 px side) keeps a small PNG from asking "
                       "for 16 MP of work"),
    )
    decode_threads: int = field(
        default=1, metadata=_help("threads per replica that decode images, off the replica's event loop"))
    decode_queue: int = field(
        default=8,
        metadata=_help("images that may wait for a decode thread (each wait <= ~9 decodes, ~0.5 s at the pixel "
                       "limit); beyond that a quick 503"))
    admin_token_file: Optional[str] = field(
        default=None,
        metadata=_help("file holding the token POST /admin/reload requires when serve.host is not loopback "
                       "(else $MLP_ADMIN_TOKEN in the replica's environment; with neither the route is off)"),
    )
    api_keys_file: Optional[str] = field(
        default=None,
        metadata=_help("file of SHA-256 digests of the API keys POST /predict then requires, loopback or not "
                       "(one per line, optionally name:digest; `python -m serve.keys new` adds one); re-read "
                       "within a second of a change, no restart; unset: /predict is open"),
    )
    min_replicas: int = field(default=1, metadata=_help("autoscaling lower bound"))
    max_replicas: int = field(default=2, metadata=_help("autoscaling upper bound"))
    target_ongoing_requests: float = field(default=16, metadata=_help("autoscaling target per replica"))
    max_ongoing_requests: int = field(default=64, metadata=_help("requests a replica works on at once"))
    max_queued_requests: int = field(default=256, metadata=_help("queued beyond that before 503"))
    request_timeout_s: float = field(default=10.0, metadata=_help("requests slower than this get 504"))
    replica_cpus: float = field(default=0.5, metadata=_help("CPUs reserved per replica"))
    access_log: bool = field(default=True, metadata=_help("one log line per request in each replica's log"))
    load_grace_s: float = field(
        default=5.0,
        metadata=_help("a starting replica retries loading its model this long; without a model by then it "
                       "fails Serve's health check and gets no traffic (0: one try)"),
    )
    health_check_period_s: float = field(
        default=2.0, metadata=_help("seconds between Serve's health checks of a replica (Ray's default: 10)"))
    health_check_timeout_s: float = field(
        default=5.0, metadata=_help("a health check unanswered this long counts as failed (Ray's default: 30)"))

    def __post_init__(self) -> None:
        _require(1 <= self.port <= 65535, "serve.port", f"must be in 1..65535, got {self.port}")
        _require(math.isfinite(self.load_grace_s) and self.load_grace_s >= 0, "serve.load_grace_s",
                 f"must be a finite number >= 0, got {self.load_grace_s}")
        _require(VERSION_NAME.match(self.version) is not None, "serve.version",
                 f"must be 'latest', vN or an alias name (letters, digits, - and _), got {self.version!r}")
        for key in ("max_batch_size", "max_instances", "max_body_bytes", "max_image_pixels",
                    "min_replicas", "max_ongoing_requests", "max_queued_requests", "decode_threads"):
            value = getattr(self, key)
            _require(value >= 1, f"serve.{key}", f"must be >= 1, got {value}")
        _require(self.decode_queue >= 0, "serve.decode_queue", f"must be >= 0, got {self.decode_queue}")
        # Pillow refuses images above 2 x 89 MP itself, with a message of its own; stay well below.
        _require(self.max_image_pixels <= 64 * 1024 * 1024, "serve.max_image_pixels",
                 f"must be <= {64 * 1024 * 1024} (64 MP), got {self.max_image_pixels}")
        _require(self.admin_token_file is None or bool(self.admin_token_file.strip()), "serve.admin_token_file",
                 "must be a file path (or unset)")
        _require(self.max_replicas >= self.min_replicas, "serve.max_replicas",
                 f"must be >= serve.min_replicas ({self.min_replicas}), got {self.max_replicas}")
        _require(self.batch_wait_timeout_s >= 0, "serve.batch_wait_timeout_s",
                 f"must be >= 0, got {self.batch_wait_timeout_s}")
        for key in ("request_timeout_s", "replica_cpus", "target_ongoing_requests",
                    "health_check_period_s", "health_check_timeout_s"):
            value = getattr(self, key)
            _require(value > 0, f"serve.{key}", f"must be > 0, got {value}")


@dataclass
class Config:
    """The whole tree; each section is one attribute."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schema: SchemaConfig = field(default_factory=SchemaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict: JSON-safe, the form that crosses the Ray boundary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Rebuild and validate from ``to_dict`` output or a YAML mapping."""
        return build(cls, data)


_CHECKS = {bool: ((bool,), "true or false"), int: ((int,), "a whole number"),
           float: ((int, float), "a number"), str: ((str, int, float), "text")}


def coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the field type ``tp``; strings (CLI) are read as YAML scalars first.

    Numbers widen (int -> float) but never narrow, and bools are never numbers, so
    ``--optim.lr true`` is refused rather than read as 1. ``none``/``null``/``~`` fill Optional fields.
    """
    args = typing.get_args(tp)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
        if type(None) in args:
            return None
        if value is None or tp is not str:  # a text field takes "none" as its word (optim.schedule none)
            raise ConfigError(key, "a value is required")
    if type(None) in args:  # Optional[X] -> X
        tp = next(a for a in args if a is not type(None))
        args = typing.get_args(tp)
    if typing.get_origin(tp) is list:
        if isinstance(value, str):  # "256,128", "[256, 128]" or "100"
            value = [v for v in (p.strip() for p in value.strip().strip("[]").split(",")) if v]
        return [coerce(key, args[0], v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return {str(k): coerce(f"{key}.{k}", args[1], v) for k, v in value.items()}
    if tp not in _CHECKS:
        raise ConfigError(key, f"unsupported type {tp!r}")
    if isinstance(value, str) and tp is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(key, f"cannot read {value!r} as {tp.__name__}") from None
    types_ok, wanted = _CHECKS[tp]
    if isinstance(value, types_ok) and (tp is bool or not isinstance(value, bool)):
        return tp(value)
    raise ConfigError(key, f"expected {wanted}, got {value!r}")


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a nested mapping, refusing unknown keys by their dotted name."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "<config>", f"expected a mapping, got {data!r}")
    hints, names = typing.get_type_hints(cls), [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}", f"unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for name in (n for n in names if n in data):
        tp, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            values[name] = build(tp, data[name] or {}, key + ".")
        else:
            values[name] = coerce(key, tp, data[name])
    return cls(**values)
