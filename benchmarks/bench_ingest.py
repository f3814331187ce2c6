"""Ray Data streaming vs the in-memory path, on Fashion-MNIST exported to Parquet, side by side in one run.

    python benchmarks/bench_ingest.py [--epochs 3] [--workers 2] [--rounds 2]

Both rows run ``mlp-train`` as a user would on the same Parquet files (train and test
exported from the built-in, pixels in [0, 1], ``--data.normalize none``) with the same
workers, seed and settings; only ``--data.ingest`` differs. Both reserve half a CPU per
worker so that one CPU stays free for Ray Data's read tasks (the streamed path needs
it; the in-memory path gets the same shape for a fair ratio). Figures: median
``samples_per_s`` of the epochs after the first, the whole command's wall time, and
the final test accuracy. The goal: streaming at >= 0.8x the in-memory samples/s, as the median of
the rounds' ratios (each round runs both paths, in alternating order).

Writes ``benchmarks/results/ingest.json`` and ``benchmarks/results/ingest.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def export_fashion_mnist(folder: Path) -> tuple[Path, Path]:
    """The built-in's train and test splits as two Parquet files, one column per pixel plus ``label``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlp.data import _load_tensors

    paths = []
    for split, train in (("train", True), ("test", False)):
        x, y = _load_tensors("fashion-mnist", None, train)
        path = folder / f"{split}.parquet"
        pq.write_table(pa.table({**{f"p{i}": x[:, i].numpy() for i in range(784)}, "label": y.numpy()}), path,
                       row_group_size=5000)
        paths.append(path)
    return paths[0], paths[1]


def train(train: Path, test: Path, ingest: str, epochs: int, workers: int) -> dict:
    """``mlp-train`` on the Parquet files with ``--data.ingest ingest``; figures from its run files."""
    with tempfile.TemporaryDirectory() as storage:
        argv = [sys.executable, "-m", "mlp.train", "--data.source", str(train), "--data.test_source", str(test),
                "--data.normalize", "none", "--data.ingest", ingest, "--train.epochs", str(epochs),
                "--scaling.num_workers", str(workers), "--scaling.cpus_per_worker", "0.5",
                "--run.name", "bench", "--run.storage_path", storage]
        started = time.time()
        proc = subprocess.run(argv, capture_output=True, text=True)
        wall = time.time() - started
        if proc.returncode != 0:
            raise RuntimeError(f"mlp-train ({ingest}) failed:\n{proc.stderr[-3000:]}")
        run = Path(storage) / "bench"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run / "summary.json").read_text())
    rates = [m["samples_per_s"] for m in metrics]
    return {"ingest": ingest, "samples_per_s": statistics.median(rates[1:] or rates), "wall_s": wall,
            "test_accuracy": summary["test_accuracy"], "command": " ".join(["mlp-train", *argv[3:]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of both paths, the order flipped each round (memory first in odd rounds), "
                             "so the machine's drift hits both alike; the ratio is the median of the rounds'")
    args = parser.parse_args()
    rounds: list[tuple[dict, dict]] = []
    with tempfile.TemporaryDirectory() as folder:
        train_file, test_file = export_fashion_mnist(Path(folder))
        for number in range(args.rounds):
            order = ("memory", "stream") if number % 2 == 0 else ("stream", "memory")
            runs = {ingest: train(train_file, test_file, ingest, args.epochs, args.workers) for ingest in order}
            rounds.append((runs["memory"], runs["stream"]))
            print(f"round {number + 1}/{args.rounds}: stream {runs['stream']['samples_per_s']:,.0f} / memory "
                  f"{runs['memory']['samples_per_s']:,.0f} samples/s", flush=True)
    ratios = [stream["samples_per_s"] / memory["samples_per_s"] for memory, stream in rounds]
    ratio = statistics.median(ratios)
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, {platform.python_version()}"
    rows = [{**row, "round": number + 1, "machine": machine} for number, pair in enumerate(rounds) for row in pair]
    rows.append({"figure": "stream / memory samples_per_s", "ratio": ratio, "rounds": ratios, "goal": ">= 0.8",
                 "machine": machine})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(rows, indent=2))
    table = ["| round | path | samples/s (median, epochs after the first) | wall s | test accuracy | command |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['round']} | {r['ingest']} | {r['samples_per_s']:,.0f} | {r['wall_s']:.1f} | "
              f"{r['test_accuracy']:.4f} | `{r['command']}` |" for r in rows[:-1]]
    table.append(f"\nstream / memory: **{ratio:.2f}x**, the median of the rounds' "
                 f"{', '.join(f'{r:.2f}x' for r in ratios)} (goal >= 0.8x); machine: {machine}")
    (RESULTS / "ingest.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
