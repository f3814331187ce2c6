"""Ray Train vs a plain single-process PyTorch loop on Fashion-MNIST, side by side in one run.

    python benchmarks/bench_train.py [--epochs 3] [--dataset fashion-mnist]

Rows: the README quickstart as a whole process (2 workers, 10 epochs, command
start to exit) against the plain loop as a whole process; then 1 worker and 2
workers at global batch 64 (2 workers twice: gradients averaged through shared
memory, the default, and through DDP over gloo), and 2 workers at a larger
global batch, each against the plain loop at the same batch size.

The peer is the loop a user would write without Ray (same tensors, batch 64,
one torch thread, a validation pass after each epoch): the practical limit for
this model on a CPU. The Ray
figures come from ``mlp-train`` run as a subprocess with 1 and 2 workers:

- epoch time: median ``epoch_s`` reported by the workers (epochs after the first),
- fixed overhead: command start -> start of the first epoch,
- tail: end of the last epoch -> command exit.

Writes ``benchmarks/results/train.json`` (one row per measurement) and
``benchmarks/results/train.md``; absolute seconds drift on shared machines,
ratios travel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mlp.config import DataConfig, ModelConfig
from mlp.data import load_splits
from mlp.loop import evaluate
from mlp.model import build_model

RESULTS = Path(__file__).parent / "results"


def plain_loop(dataset: str, epochs: int, batch_size: int) -> dict:
    """The peer: a bare PyTorch loop over in-memory tensors, one process, one thread.

    Each epoch ends with one pass over the validation split, as the reference
    Keras script (``validation_data``) and ``mlp.loop.fit`` both do, so an epoch
    is the same work on both sides.
    """
    torch.set_num_threads(1)
    data = load_splits(DataConfig(dataset=dataset))
    model = build_model(ModelConfig(), seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for epoch in range(epochs):
        started = time.perf_counter()
        perm = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            optimizer.step()
        evaluate(model, data.val_x, data.val_y)
        times.append(time.perf_counter() - started)
    epoch_s = statistics.median(times[1:] or times)
    return {"epoch_s": epoch_s, "samples_per_s": len(data.train_x) / epoch_s}


def ray_train(dataset: str, epochs: int, workers: int, batch_size: int, shm: bool = True,
              extra: tuple[str, ...] = ()) -> dict:
    """``mlp-train`` as a user runs it, timed from the outside."""
    with tempfile.TemporaryDirectory() as storage:
        argv = [sys.executable, "-m", "mlp.train", "--data.dataset", dataset, "--train.epochs", str(epochs),
                "--scaling.num_workers", str(workers), "--train.batch_size", str(batch_size),
                *([] if shm else ["--scaling.shared_memory_allreduce", "false"]), *extra,
                "--run.name", "bench", "--run.storage_path", storage]
        started = time.time()
        proc = subprocess.run(argv, capture_output=True, text=True)
        ended = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"mlp-train failed:\n{proc.stderr[-3000:]}")
        lines = (Path(storage) / "bench" / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
    epoch_times = [m["epoch_s"] for m in metrics]
    epoch_s = statistics.median(epoch_times[1:] or epoch_times)
    first_epoch_start = metrics[0]["timestamp"] - metrics[0]["epoch_s"]
    return {"epoch_s": epoch_s, "samples_per_s": statistics.median(m["samples_per_s"] for m in metrics),
            "fixed_overhead_s": first_epoch_start - started, "tail_s": ended - metrics[-1]["timestamp"],
            "wall_s": ended - started, "command": " ".join(argv[1:])}


def plain_process(dataset: str, epochs: int) -> float:
    """Wall seconds of the peer as a whole process: interpreter, imports, data, ``epochs`` epochs, exit."""
    started = time.time()
    subprocess.run([sys.executable, __file__, "--plain-process", str(epochs), "--dataset", dataset], check=True)
    return time.time() - started


def quickstart(dataset: str, epochs: int) -> dict:
    """The README quickstart (2 workers, lr 0.1, ``epochs`` epochs) against the plain loop's whole process."""
    before = plain_process(dataset, epochs)
    ray = ray_train(dataset, epochs, 2, 64, extra=("--optim.lr", "0.1"))
    after = plain_process(dataset, epochs)
    peer = (before + after) / 2
    print(f"quickstart, {epochs} epochs, whole process: {ray['wall_s']:.1f} s against the plain loop's "
          f"{before:.1f} / {after:.1f} s ({ray['wall_s'] / peer:.2f}x)", flush=True)
    return {**ray, "peer_wall_s": peer, "ratio": ray["wall_s"] / peer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--large-batch", type=int, default=512,
                        help="global batch of the extra 2-worker row (fewer all-reduces per epoch)")
    parser.add_argument("--quickstart-epochs", type=int, default=10,
                        help="epochs of the whole-process quickstart row (0 leaves it out)")
    parser.add_argument("--plain-process", type=int, metavar="EPOCHS", help=argparse.SUPPRESS)  # the peer's process
    args = parser.parse_args()
    if args.plain_process:
        plain_loop(args.dataset, args.plain_process, 64)
        return

    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    rows = []
    if args.quickstart_epochs:
        q = quickstart(args.dataset, args.quickstart_epochs)
        rows.append({"machine": machine, "command": q["command"], "workers": 2, "batch_size": 64,
                     "allreduce": "shared memory", "figure": "whole-process wall_s", "value": q["wall_s"],
                     "peer": f"plain PyTorch loop as a process, {args.quickstart_epochs} epochs",
                     "peer_value": q["peer_wall_s"], "ratio": q["ratio"], "fixed_overhead_s": q["fixed_overhead_s"],
                     "tail_s": q["tail_s"], "wall_s": q["wall_s"], "epoch_s": q["epoch_s"]})
    cases = ((1, args.batch_size, True), (2, args.batch_size, True), (2, args.batch_size, False),
             (2, args.large_batch, True))
    for workers, batch, shm in cases:
        # The peer runs right before and right after each Ray run and the two are averaged:
        # on a shared machine the speed drifts within minutes, and a peer measured once drifts with it.
        before = plain_loop(args.dataset, args.epochs, batch)
        ray = ray_train(args.dataset, args.epochs, workers, batch, shm)
        after = plain_loop(args.dataset, args.epochs, batch)
        peer = {k: (before[k] + after[k]) / 2 for k in before}
        print(f"plain loop, batch {batch}: {before['epoch_s']:.2f} / {after['epoch_s']:.2f} s/epoch "
              f"(before / after the Ray run)", flush=True)
        ratio = ray["epoch_s"] / peer["epoch_s"]
        print(f"ray train {workers} worker(s), global batch {batch}: {ray['epoch_s']:.2f} s/epoch "
              f"({ratio:.2f}x plain), {ray['samples_per_s']:,.0f} samples/s, "
              f"fixed overhead {ray['fixed_overhead_s']:.1f} s, tail {ray['tail_s']:.1f} s", flush=True)
        rows.append({"machine": machine, "command": ray["command"], "workers": workers, "batch_size": batch,
                     "allreduce": ("shared memory" if shm else "gloo") if workers > 1 else "-",
                     "figure": "epoch_s", "value": ray["epoch_s"], "epoch_s": ray["epoch_s"], "peer": f"plain PyTorch loop, batch {batch}",
                     "peer_value": peer["epoch_s"], "ratio": ratio, "samples_per_s": ray["samples_per_s"],
                     "peer_samples_per_s": peer["samples_per_s"], "fixed_overhead_s": ray["fixed_overhead_s"],
                     "tail_s": ray["tail_s"], "wall_s": ray["wall_s"]})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(rows, indent=2))
    table = ["| machine | command | workers | global batch | all-reduce | figure | value | peer | peer value "
             "| ratio | fixed overhead s | tail s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['machine']} | `{r['command'].split(' --run.name')[0]}` | {r['workers']} | {r['batch_size']} "
              f"| {r['allreduce']} | {r['figure']} | {r['value']:.2f} | {r['peer']} | {r['peer_value']:.2f} "
              f"| {r['ratio']:.2f}x | {r['fixed_overhead_s']:.1f} | {r['tail_s']:.1f} |"
              for r in rows]
    (RESULTS / "train.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
