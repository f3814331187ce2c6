"""Ray Train wrapper around ``mlp.loop``: the only module in ``mlp/`` that knows Ray Train.

It translates the typed config into Ray objects (``ScalingConfig``,
``RunConfig``, ``CheckpointConfig``, ``FailureConfig``), runs the plain loop on
every worker, and turns each epoch into a ``ray.train.report`` with a
checkpoint written by rank 0. Tune reuses ``build_trainer`` for multi-worker
trials, so there is one ``ScalingConfig`` in the project.
"""

from __future__ import annotations

import os
import resource
import socket
import tempfile
import time
from typing import Any, Callable, Optional

import torch

from mlp.distributed import rayenv
from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.data import memory_budget_mb
from mlp.loop import fit, prepare, set_threads
from mlp.distributed.recorder import RunRecorder
from mlp.distributed.runfiles import RunFiles, node_of_this_process
from mlp.registry.storage import normalize
from mlp.reports.tracking import MlflowRun


def progress_line(metrics: dict[str, Any], epochs: int) -> str:
    """One human line per epoch; the same format in every driver."""
    return (f"epoch {metrics['epoch']:>3}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
            f"train_acc {metrics['train_accuracy']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_acc {metrics['val_accuracy']:.4f}  {metrics['epoch_s']:.1f}s  "
            f"{metrics['samples_per_s']:,.0f} samples/s")


ATTEMPT_KEY = "_attempt_token"  # rides in train_loop_config beside the config sections


class AttemptSuperseded(RuntimeError):
    """A newer attempt of the same run has started; this one must stop writing."""


def train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: rebuild the config, resume if Ray hands us a checkpoint, fit.

    Workers write nothing themselves: every rank reports its metrics and node,
    rank 0 adds the checkpoint, and ``RunRecorder`` (in the controller) writes
    the run's files. Rank 0 checks the run's attempt token before each
    checkpoint, so a straggler of a killed driver cannot add one to a resumed run.
    """
    import ray.train
    import ray.train.torch

    token = config.get(ATTEMPT_KEY)
    cfg = Config.from_dict({k: v for k, v in config.items() if k != ATTEMPT_KEY})
    set_threads(cfg)
    from mlp.distributed.ray_compat import quiet_train_report_logs

    quiet_train_report_logs()  # our own progress line says once what Ray Train logs per report
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")

    streamed = None
    if cfg.data.ingest == "stream":
        from mlp.distributed.ingest import StreamedSplits

        streamed = StreamedSplits(cfg.data.seed, device, cfg.schema.input_size, memory_budget_mb(cfg.data))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            model, optimizer, data, state = prepare(cfg, device, resume_from=folder, data=streamed)
        if rank == 0:
            print(f"resuming after epoch {state.epoch} from {checkpoint.path}", flush=True)
    else:
        model, optimizer, data, state = prepare(cfg, device, data=streamed)
    exchange = None  # what sums the gradients over the ranks, and times it (None with one worker)
    if world > 1 and device.type == "cpu" and cfg.scaling.shared_memory_allreduce:
        from mlp.distributed.allreduce import share_gradients

        exchange = share_gradients(model, optimizer)  # collective; None when the ranks cannot share memory
    if exchange is None:
        # Wraps in DDP only when world > 1; moves to the worker's GPU when use_gpu.
        model = ray.train.torch.prepare_model(model, move_to_device=device)
        if world > 1 and device.type == "cpu":
            from mlp.distributed.allreduce import time_ddp_exchange

            exchange = time_ddp_exchange(model)
    node = node_of_this_process()
    files = RunFiles(cfg.run.storage_path, str(cfg.run.name))

    def on_epoch_end(metrics: dict[str, Any], model, optimizer, state: dict[str, Any]) -> None:
        node["peak_rss_mb"] = peak_rss_mb()  # recorded per rank in ranks.json
        if streamed is not None:  # the worker's own memory, without the object store pages it maps
            node.update(start_private_mb=streamed.start_mb, peak_private_mb=streamed.peak_mb)
        if rank != 0:
            ray.train.report({**metrics, **node})
            return
        print(progress_line(metrics, cfg.train.epochs), flush=True)
        if token and not files.owns(token):
            raise AttemptSuperseded(f"run {cfg.run.name} was taken over by a newer attempt; this one stops")
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, model, cfg, state, optimizer)
            ray.train.report({**metrics, **node}, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    spent = [0.0]  # exchange seconds up to the previous epoch

    def exchange_seconds() -> dict[str, Any]:
        """This epoch's seconds in the gradient exchange: the run's advice reads them (``mlp.reports.run_report``)."""
        if exchange is None:
            return {}
        epoch_s, spent[0] = exchange.exchange_s - spent[0], exchange.exchange_s
        return {"exchange_s": epoch_s}

    fit(cfg, model, optimizer, data, state, on_epoch_end, rank=rank, world=world, epoch_extras=exchange_seconds)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_trainer(cfg: Config, worker_fn: Callable[[dict[str, Any]], None] = train_worker,
                  callbacks: Optional[list[Any]] = None, attempt_token: Optional[str] = None,
                  mlflow_run: Optional[MlflowRun] = None):
    """A ``TorchTrainer`` for ``cfg``; a fixed ``run.name`` makes it resumable.

    ``callbacks`` are extra Ray Train callbacks (Tune passes its reporting
    callback here); ``RunRecorder`` is always added, fenced by ``attempt_token``,
    writing TensorBoard events when ``track.tensorboard`` and logging epochs to
    ``mlflow_run`` (started by the driver) when given.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    rayenv.apply_driver_env()
    storage = normalize(cfg.run.storage_path)
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    streamed = {}
    if cfg.data.ingest == "stream":
        from mlp.distributed.ingest import build_datasets, data_config

        streamed = {"datasets": build_datasets(cfg), "dataset_config": data_config()}
    return TorchTrainer(
        worker_fn,
        train_loop_config={**cfg.to_dict(), ATTEMPT_KEY: attempt_token},
        **streamed,
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=cfg.scaling.placement_strategy),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.checkpoints_kept),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            callbacks=[RunRecorder(storage, str(cfg.run.name), attempt_token, cfg.track.tensorboard, mlflow_run),
                       *(callbacks or [])],
        ),
    )


def with_run_name(cfg: Config, prefix: str = "") -> Config:
    """Give an unnamed run a fresh readable name (``<prefix><dataset>-<timestamp>``); local paths made absolute."""
    data = cfg.to_dict()
    data["run"]["storage_path"] = normalize(cfg.run.storage_path)
    if cfg.run.name is None:
        data["run"]["name"] = f"{prefix}{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Config.from_dict(data)


def init_ray(num_cpus: Optional[int] = None) -> None:
    """Join ``RAY_ADDRESS`` / the job's cluster, or start a local one.

    ``num_cpus`` is only for a local cluster: a job submitted with ``ray job
    submit`` must not pass it, so it is applied only when no address is set.
    """
    import ray

    rayenv.apply_driver_env()
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    rayenv.apply_cluster_env()  # read by the raylet and workers of the cluster ray.init may start here
    options: dict[str, Any] = {} if num_cpus is None else {"num_cpus": num_cpus}
    address = None  # join a cluster `ray start` left on this machine, if any
    if (stale := stale_local_cluster()) is not None:
        print(f"ignoring {stale}; starting a local Ray cluster", flush=True)
        address = "local"
        options.update(local_cluster_options())
    ray.init(address=address, **options)


def local_cluster_options() -> dict[str, Any]:
    """``ray.init`` options for a local cluster started beside a dead one that ``ray start`` recorded.

    Ray Train's PlacementGroupCleaner asks the State API whether the run's controller is alive, at the
    address it auto-detects: ``RAY_API_SERVER_ADDRESS``, else the recorded (dead) cluster's. Unanswered,
    every run's end waits 12 s for the cleaner to give up (and a Tune trial's workers are not freed).
    So the dashboard gets a free port, named to this job's processes, the controllers included.
    """
    with socket.socket() as sock:  # a port nothing listens on now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {"dashboard_port": port, "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}}


def stale_local_cluster() -> Optional[str]:
    """A sentence naming the dead cluster in Ray's "current cluster" file, or None.

    ``ray.init()`` with no address joins the cluster that ``ray start`` recorded in
    its address file (``ray_compat.ray_address_file``). A head that died without
    ``ray stop`` leaves that file behind, and ``ray.init()`` then waits minutes for a GCS that
    will never answer; one TCP connect (1 s at most) tells the two cases apart.
    """
    from mlp.distributed.ray_compat import ray_address_file

    path = ray_address_file()
    try:
        with open(path) as handle:
            address = handle.read().strip()
    except OSError:
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return None
    except (OSError, ValueError):
        return f"the Ray cluster address {address} in {path} (nothing answers there)"
