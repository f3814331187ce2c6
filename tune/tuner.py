"""A sweep as a library: search hidden size x learning rate with Ray Tune (``mlp sweep`` runs it).

The driver validates the config and the search space (exit 2 before Ray
starts), joins (or starts) a Ray cluster, runs one Tune trial per sampled
configuration with ASHA stopping poor trials early, then prints the ranked
table, saves it (CSV, JSON) with two plots, and promotes the winner into the
model registry. Re-running with the same ``--run.name`` resumes an interrupted
sweep; a finished one is only reported again. Trials train through ``mlp``
(``tune.trial``): this package has no training loop, model or ScalingConfig.
Tune's own loggers write each trial's TensorBoard events; with ``--track.mlflow``
Ray's MLflow callback logs one MLflow run per trial, and the winner's run is
tagged with the registry version it was promoted to.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from mlp.reports import tracking
from mlp.console import RunInterrupted
from mlp.config import Config, ConfigError
from mlp.distributed.trainer import init_ray, with_run_name
from mlp.preflight.checks import check_cluster, sweep_request
from mlp.registry.storage import Location, join
from mlp.data import resolve_data
from tune import plots, sweep_report
from tune.space import Dim, describe, grid_size, parse_space, to_param_space
from tune.trial import (TrialPlan, base_for_trials, plan_trials, run_in_process, run_with_trainer, trial_dirname,
                        trial_name)

log = logging.getLogger(__name__)
SUMMARY_FILE = "sweep_summary.json"
CONFIG_FILE = "sweep_config.json"
METRIC, MODE = "val_accuracy", "max"


class SweepInterrupted(RunInterrupted):
    """Tune stopped before every trial finished (Ctrl-C); the state on disk resumes it."""


def sweep_dir(cfg: Config) -> Location:
    """The sweep's folder on its storage (a local folder or a URI such as s3://bucket/runs/<name>)."""
    return Location.of(join(cfg.run.storage_path, str(cfg.run.name)))


def resolve(cfg: Config) -> Config:
    """Absolute paths, and a readable name (``sweep-<dataset>-<time>``) for an unnamed sweep."""
    return with_run_name(cfg, prefix="sweep-")


def check_space(cfg: Config) -> list[Dim]:
    """The parsed space; every problem is a ConfigError naming the key (exit 2)."""
    dims = parse_space(cfg.tune.space, cfg.tune.search)
    if cfg.tune.search == "grid" and grid_size(dims) > 10_000:
        raise ConfigError("tune.space", f"the grid has {grid_size(dims)} points; use random or optuna search")
    return dims


def expected_trials(cfg: Config, dims: list[Dim]) -> int:
    return grid_size(dims) if cfg.tune.search == "grid" else cfg.tune.num_samples


def build_search(cfg: Config, concurrency: int) -> Any:
    """Optuna's TPE (a ``Searcher``: Tune limits it), or Tune's own random/grid generator.

    The generator is not a ``Searcher``, so Tune ignores ``max_concurrent_trials``
    for it; it takes the limit itself. Seeded, so two sweeps with the same seed
    sample the same configurations.
    """
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if cfg.tune.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.data.seed)),
                                  max_concurrent=concurrency)
    return BasicVariantGenerator(random_state=cfg.data.seed, max_concurrent=concurrency)


def build_scheduler(cfg: Config) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not cfg.tune.early_stopping:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs, grace_period=cfg.tune.grace_period,
                         reduction_factor=cfg.tune.reduction_factor)


def make_trainable(cfg: Config, plan: TrialPlan) -> Any:
    from ray import tune

    fn = run_in_process if plan.runner == "process" else run_with_trainer
    return tune.with_resources(tune.with_parameters(fn, base=base_for_trials(cfg, plan)), plan.trial_resources)


def mlflow_callbacks(cfg: Config) -> list[Any]:
    """Ray's MLflow logger when ``track.mlflow`` is set: one MLflow run per trial, tagged with the sweep.

    The experiment is created first with the target's artifact folder (Ray's
    callback would create it under ./mlruns). Artifacts are not copied
    (``save_artifact=False``): a trial's result files already sit in the sweep
    folder, and the model that matters is the promoted one, which the winner's
    run points to through its ``registry_path`` tag.
    """
    target = tracking.mlflow_target(cfg.track)
    if target is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    tracking.ensure_experiment(target)
    return [MLflowLoggerCallback(tracking_uri=target.tracking_uri, experiment_name=target.experiment,
                                 tags={tracking.SWEEP_TAG: str(cfg.run.name), "kind": "trial"},
                                 save_artifact=False)]


def tag_winner(cfg: Config, promoted: dict[str, Any]) -> None:
    """Tag the winner trial's MLflow run(s) with the registry version it was promoted to."""
    target = tracking.mlflow_target(cfg.track)
    if target is None:
        return
    runs = tracking.tag_trial_runs(target, str(cfg.run.name), trial_name(promoted["trial_id"]),
                                   promoted["registry_dir"])
    if not runs:
        log.warning("no MLflow run of trial %s in experiment %s at %s to tag with %s", promoted["trial_id"],
                    target.experiment, target.tracking_uri, promoted["version"])


def make_tuner(cfg: Config, dims: list[Dim], plan: TrialPlan, resume: bool) -> Any:
    """A new Tuner, or the interrupted one restored from ``sweep_dir`` (finished trials stay finished)."""
    from ray import tune

    trainable = make_trainable(cfg, plan)
    path = sweep_dir(cfg)
    if resume:
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=to_param_space(dims, cfg.tune.search),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, search_alg=build_search(cfg, plan.concurrency), scheduler=build_scheduler(cfg),
            num_samples=1 if cfg.tune.search == "grid" else cfg.tune.num_samples,
            reuse_actors=plan.runner == "process",
            trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=cfg.run.name, storage_path=cfg.run.storage_path,
            # Every epoch's checkpoint is kept while the sweep runs: Tune's experiment snapshot
            # lags the trials by seconds, and a killed driver's snapshot can name a checkpoint
            # that retention already deleted, so resume failed ("does not exist on storage
            # anymore"). finish() prunes to run.checkpoints_kept per trial at the end.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=cfg.run.max_failures),
            verbose=1,  # the live trial table and trial starts/ends; per-epoch results go to files
            callbacks=mlflow_callbacks(cfg),  # Tune adds its CSV, JSON and TensorBoard loggers itself
        ),
    )


def prepare(cfg: Config) -> tuple[Config, list[Dim], bool]:
    """(config to run, its dims, resume?) for ``cfg``; resuming reads the sweep's saved config."""
    from ray.tune import Tuner

    if cfg.tune.resume and cfg.run.name is None:
        raise ConfigError("run.name", "--resume needs the --run.name of the sweep to finish")
    cfg = resolve(cfg)
    path = sweep_dir(cfg)
    resume = path.is_dir() and Tuner.can_restore(str(path))
    if cfg.tune.resume and not resume:
        raise ConfigError("tune.resume", f"no interrupted sweep to resume at {path}")
    if resume and (path / CONFIG_FILE).is_file():
        saved = json.loads((path / CONFIG_FILE).read_text())
        saved["registry"] = cfg.to_dict()["registry"]  # where to promote may change; the sweep may not
        cfg = Config.from_dict(saved)
    return cfg, check_space(cfg), resume


def run_sweep(cfg: Config, promote: bool = True, move_latest: bool = True) -> dict[str, Any]:
    """Run (or resume) the sweep named in ``cfg``; returns its summary (also saved as JSON).

    ``move_latest=False`` promotes the winner without pointing ``latest`` at it (``registry.promote``)."""
    import ray

    tracking.require_mlflow(cfg.track)  # exit 2 before anything is written
    cfg, dims, resume = prepare(cfg)
    tracking.require_mlflow(cfg.track)  # a resumed sweep tracks where it started
    path = sweep_dir(cfg)
    if (path / SUMMARY_FILE).is_file():
        summary = json.loads((path / SUMMARY_FILE).read_text())
        print(f"sweep {cfg.run.name} already finished ({path / SUMMARY_FILE}); use a new --run.name to sweep again.")
        return summary
    cfg = resolve_data(cfg)
    init_ray()
    plan = plan_trials(cfg, ray.cluster_resources())
    trial = sweep_request(cfg, plan.trial_resources if plan.runner == "trainer" else None, plan.worker_cpus)
    print(check_cluster(cfg, "sweep", requests=[trial]).summary(), flush=True)
    print(f"{'resuming' if resume else 'starting'} sweep {cfg.run.name}: {expected_trials(cfg, dims)} trials, "
          f"{cfg.tune.search} search, {'ASHA' if cfg.tune.early_stopping else 'no early stopping'}, "
          f"up to {cfg.train.epochs} epochs on {cfg.data.name}; results in {path}\n"
          f"{describe(dims)}\n{plan.describe()}", flush=True)
    path.makedirs()
    if not resume:
        (path / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    started = time.perf_counter()
    results = make_tuner(cfg, dims, plan, resume).fit()
    wall = time.perf_counter() - started
    if results.num_terminated + results.num_errors < expected_trials(cfg, dims):
        raise SweepInterrupted(f"sweep {cfg.run.name} stopped before all trials finished; resume with: "
                               f"mlp-sweep --run.storage_path {cfg.run.storage_path} --run.name {cfg.run.name} --resume")
    return finish(cfg, dims, results, wall, promote, move_latest)


def load_results(path: Location) -> Any:
    """The ``ResultGrid`` of a sweep on disk, read without running anything."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(str(path), default_metric=METRIC, default_mode=MODE))


def promote_finished(cfg: Config) -> dict[str, Any]:
    """Promote the winner of an already finished sweep again (e.g. one run with ``--no-promote``)."""
    from tune.promote import promote_best

    cfg, dims, _ = prepare(dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, resume=False)))
    path = sweep_dir(cfg)
    if not (path / SUMMARY_FILE).is_file():
        raise ConfigError("run.name", f"no finished sweep at {path}")
    results = load_results(path)
    promoted = promote_best(cfg, sweep_report.collect(results, dims, cfg.train.epochs), results, path)
    tag_winner(cfg, promoted)
    print(f"promoted trial {promoted['trial_id']} of {cfg.run.name} to {promoted['registry_dir']}")
    return promoted


def finish(cfg: Config, dims: list[Dim], results: Any, wall: float, promote: bool,
           move_latest: bool = True) -> dict[str, Any]:
    """Table, files, plots and promotion of a completed sweep."""
    from tune.promote import promote_best, prune_checkpoints

    path = sweep_dir(cfg)
    rows = sweep_report.collect(results, dims, cfg.train.epochs)
    print("\n" + sweep_report.format_table(rows, dims))
    csv_path, json_path = sweep_report.save_table(rows, dims, path)
    pngs = plots.plot_all(rows, dims, path, cfg.train.epochs)
    promoted = promote_best(cfg, rows, results, path, move_latest) if promote else None
    if promoted:
        tag_winner(cfg, promoted)
    prune_checkpoints(results, cfg.run.checkpoints_kept)
    best = {k: v for k, v in rows[0].items() if k != "curve"} if rows else None
    summary = {
        "sweep": cfg.run.name, "dir": str(path), "trials": len(rows),
        "stopped_early": sum(r["stopped_early"] for r in rows), "errors": sum(r["status"] == "error" for r in rows),
        "wall_seconds": wall, "best": best, "promoted": promoted,
        "files": [str(p) for p in (csv_path, json_path, *pngs)],
    }
    summary["report"] = str(sweep_report.write_sweep_report(path, cfg.to_dict(), rows, dims, summary, pngs))
    (path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    print(f"\n{summary['trials']} trials ({summary['stopped_early']} stopped early, {summary['errors']} failed) "
          f"in {wall:.1f}s; table and plots in {path}; report: {summary['report']}")
    if promoted:
        print(f"best trial {promoted['trial_id']}: val accuracy {promoted['best_val_accuracy']:.4f}, "
              f"test accuracy {promoted['test_accuracy']:.4f}; promoted to {promoted['registry_dir']}")
    return summary
