"""What one Tune trial runs, and what each trial may reserve on the cluster.

A trial is mlp's own training loop with sampled hyperparameters, run one of two ways:

* ``process``: ``mlp.loop.fit`` in the trial's own actor, reporting each epoch
  to Tune with a checkpoint. For one worker this is the measured-faster path:
  a ``TorchTrainer`` per trial starts a controller and a worker group first
  (figures: docs/tune.md and benchmarks/results/tune.md).
* ``trainer``: the trial builds mlp's ``TorchTrainer`` (``mlp.distributed.build_trainer``,
  the project's one ``ScalingConfig``) and calls ``fit()``; Train workers report
  with ``ray.train.report`` and ``TuneReportCallback`` forwards that to Tune.
  This is the current Ray way of tuning multi-worker runs (``Tuner(TorchTrainer)``
  is deprecated).

``plan_trials`` sizes both so that concurrent trials always fit the cluster:
trials never wait on each other for CPUs (or GPUs) they cannot get.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import Any

from mlp.config import Config, ConfigError
from mlp.registry.storage import join
from tune.space import apply_params

# Ray refuses a trial that reserves nothing ("Cannot initialize a ResourceRequest with
# an empty head and zero worker bundles"), so a TorchTrainer trial's own actor, which
# only waits on fit(), reserves this sliver; its workers get the rest of the trial's share.
DRIVER_CPU = 0.01
TRAIN_RUNS_DIR = "train-runs"


@dataclass(frozen=True)
class TrialPlan:
    """How trials run and what each reserves; ``concurrency`` trials fit the cluster at once."""

    runner: str  # "process" | "trainer"
    trial_resources: dict[str, float]  # reserved by Tune for the trial's actor
    worker_cpus: float  # per Train worker (trainer runner only)
    threads: int  # torch threads per worker
    concurrency: int

    def describe(self) -> str:
        where = ("in the trial's own process" if self.runner == "process"
                 else f"through a TorchTrainer ({self.worker_cpus:g} CPU per worker)")
        return f"trials run {where}; up to {self.concurrency} at once; each trial reserves {self.trial_resources}"


def choose_runner(cfg: Config) -> str:
    """``auto``: one worker runs in-process (measured faster), several through a TorchTrainer.

    A streamed table (``data.ingest stream``) reaches workers only as Ray Data shards, which a
    TorchTrainer hands out: its trials always run through one.
    """
    streamed = cfg.data.ingest == "stream"
    if cfg.tune.runner == "process" and streamed:
        raise ConfigError("tune.runner", "process holds the table in each trial's memory; a streamed table "
                                         "(data.ingest stream) needs tune.runner trainer or auto")
    if cfg.tune.runner != "auto":
        return cfg.tune.runner
    return "process" if cfg.tune.workers_per_trial == 1 and not streamed else "trainer"


def plan_trials(cfg: Config, cluster: dict[str, float]) -> TrialPlan:
    """Resources per trial and how many trials fit ``cluster`` (``ray.cluster_resources()``)."""
    runner = choose_runner(cfg)
    workers, cpw, gpu = cfg.tune.workers_per_trial, cfg.scaling.cpus_per_worker, cfg.scaling.use_gpu
    threads = cfg.train.threads or max(1, round(cpw))
    if runner == "process":
        if workers != 1:
            raise ConfigError("tune.runner", f"process runs one worker; workers_per_trial is {workers}")
        trial = {"CPU": cpw, **({"GPU": 1.0} if gpu else {})}
        worker_cpus = 0.0
    else:
        trial = {"CPU": DRIVER_CPU}
        # Round down to Ray's 1e-4 resource unit so driver + workers never exceed workers * cpw.
        worker_cpus = math.floor((cpw * workers - DRIVER_CPU) / workers * 1e4) / 1e4
        if worker_cpus <= 0:
            raise ConfigError("scaling.cpus_per_worker", f"must leave room for the trial driver, got {cpw}")
    per_trial_cpu = cpw * workers
    fits = [int(cluster.get("CPU", 0) // per_trial_cpu + 1e-9)]
    if gpu:
        fits.append(int(cluster.get("GPU", 0) // workers))
    concurrency = min(fits)
    if concurrency < 1:
        raise ConfigError("tune.workers_per_trial",
                          f"one trial needs {per_trial_cpu:g} CPU{' and ' + str(workers) + ' GPU' if gpu else ''}, "
                          f"the cluster has {cluster.get('CPU', 0):g} CPU and {cluster.get('GPU', 0):g} GPU")
    if cfg.tune.max_concurrent:
        concurrency = min(concurrency, cfg.tune.max_concurrent)
    return TrialPlan(runner, trial, worker_cpus, threads, concurrency)


def base_for_trials(cfg: Config, plan: TrialPlan) -> dict[str, Any]:
    """The sweep config as trials receive it: threads and worker shape fixed by the plan."""
    data = cfg.to_dict()
    data["train"]["threads"] = plan.threads
    if plan.runner == "trainer":
        data["scaling"]["num_workers"] = cfg.tune.workers_per_trial
        data["scaling"]["cpus_per_worker"] = plan.worker_cpus
    return data


def run_in_process(params: dict[str, Any], base: dict[str, Any]) -> None:
    """Tune function trainable: the plain loop in this actor, one checkpoint per epoch."""
    import ray.tune
    import torch

    from mlp.checkpoint import save_checkpoint
    from mlp.loop import fit, prepare, set_threads
    from mlp.distributed.runfiles import node_of_this_process

    cfg = apply_params(base, params)
    # Which node ran the trial (Tune adds node_ip itself, which does not tell two nodes of one host apart).
    node = {"node_id": node_of_this_process()["node_id"]}
    set_threads(cfg)
    device = torch.device("cuda" if cfg.scaling.use_gpu else "cpu")
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:  # a resumed sweep: carry on after the last reported epoch
        with checkpoint.as_directory() as folder:
            model, optimizer, data, state = prepare(cfg, device, resume_from=folder)
    else:
        model, optimizer, data, state = prepare(cfg, device)

    def on_epoch_end(metrics: dict[str, Any], model, optimizer, state_dict: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, model, cfg, state_dict, optimizer)
            # When ASHA stops this trial, report() does not return and the thread ends here.
            ray.tune.report({**metrics, **node}, checkpoint=ray.tune.Checkpoint.from_directory(tmp))

    fit(cfg, model, optimizer, data, state, on_epoch_end)


def run_with_trainer(params: dict[str, Any], base: dict[str, Any]) -> None:
    """Tune function trainable: build mlp's TorchTrainer for this trial and wait for ``fit()``."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from mlp.distributed.trainer import build_trainer
    from tune.release import ReleaseStoppedWorkers

    cfg = apply_params(base, params)
    trial_id = ray.tune.get_context().get_trial_id()
    data = cfg.to_dict()
    # A name fixed by the trial id (no timestamp) is what lets Train resume this trial's run.
    data["run"]["storage_path"] = join(cfg.run.storage_path, str(cfg.run.name), TRAIN_RUNS_DIR)
    data["run"]["name"] = f"trial-{trial_id}"
    # Tune's own loggers (event files, MLflow runs) already track this trial; its Train run adds none.
    data["track"].update(tensorboard=False, mlflow=None)
    # TuneReportCallback forwards each ray.train.report to this trial; ReleaseStoppedWorkers
    # frees the workers if ASHA stops the trial (see tune.release for why Ray's own cleaner may not).
    build_trainer(Config.from_dict(data), callbacks=[TuneReportCallback(), ReleaseStoppedWorkers()]).fit()


def trial_dirname(trial: Any) -> str:
    """Short trial folders (Tune's default packs every parameter into the name); also the trial's name."""
    return trial_name(trial.trial_id)


def trial_name(trial_id: str) -> str:
    """A trial's folder and name, as Tune shows it and MLflow's ``trial_name`` tag holds it."""
    return f"trial_{trial_id}"
