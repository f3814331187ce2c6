"""How a sweep's cost grows with the number of trials: N one-epoch trials on synthetic data.

    python benchmarks/bench_tune_scale.py [--trials 25,200] [--samples-per-trial 1000]

Each size is one ``run_sweep`` (the ``mlp-sweep`` entry point) without early stopping,
so every trial runs its one epoch. The figures a user plans with:

- trials per minute at each size;
- per-trial scheduling overhead: (wall x concurrent trials - the trials' own seconds) / trials,
  i.e. the slot time a trial costs beyond its training;
- the marginal seconds per extra trial between the two sizes (wall difference / trial difference),
  which is what one more trial adds to a large sweep.

The peer is the trials' own training time (Tune's ``time_total_s`` summed): the ratio
wall / (training / concurrency) says how much of the sweep is Tune rather than training.
Writes ``benchmarks/results/tune_scale.json`` and ``.md``.
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
from tune.tuner import run_sweep

RESULTS = Path(__file__).parent / "results"


def scale_run(storage: str, trials: int, samples: int) -> dict[str, Any]:
    """One sweep of ``trials`` one-epoch trials; wall time, the trials' own seconds, concurrency."""
    cfg = Config.from_dict({
        "data": {"dataset": "synthetic", "synthetic_size": samples}, "train": {"epochs": 1},
        "tune": {"num_samples": trials, "early_stopping": False, "runner": "process"},
        "run": {"storage_path": storage, "name": f"scale-{trials}"},
        "registry": {"path": os.path.join(storage, "registry")}})
    load = os.getloadavg()[0]
    started = time.perf_counter()
    summary = run_sweep(cfg, promote=False)
    wall = time.perf_counter() - started
    rows = json.loads((Path(summary["dir"]) / "trials.json").read_text())
    import ray

    concurrency = int(ray.cluster_resources().get("CPU", 1))
    training = sum(r["seconds"] for r in rows)
    return {"trials": trials, "finished": len(rows), "wall_s": wall, "trials_per_min": 60 * trials / wall,
            "trial_seconds_total": training, "concurrency": concurrency,
            "overhead_per_trial_s": (wall * concurrency - training) / trials,
            "load_before": load, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default="25,200", help="sweep sizes, comma-separated")
    parser.add_argument("--samples-per-trial", type=int, default=1000, help="synthetic training samples")
    args = parser.parse_args()
    sizes = [int(n) for n in args.trials.split(",")]
    command = f"python benchmarks/bench_tune_scale.py --trials {args.trials} --samples-per-trial {args.samples_per_trial}"
    init_ray()  # cluster start-up belongs to no sweep
    with tempfile.TemporaryDirectory() as storage:
        runs = []
        for n in sizes:
            runs.append(scale_run(storage, n, args.samples_per_trial))
            print(json.dumps(runs[-1]), flush=True)
    small, large = runs[0], runs[-1]
    marginal = (large["wall_s"] - small["wall_s"]) / max(1, large["trials"] - small["trials"])
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": command, "runs": runs,
              "marginal_s_per_trial": marginal}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tune_scale.json").write_text(json.dumps(result, indent=2))
    table = [f"`{command}` ({result['machine']})", "",
             "| trials | finished | wall s | trials/min | trials' own s | concurrent | overhead per trial s "
             "| wall / (own s / concurrent) | load |", "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['trials']} | {r['finished']} | {r['wall_s']:.1f} | {r['trials_per_min']:.1f} "
              f"| {r['trial_seconds_total']:.1f} | {r['concurrency']} | {r['overhead_per_trial_s']:.2f} "
              f"| {r['wall_s'] / (r['trial_seconds_total'] / r['concurrency']):.2f} "
              f"| {r['load_before']:.1f} / {r['load_after']:.1f} |" for r in runs]
    table += ["", f"Marginal cost of one more trial: {marginal:.2f} s of wall time."]
    (RESULTS / "tune_scale.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
