"""ASHA vs no early stopping on the same 12 sampled configurations, in one run.

    python benchmarks/bench_tune.py [--samples 12] [--epochs 10] [--dataset fashion-mnist]

Both sweeps use the documented default space (hidden size x log learning rate)
and the same seed, so Tune's seeded random search samples the same
configurations (checked below). The figures:

- wall: seconds for the whole ``run_sweep`` (Tune start-up to table and plots),
- best val accuracy: the best epoch of the best trial, which is what the sweep ranks by,
- test accuracy: the winner's kept checkpoint, evaluated once on the test set.

Target: ASHA <= 0.5x the wall time, best accuracy within 0.5 points.

A second, smaller measurement decides how a one-worker trial runs: the same
few short trials with the loop in the trial's own process (``--tune.runner
process``) and with a ``TorchTrainer`` per trial (``--tune.runner trainer``).

Writes ``benchmarks/results/tune.json`` (one row per measurement) and
``benchmarks/results/tune.md``; absolute seconds drift on shared machines, ratios travel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from mlp.config import Config
from mlp.distributed import init_ray
from mlp.train import evaluate_checkpoint
from tune.promote import best_checkpoint
from tune.sweep import load_results, run_sweep

RESULTS = Path(__file__).parent / "results"


def sweep(storage: str, name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """One sweep through the same entry point as ``mlp-sweep``; returns figures for the table."""
    data: dict[str, Any] = {"run": {"storage_path": storage, "name": name},
                            "registry": {"path": os.path.join(storage, "registry")}}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    cfg = Config.from_dict(data)
    started = time.perf_counter()
    summary = run_sweep(cfg, promote=False)
    wall = time.perf_counter() - started
    rows = json.loads((Path(summary["dir"]) / "trials.json").read_text())
    results = load_results(Path(summary["dir"]))
    winner = next(r for r in results if r.path == rows[0]["path"])
    with best_checkpoint(winner).as_directory() as folder:
        test = evaluate_checkpoint(folder)["test_accuracy"]
    configs = sorted((str(r["model.hidden_sizes"]), round(r["optim.lr"], 12)) for r in rows
                     if "model.hidden_sizes" in r and "optim.lr" in r)
    return {"wall_s": wall, "best_val_accuracy": rows[0]["best_val_accuracy"], "test_accuracy": test,
            "stopped_early": summary["stopped_early"], "epochs_run": sum(r["epochs"] for r in rows),
            "configs": configs, "winner": {k: rows[0][k] for k in ("model.hidden_sizes", "optim.lr")
                                           if k in rows[0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--runner-trials", type=int, default=4, help="trials per runner in the runner check")
    args = parser.parse_args()

    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    common = {"data": {"dataset": args.dataset}, "train": {"epochs": args.epochs}}
    command = (f"python benchmarks/bench_tune.py --samples {args.samples} --epochs {args.epochs} "
               f"--dataset {args.dataset}")
    init_ray()  # before the clock starts: cluster start-up belongs to neither sweep
    with tempfile.TemporaryDirectory() as storage:
        asha = sweep(storage, "asha", **common, tune={"num_samples": args.samples, "early_stopping": True})
        full = sweep(storage, "full", **common, tune={"num_samples": args.samples, "early_stopping": False})
        if asha["configs"] != full["configs"]:
            raise RuntimeError("the two sweeps sampled different configurations; the comparison is void")
        runner = {"tune": {"num_samples": args.runner_trials, "early_stopping": False},
                  "data": {"dataset": "synthetic", "synthetic_size": 2000}, "train": {"epochs": 1}}
        process = sweep(storage, "runner-process", **{**runner, "tune": {**runner["tune"], "runner": "process"}})
        trainer = sweep(storage, "runner-trainer", **{**runner, "tune": {**runner["tune"], "runner": "trainer"}})

    rows = [
        {"figure": "wall_s", "value": asha["wall_s"], "peer": "same sweep without early stopping",
         "peer_value": full["wall_s"], "ratio": asha["wall_s"] / full["wall_s"], "target": "<= 0.5"},
        {"figure": "best_val_accuracy", "value": asha["best_val_accuracy"], "peer": "same sweep without early stopping",
         "peer_value": full["best_val_accuracy"], "ratio": asha["best_val_accuracy"] / full["best_val_accuracy"],
         "points_behind": 100 * (full["best_val_accuracy"] - asha["best_val_accuracy"]), "target": "within 0.5 points"},
        {"figure": "winner_test_accuracy", "value": asha["test_accuracy"], "peer": "same sweep without early stopping",
         "peer_value": full["test_accuracy"], "ratio": asha["test_accuracy"] / full["test_accuracy"],
         "points_behind": 100 * (full["test_accuracy"] - asha["test_accuracy"]), "target": "within 0.5 points"},
        {"figure": "runner_wall_s", "value": process["wall_s"],
         "peer": f"{args.runner_trials} one-epoch trials with a TorchTrainer each (--tune.runner trainer)",
         "peer_value": trainer["wall_s"], "ratio": process["wall_s"] / trainer["wall_s"], "target": "< 1 (process wins)"},
    ]
    for row in rows:
        row.update({"machine": machine, "command": command})
    detail = {"asha": asha, "full": full, "runner_process": process, "runner_trainer": trainer}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tune.json").write_text(json.dumps({"rows": rows, "detail": detail}, indent=2))
    table = ["| machine | command | figure | ASHA / process | peer | peer figure | ratio |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['machine']} | `{r['command']}` | {r['figure']} | {r['value']:.4g} | {r['peer']} "
              f"| {r['peer_value']:.4g} | {r['ratio']:.3f} |" for r in rows]
    table += ["", f"ASHA stopped {asha['stopped_early']} of {args.samples} trials early and trained "
              f"{asha['epochs_run']} epochs in all, against {full['epochs_run']} without early stopping.",
              f"Winner with ASHA: {asha['winner']}; without: {full['winner']}."]
    (RESULTS / "tune.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"\nASHA / no early stopping wall time: {rows[0]['ratio']:.2f}x (target <= 0.5); best val accuracy "
          f"{rows[1]['points_behind']:+.2f} points behind, winner test accuracy {rows[2]['points_behind']:+.2f} "
          f"points behind (target within 0.5)")


if __name__ == "__main__":
    main()
