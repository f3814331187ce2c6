"""Where the fixed overhead of ``mlp-train`` goes: a timeline of one real run, phase by phase.

    python benchmarks/probe_startup_phases.py [--workers 1] [--epochs 2] [--rounds 1] [--floor]

Runs the same steps as ``mlp.distributed.run.run_training`` (imports, ``init_ray``,
preflight, taking the run, ``TorchTrainer.fit``) in a fresh process per round and
stamps each step: in the driver, in Ray Train's controller (through a Train
callback) and on rank 0 (through a wrapper around the worker function). The
last phase is the tail: last epoch -> ``fit()`` returns -> test evaluation ->
``ray.shutdown`` -> process exit. ``--floor`` adds, after each round, Ray's own
floor: the same cluster settings and a ``TorchTrainer`` whose train function only
reports once. Prints one table per run and writes
``benchmarks/results/startup_phases.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# The child: one instrumented run. ``T0`` is the parent's clock just before it spawned the process.
CHILD = r'''
import json, os, sys, time
stamps = {"process start": float(os.environ["T0"]), "interpreter up": time.time()}
out, workers, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

from ray.train.v2._internal.execution.callback import ControllerCallback, ReportCallback, WorkerGroupCallback
floor = len(sys.argv) > 4 and sys.argv[4] == "floor"
if not floor:
    from mlp.config import Config
    from mlp.distributed.trainer import build_trainer, init_ray, train_worker
    from mlp.preflight.checks import check_cluster
    from mlp.distributed.runfiles import RunFiles
    from mlp.data import resolve_data
    from mlp.loop import evaluate_checkpoint
else:  # Ray's own floor: the same cluster settings, an empty train function, no project code in Ray's processes
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from mlp.distributed.trainer import init_ray  # driver side only; 0.05 s once Ray Train's torch is imported
stamps["imports done"] = time.time()


class Stamps(ControllerCallback, WorkerGroupCallback, ReportCallback):
    """Controller-side stamps, appended to a file the driver reads afterwards (Ray Train's internal
    callback interfaces: a ``UserCallback`` only sees reports and exceptions)."""

    def __init__(self, path):
        self.path, self.reported = path, False

    def _stamp(self, name):
        with open(self.path, "a") as handle:
            handle.write(json.dumps([name, time.time()]) + "\n")

    def after_controller_start(self, train_run_context):
        self._stamp("controller started")

    def before_worker_group_start(self, worker_group_context):
        self._stamp("worker group: starting actors")

    def after_worker_group_start(self, worker_group):
        self._stamp("worker group: actors up, process group ready")

    def after_worker_group_training_start(self, worker_group):
        self._stamp("worker group: train function launched")

    def after_report(self, training_report, metrics):
        if not self.reported:
            self.reported = True
            self._stamp("controller: first report received")


def stamped_worker(config):
    import time as _t
    if __import__("ray").train.get_context().get_world_rank() == 0:
        with open(config["_stamp_path"], "a") as handle:
            handle.write(json.dumps(["rank 0: train function entered", _t.time()]) + "\n")
    if config.get("_floor"):
        __import__("ray").train.report({"epoch": 1})
        return
    train_worker({k: v for k, v in config.items() if k != "_stamp_path"})


stamp_path = os.path.join(out, "controller-stamps.jsonl")
if floor:
    init_ray()  # the same cluster settings (a bare ray.init() waits minutes on a dead cluster `ray start` recorded)
    stamps["ray.init returned"] = time.time()
    trainer = TorchTrainer(stamped_worker, train_loop_config={"_floor": True, "_stamp_path": stamp_path},
                           scaling_config=ScalingConfig(num_workers=workers),
                           run_config=RunConfig(name="probe", storage_path=out, callbacks=[Stamps(stamp_path)]))
else:
    cfg = Config.from_dict({"data": {"dataset": "fashion-mnist"}, "train": {"epochs": epochs},
                            "scaling": {"num_workers": workers},
                            "run": {"name": "probe", "storage_path": out}})
    cfg = resolve_data(cfg)
    stamps["dataset found"] = time.time()
    init_ray()
    stamps["ray.init returned"] = time.time()
    check_cluster(cfg, "train")
    stamps["preflight passed"] = time.time()
    attempt = RunFiles(cfg.run.storage_path, "probe").begin_attempt()
    stamps["run taken (attempt.json)"] = time.time()
    trainer = build_trainer(cfg, worker_fn=stamped_worker, callbacks=[Stamps(stamp_path)],
                            attempt_token=attempt.token)
    trainer.train_loop_config["_stamp_path"] = stamp_path
stamps["trainer built, fit() called"] = time.time()
result = trainer.fit()
stamps["fit() returned"] = time.time()
if not floor:
    with result.checkpoint.as_directory() as folder:
        evaluate_checkpoint(folder)
    stamps["test set evaluated"] = time.time()
import ray
ray.shutdown()
stamps["ray.shutdown returned"] = time.time()
for line in open(stamp_path):
    name, at = json.loads(line)
    stamps[name] = at
if not floor:
    rows = [json.loads(line) for line in open(os.path.join(out, "probe", "metrics.jsonl"))]
    stamps["rank 0: first epoch starts"] = rows[0]["timestamp"] - rows[0]["epoch_s"]
    stamps["rank 0: last epoch ends"] = rows[-1]["timestamp"]
with open(os.path.join(out, "stamps.json"), "w") as handle:
    json.dump(stamps, handle)
if not floor:  # as the console scripts end (mlp.console.exit_now); the floor exits as a plain script does
    from mlp.console import exit_now
    exit_now(0)
'''


def one_round(workers: int, epochs: int, mode: str) -> list[tuple[str, float]]:
    """Stamps of one fresh process, sorted by time, as (name, seconds since the process was spawned)."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "T0": repr(time.time())}
        proc = subprocess.run([sys.executable, "-c", CHILD, out, str(workers), str(epochs), mode],
                              env=env, capture_output=True, text=True)
        exited = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"probe run failed:\n{proc.stderr[-3000:]}")
        stamps = json.loads(Path(out, "stamps.json").read_text())
    stamps["process exited"] = exited
    t0 = stamps["process start"]
    return sorted(((name, at - t0) for name, at in stamps.items()), key=lambda item: item[1])


def print_table(title: str, timeline: list[tuple[str, float]]) -> None:
    print(f"\n{title}\n| step | at s | phase s |\n|---|---|---|")
    previous = 0.0
    for name, at in timeline:
        print(f"| {name} | {at:.2f} | {at - previous:.2f} |")
        previous = at
    marks = dict(timeline)
    if "rank 0: first epoch starts" in marks:
        print(f"fixed overhead {marks['rank 0: first epoch starts']:.1f} s + tail "
              f"{marks['process exited'] - marks['rank 0: last epoch ends']:.1f} s")
    else:
        print(f"Ray's floor: first report at {marks['controller: first report received']:.1f} s, "
              f"process exit {marks['process exited'] - marks['controller: first report received']:.1f} s later")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--floor", action="store_true",
                        help="also run Ray's floor (an empty train function) after each round, for comparison")
    args = parser.parse_args()
    runs = []
    for round_no in range(1, args.rounds + 1):
        for mode in ("project", "floor") if args.floor else ("project",):
            timeline = one_round(args.workers, args.epochs, mode)
            runs.append({"round": round_no, "mode": mode, "stamps": dict(timeline)})
            what = (f"mlp-train's steps, {args.epochs} epochs of Fashion-MNIST" if mode == "project"
                    else "Ray's floor: TorchTrainer with an empty train function")
            print_table(f"round {round_no}, {args.workers} worker(s): {what}", timeline)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup_phases.json").write_text(json.dumps(
        {"workers": args.workers, "epochs": args.epochs, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
