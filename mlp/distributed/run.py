"""One training run as every command runs it: take the run, train on Ray Train, evaluate, write its files.

The driver validates the config, joins (or starts) a Ray cluster, takes the
run (``mlp.distributed.runfiles``: a resumed run waits until a previous attempt's
processes are gone), runs the ``TorchTrainer`` from ``mlp.distributed.trainer``,
evaluates the final checkpoint once on the test set, and writes ``summary.json``
beside ``metrics.jsonl`` in the run folder on the run's storage, with ``report.md``
and ``learning_curves.png`` (``mlp.reports``). ``promote`` copies the result into
the model registry. With ``--track.mlflow`` the driver starts (or, on resume,
continues) the run's MLflow run, which ``RunRecorder`` fills live, and closes it
with the test metrics, the model and its registry version.
"""

from __future__ import annotations

import time
from typing import Any

from mlp import registry
from mlp.checkpoint import read_state
from mlp.config import Config
from mlp.console import RunInterrupted
from mlp.data import resolve_data
from mlp.distributed.runfiles import RunFiles
from mlp.distributed.trainer import build_trainer, init_ray, with_run_name
from mlp.loop import evaluate_checkpoint
from mlp.preflight.checks import check_cluster
from mlp.reports import tracking
from mlp.reports.run_report import exchange_advice, write_run_report


def run_training(cfg: Config, promote: bool = False, move_latest: bool = True) -> dict[str, Any]:
    """Train (or resume) the run named in ``cfg`` and return its summary (``move_latest``: see ``registry.promote``)."""
    mlflow_target = tracking.require_mlflow(cfg.track)  # exit 2 before anything is written
    cfg = with_run_name(cfg)
    files = RunFiles(cfg.run.storage_path, str(cfg.run.name))
    summary = files.read_summary()
    if summary is not None:
        print(f"run {cfg.run.name} already finished: test accuracy {summary['test_accuracy']:.4f} "
              f"({files.summary}). Use a new --run.name to train again.")
        return summary
    cfg = resolve_data(cfg)  # a missing dataset or a bad table exits here, before Ray starts
    print(f"run {cfg.run.name}: {cfg.scaling.num_workers} worker(s), {cfg.train.epochs} epochs on "
          f"{cfg.data.name}; results in {files.dir}", flush=True)
    started = time.perf_counter()
    init_ray()
    print(check_cluster(cfg, "train").summary(), flush=True)  # exits 2 before anything is written
    attempt = files.begin_attempt()
    mlflow_run = tracking.start_run(mlflow_target, files.dir, str(cfg.run.name), cfg.to_dict()) \
        if mlflow_target else None
    try:
        result = build_trainer(cfg, attempt_token=attempt.token, mlflow_run=mlflow_run).fit()
    except (KeyboardInterrupt, SystemExit):  # Ray Train turns Ctrl-C into a graceful abort + exit
        tracking.end_run(mlflow_run, "KILLED")
        raise RunInterrupted(f"interrupted: run this command again with --run.name {cfg.run.name} "
                             f"--run.storage_path {cfg.run.storage_path} to resume from the last checkpoint"
                             ) from None
    except Exception:
        tracking.end_run(mlflow_run, "FAILED")
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.run.name} reported no checkpoint; see {files.dir}")
    with result.checkpoint.as_directory() as folder:
        state = read_state(folder)
        history = state.get("history") or []
        test = evaluate_checkpoint(folder)
        summary = {
            "run_name": cfg.run.name, "dataset": cfg.data.name, "epochs": state.get("epoch"),
            "num_workers": cfg.scaling.num_workers, **test,
            "best_val_accuracy": state.get("best_val_accuracy"),
            "final_val_accuracy": history[-1].get("val_accuracy") if history else None,
            "train_seconds": state.get("elapsed_s"), "wall_seconds": time.perf_counter() - started,
            "target_accuracy": cfg.train.target_accuracy, "time_to_target_s": state.get("time_to_target_s"),
            "checkpoint": checkpoint_uri(result.checkpoint), "ranks": files.read_ranks(),
            "advice": exchange_advice(history, cfg.scaling.num_workers, cfg.train.batch_size, cfg.optim.lr),
        }
        if promote:
            version = registry.promote(cfg.registry.path, cfg.registry.model_name, folder, summary,
                                       registry.make_provenance(cfg, result.checkpoint.path), move_latest)
            summary["promoted"] = str(version)
        if cfg.track.tensorboard:  # the controller wrote it live; this only completes a file it could not
            tracking.write_tensorboard(files.dir, str(cfg.run.name), history)
        if mlflow_run is not None:
            tracking.finish_run(mlflow_run, history, test, folder, summary.get("promoted"))
            summary["mlflow_run_id"] = mlflow_run.run_id
    summary["report"] = str(write_run_report(files.dir, cfg.to_dict(), summary, history, summary["ranks"]))
    files.write_summary(summary)
    return summary


def checkpoint_uri(checkpoint) -> str:
    """Where a Ray checkpoint lives, as a path or URI a user can pass back (``--serve.checkpoint``)."""
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


def print_summary(summary: dict[str, Any]) -> None:
    target = ""
    if summary.get("target_accuracy") is not None:
        reached = summary.get("time_to_target_s")
        target = (f"  time to val acc {summary['target_accuracy']}: "
                  + (f"{reached:.1f}s" if reached is not None else "not reached"))
    print(f"\nrun {summary['run_name']}: test accuracy {summary['test_accuracy']:.4f}  "
          f"best val accuracy {summary['best_val_accuracy']:.4f}  wall {summary['wall_seconds']:.1f}s{target}")
    for rank in summary.get("ranks") or []:
        print(f"rank {rank['rank']} ran on node {rank['node_ip']} ({str(rank['node_id'])[:12]})")
    print(f"checkpoint: {summary['checkpoint']}")
    if "promoted" in summary:
        print(f"promoted to {summary['promoted']}")
    if summary.get("report"):
        print(f"report: {summary['report']} (with learning_curves.png)")
    if summary.get("advice"):
        print(f"advice: {summary['advice']}")
