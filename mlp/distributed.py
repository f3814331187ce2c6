"""Ray Train wrapper around ``mlp.loop``: the only module in ``mlp/`` that knows Ray Train.

It translates the typed config into Ray objects (``ScalingConfig``,
``RunConfig``, ``CheckpointConfig``, ``FailureConfig``), runs the plain loop on
every worker, and turns each epoch into a ``ray.train.report`` with a
checkpoint written by rank 0. Tune reuses ``build_trainer`` for multi-worker
trials, so there is one ``ScalingConfig`` in the project.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.loop import fit, prepare, set_threads

log = logging.getLogger(__name__)

# Ray Train polls its workers every 2 s by default, which adds up to ~5 s between
# the last report and fit() returning; 0.2 s makes short runs end promptly.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Ray starts workers at nice 15, so on a small node they lose the CPU to Ray's own daemons;
# measured here: 1.25 s -> 1.0 s per Fashion-MNIST epoch. Applies to clusters this process starts.
os.environ.setdefault("RAY_worker_niceness", "0")
# Without this Ray Train re-logs every print of a worker, so progress lines appear twice.
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def progress_line(metrics: dict[str, Any], epochs: int) -> str:
    """One human line per epoch; the same format in every driver."""
    return (f"epoch {metrics['epoch']:>3}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
            f"train_acc {metrics['train_accuracy']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_acc {metrics['val_accuracy']:.4f}  {metrics['epoch_s']:.1f}s  "
            f"{metrics['samples_per_s']:,.0f} samples/s")


def train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: rebuild the config, resume if Ray hands us a checkpoint, fit."""
    import ray.train
    import ray.train.torch

    cfg = Config.from_dict(config)
    set_threads(cfg)
    # Ray Train logs every report and checkpoint at INFO; our own progress line says the same once.
    import ray.train.v2._internal.execution.context as train_context  # its logger is named by file path

    for name in (train_context.__file__, "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            model, optimizer, data, state = prepare(cfg, device, resume_from=folder)
        if rank == 0:
            print(f"resuming after epoch {state.epoch} from {checkpoint.path}", flush=True)
    else:
        model, optimizer, data, state = prepare(cfg, device)
    # Wraps in DDP only when world > 1; moves to the worker's GPU when use_gpu.
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    metrics_path = Path(cfg.run.storage_path) / str(cfg.run.name) / METRICS_FILE

    def on_epoch_end(metrics: dict[str, Any], model, optimizer, state: dict[str, Any]) -> None:
        if rank != 0:
            ray.train.report(metrics)
            return
        print(progress_line(metrics, cfg.train.epochs), flush=True)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with metrics_path.open("a") as out:
            out.write(json.dumps(metrics) + "\n")
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, model, cfg, state, optimizer)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    fit(cfg, model, optimizer, data, state, on_epoch_end, rank=rank, world=world)


def build_trainer(cfg: Config, worker_fn: Callable[[dict[str, Any]], None] = train_worker,
                  callbacks: Optional[list[Any]] = None):
    """A ``TorchTrainer`` for ``cfg``; a fixed ``run.name`` makes it resumable.

    ``callbacks`` are Ray Train callbacks (Tune passes its reporting callback here).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cfg.scaling.cpus_per_worker}
    return TorchTrainer(
        worker_fn,
        train_loop_config=cfg.to_dict(),
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=os.path.abspath(os.path.expanduser(cfg.run.storage_path)),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.checkpoints_kept),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            callbacks=callbacks,
        ),
    )


def with_run_name(cfg: Config, prefix: str = "") -> Config:
    """Give an unnamed run a fresh readable name (``<prefix><dataset>-<timestamp>``) and an absolute storage path."""
    data = cfg.to_dict()
    data["run"]["storage_path"] = os.path.abspath(os.path.expanduser(cfg.run.storage_path))
    if cfg.run.name is None:
        data["run"]["name"] = f"{prefix}{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Config.from_dict(data)


def init_ray(num_cpus: Optional[int] = None) -> None:
    """Join ``RAY_ADDRESS`` / the job's cluster, or start a local one.

    ``num_cpus`` is only for a local cluster: a job submitted with ``ray job
    submit`` must not pass it, so it is applied only when no address is set.
    """
    import ray

    if ray.is_initialized():
        return
    if num_cpus is not None and not os.environ.get("RAY_ADDRESS"):
        ray.init(num_cpus=num_cpus)
    else:
        ray.init()
