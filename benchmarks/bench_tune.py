"""ASHA vs no early stopping on the same 12 sampled configurations, in one run.

    python benchmarks/bench_tune.py [--samples 12] [--epochs 10] [--dataset fashion-mnist] [--repeats 2]
    python benchmarks/bench_tune.py --preset cluster/presets/sweep-fashion-best.yaml --repeats 1 --asha-only

``--preset`` takes a sweep preset's space, epochs, samples and ASHA settings
(the command-line numbers are then ignored).

Both sweeps use the documented default space (hidden size x log learning rate)
and the same seed, so Tune's seeded random search samples the same
configurations (checked below). The figures:

- wall: seconds for the whole ``run_sweep`` (Tune start-up to table and plots),
- best val accuracy: the best epoch of the best trial, which is what the sweep ranks by,
- test accuracy: the winner's kept checkpoint, evaluated once on the test set.

Target: ASHA <= 0.5x the wall time, best accuracy within 0.5 points. The sweeps
run in the order A B B A (``--repeats 2``) and figures are means: other work on
a shared machine changes its speed over minutes, and alternating cancels a
steady drift. The load average around each sweep is recorded with it.

A second, smaller measurement decides how a one-worker trial runs: the same
few short trials with the loop in the trial's own process (``--tune.runner
process``) and with a ``TorchTrainer`` per trial (``--tune.runner trainer``).

Writes ``benchmarks/results/tune.json`` (one row per measurement) and
``benchmarks/results/tune.md`` (``tune-<preset>.*`` with ``--preset``); absolute seconds drift on shared machines, ratios travel.
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
from mlp.distributed.trainer import init_ray
from mlp.loop import evaluate_checkpoint
from tune.promote import best_checkpoint
from tune.tuner import load_results, run_sweep

RESULTS = Path(__file__).parent / "results"


def sweep(storage: str, name: str, base: dict[str, Any] | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    """One sweep through the same entry point as ``mlp-sweep``; returns figures for the table."""
    data: dict[str, Any] = {**(base or {}), "run": {"storage_path": storage, "name": name},
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
    keys = sorted(cfg.tune.space)
    configs = sorted(tuple(str(r.get(k)) for k in keys) for r in rows)
    return {"wall_s": wall, "best_val_accuracy": rows[0]["best_val_accuracy"], "test_accuracy": test,
            "stopped_early": summary["stopped_early"], "epochs_run": sum(r["epochs"] for r in rows),
            "configs": configs, "winner": {k: rows[0][k] for k in keys if k in rows[0]}}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--repeats", type=int, default=2,
                        help="pairs of sweeps, run A B B A ...: on a shared machine load drifts, and "
                             "alternating cancels a steady drift out of the mean")
    parser.add_argument("--runner-trials", type=int, default=4, help="trials per runner in the runner check")
    parser.add_argument("--preset", help="a sweep preset YAML (cluster/presets/...): its space, epochs and ASHA")
    parser.add_argument("--asha-only", action="store_true",
                        help="run only the ASHA sweep(s): the winner's accuracy and the wall time, no peer")
    args = parser.parse_args()
    base: dict[str, Any] = {}
    if args.preset:
        from mlp.options import load_yaml

        base = load_yaml(args.preset)
        args.samples = base.get("tune", {}).get("num_samples", args.samples)
        args.epochs = base.get("train", {}).get("epochs", args.epochs)
        args.dataset = base.get("data", {}).get("dataset", args.dataset)

    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    common = {"data": {"dataset": args.dataset}, "train": {"epochs": args.epochs}}
    command = (f"python benchmarks/bench_tune.py --preset {args.preset} --repeats {args.repeats}"
               + (" --asha-only" if args.asha_only else "") if args.preset else
               f"python benchmarks/bench_tune.py --samples {args.samples} --epochs {args.epochs} "
               f"--dataset {args.dataset} --repeats {args.repeats}")
    order = [m for i in range(args.repeats) for m in (("asha", "full") if i % 2 == 0 else ("full", "asha"))
             if m == "asha" or not args.asha_only]
    runs: dict[str, list[dict[str, Any]]] = {"asha": [], "full": []}
    init_ray()  # before the clock starts: cluster start-up belongs to neither sweep
    with tempfile.TemporaryDirectory() as storage:
        for mode in order:
            load = os.getloadavg()[0]
            tune_keys = {**base.get("tune", {}), "num_samples": args.samples, "early_stopping": mode == "asha"}
            result = sweep(storage, f"{mode}-{len(runs[mode]) + 1}", base, **common, tune=tune_keys)
            runs[mode].append({**result, "load_before": load, "load_after": os.getloadavg()[0]})
            print(f"{mode}: {result['wall_s']:.1f} s, best val {result['best_val_accuracy']:.4f}, "
                  f"test {result['test_accuracy']:.4f}, {result['epochs_run']} epochs", flush=True)
        if len({tuple(map(tuple, r["configs"])) for r in runs["asha"] + runs["full"]}) > 1:
            raise RuntimeError("the sweeps sampled different configurations; the comparison is void")
        process = trainer = None
        if not args.preset:  # the runner check belongs to the default benchmark only
            runner = {"tune": {"num_samples": args.runner_trials, "early_stopping": False},
                      "data": {"dataset": "synthetic", "synthetic_size": 2000}, "train": {"epochs": 1}}
            process = sweep(storage, "runner-process", **{**runner, "tune": {**runner["tune"], "runner": "process"}})
            trainer = sweep(storage, "runner-trainer", **{**runner, "tune": {**runner["tune"], "runner": "trainer"}})

    mean = {m: {k: _mean([r[k] for r in runs[m]]) for k in ("wall_s", "best_val_accuracy", "test_accuracy",
                                                             "epochs_run")} for m in runs if runs[m]}
    if args.asha_only:
        mean["full"] = {k: float("nan") for k in mean["asha"]}
    peer = f"same {args.samples} configurations without early stopping (mean of {args.repeats})"
    rows = [
        {"figure": "wall_s", "value": mean["asha"]["wall_s"], "peer": peer, "peer_value": mean["full"]["wall_s"],
         "target": "ratio <= 0.5"},
        {"figure": "epochs_trained", "value": mean["asha"]["epochs_run"], "peer": peer,
         "peer_value": mean["full"]["epochs_run"], "target": "-"},
        {"figure": "best_val_accuracy", "value": mean["asha"]["best_val_accuracy"], "peer": peer,
         "peer_value": mean["full"]["best_val_accuracy"], "target": "within 0.5 points"},
        {"figure": "winner_test_accuracy", "value": mean["asha"]["test_accuracy"], "peer": peer,
         "peer_value": mean["full"]["test_accuracy"], "target": "within 0.5 points"},
    ]
    if process and trainer:
        rows.append({"figure": "runner_wall_s", "value": process["wall_s"],
                     "peer": f"{args.runner_trials} one-epoch trials with a TorchTrainer each (--tune.runner trainer)",
                     "peer_value": trainer["wall_s"], "target": "< 1: the in-process runner wins"})
    for row in rows:
        row.update({"machine": machine, "command": command, "ratio": row["value"] / row["peer_value"]})
        if args.asha_only:
            row["peer"] = "none (--asha-only)"
        if "accuracy" in row["figure"]:
            row["points_behind"] = 100 * (row["peer_value"] - row["value"])
    detail = {"runs": runs, "runner_process": process, "runner_trainer": trainer}
    stem = f"tune-{Path(args.preset).stem}" if args.preset else "tune"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"rows": rows, "detail": detail}, indent=2))
    table = ["| machine | command | figure | ASHA (runner: process) | peer | peer figure | ratio |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['machine']} | `{r['command']}` | {r['figure']} | {r['value']:.4g} | {r['peer']} "
              f"| {r['peer_value']:.4g} | {r['ratio']:.3f} |" for r in rows]
    table += ["", "Each sweep (order as run; load = 1-minute load average before/after, on 2 cores):", "",
              "| sweep | wall s | epochs | stopped early | best val acc | winner test acc | winner | load |",
              "|---|---|---|---|---|---|---|---|"]
    seen = {"asha": 0, "full": 0}
    for mode in order:
        r = runs[mode][seen[mode]]
        seen[mode] += 1
        table.append(f"| {mode}-{seen[mode]} | {r['wall_s']:.1f} | {r['epochs_run']} | {r['stopped_early']} "
                     f"| {r['best_val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['winner']} "
                     f"| {r['load_before']:.1f} / {r['load_after']:.1f} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"\nASHA / no early stopping wall time: {rows[0]['ratio']:.2f}x (target <= 0.5); best val accuracy "
          f"{rows[2]['points_behind']:+.2f} points behind, winner test accuracy {rows[3]['points_behind']:+.2f} "
          f"points behind (target within 0.5)")


if __name__ == "__main__":
    main()
