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
from proc_cpu import ProcCpu, cpu_ticks

from mlp.config import DataConfig, ModelConfig
from mlp.data import load_splits
from mlp.loop import evaluate
from mlp.model import build_model

RESULTS = Path(__file__).parent / "results"


def plain_loop(dataset: str, epochs: int, batch_size: int, shard: int = 0, shards: int = 1) -> dict:
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
        perm = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(epoch))[shard::shards]
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            optimizer.step()
        evaluate(model, data.val_x, data.val_y)
        times.append(time.perf_counter() - started)
    epoch_s = statistics.median(times[1:] or times)
    return {"epoch_s": epoch_s, "samples_per_s": len(data.train_x) / epoch_s}


def cpu_shares(samples: list[tuple[float, dict[int, ProcCpu]]], start: float, end: float) -> dict:
    """Cores used between the samples nearest ``start`` and ``end``: the Train workers, and everything else."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return {}
    (t0, first), (t1, last) = inside[0], inside[-1]
    hz, workers, rest, top = os.sysconf("SC_CLK_TCK"), 0.0, 0.0, {}
    for pid, (command, _, ticks) in last.items():
        cores = (ticks - first[pid].ticks if pid in first else 0) / hz / (t1 - t0)
        if command.startswith("ray::RayTrainWorker"):
            workers += cores
        else:
            rest += cores
            top[f"{command[:70]} ({pid})"] = cores
    return {"workers_cores": workers, "others_cores": rest,
            "others_top": dict(sorted(top.items(), key=lambda kv: -kv[1])[:6])}


def plain_shards(dataset: str, epochs: int, batch_size: int, shards: int = 2) -> float:
    """What lockstep data parallelism could reach here at best: ``shards`` plain loops at once, no exchange.

    Each process trains its own 1/``shards`` of every epoch at ``batch_size // shards``, exactly the
    computation of one rank of a ``shards``-worker run, but independently, without Ray and
    without waiting for the others; the slowest process's median epoch is returned.
    """
    procs = [subprocess.Popen([sys.executable, __file__, "--plain-shard", f"{shard}/{shards}", "--epochs",
                               str(epochs), "--dataset", dataset, "--batch-size", str(batch_size // shards)],
                              stdout=subprocess.PIPE, text=True) for shard in range(shards)]
    return max(float(proc.communicate()[0].split()[-1]) for proc in procs)


def ray_train(dataset: str, epochs: int, workers: int, batch_size: int, shm: bool = True,
              extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> dict:
    """``mlp-train`` as a user runs it, timed from the outside.

    While it runs, every process's CPU time is sampled each second, so the row can say
    how much of the two cores Ray's own processes took during the epochs after the first.
    """
    with tempfile.TemporaryDirectory() as storage:
        argv = [sys.executable, "-m", "mlp.train", "--data.dataset", dataset, "--train.epochs", str(epochs),
                "--scaling.num_workers", str(workers), "--train.batch_size", str(batch_size),
                *([] if shm else ["--scaling.shared_memory_allreduce", "false"]), *extra,
                "--run.name", "bench", "--run.storage_path", storage]
        started = time.time()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})})
        samples = []
        stderr = ""
        while proc.poll() is None:
            samples.append((time.time(), cpu_ticks()))
            try:
                stderr += proc.communicate(timeout=1.0)[1]
            except subprocess.TimeoutExpired:
                pass
        ended = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"mlp-train failed:\n{stderr[-3000:]}")
        lines = (Path(storage) / "bench" / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
    epoch_times = [m["epoch_s"] for m in metrics]
    epoch_s = statistics.median(epoch_times[1:] or epoch_times)
    exchange = [m["exchange_s"] for m in metrics if "exchange_s" in m]
    first_epoch_start = metrics[0]["timestamp"] - metrics[0]["epoch_s"]
    return {"epoch_s": epoch_s, "samples_per_s": statistics.median(m["samples_per_s"] for m in metrics),
            "exchange_s": statistics.median(exchange[1:] or exchange) if exchange else None,
            "fixed_overhead_s": first_epoch_start - started, "tail_s": ended - metrics[-1]["timestamp"],
            "wall_s": ended - started, "command": " ".join(argv[1:]),
            **cpu_shares(samples, metrics[0]["timestamp"], metrics[-1]["timestamp"])}


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
    parser.add_argument("--levers", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the 2-worker rows of the levers measured against the default "
                             "(spin-and-sleep wait instead of futex, 2 torch threads per rank)")
    parser.add_argument("--plain-process", type=int, metavar="EPOCHS", help=argparse.SUPPRESS)  # the peer's process
    parser.add_argument("--plain-shard", metavar="SHARD/SHARDS", help=argparse.SUPPRESS)  # one of plain_shards
    args = parser.parse_args()
    if args.plain_shard:
        shard, shards = (int(n) for n in args.plain_shard.split("/"))
        print(plain_loop(args.dataset, args.epochs, args.batch_size, shard, shards)["epoch_s"])
        return
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
    # (label, workers, global batch, shared memory, extra arguments, environment); the last three are levers
    cases: list[tuple[str, int, int, bool, tuple[str, ...], dict[str, str]]] = [
        ("shared memory", 1, args.batch_size, True, (), {}),
        ("shared memory", 2, args.batch_size, True, (), {}),
        ("gloo", 2, args.batch_size, False, (), {}),
        ("shared memory", 2, args.large_batch, True, (), {}),
    ]
    if args.levers:
        cases += [("shared memory, spin-and-sleep wait", 2, args.batch_size, True, (), {"MLP_ALLREDUCE_WAIT": "spin"}),
                  ("shared memory, 2 torch threads per rank", 2, args.batch_size, True, ("--train.threads", "2"), {})]
    shard_peer = [plain_loop(args.dataset, args.epochs, args.batch_size)["epoch_s"]]
    shards_s = plain_shards(args.dataset, args.epochs, args.batch_size)
    shard_peer.append(plain_loop(args.dataset, args.epochs, args.batch_size)["epoch_s"])
    print(f"two plain loops at once, each on half of every epoch at batch {args.batch_size // 2}, no exchange: "
          f"{shards_s:.2f} s/epoch ({shards_s / statistics.mean(shard_peer):.2f}x the plain loop at "
          f"{args.batch_size}): the most two lockstep workers could reach here", flush=True)
    rows.append({"machine": machine, "command": f"benchmarks/bench_train.py --plain-shard 0/2 and 1/2 at once "
                 f"--batch-size {args.batch_size // 2}", "workers": 2, "batch_size": args.batch_size,
                 "allreduce": "none (independent processes)", "figure": "epoch_s", "value": shards_s,
                 "epoch_s": shards_s, "peer": f"plain PyTorch loop, batch {args.batch_size}",
                 "peer_value": statistics.mean(shard_peer), "ratio": shards_s / statistics.mean(shard_peer),
                 "fixed_overhead_s": 0.0, "tail_s": 0.0})
    for label, workers, batch, shm, extra, env in cases:
        # The peer runs right before and right after each Ray run and the two are averaged:
        # on a shared machine the speed drifts within minutes, and a peer measured once drifts with it.
        before = plain_loop(args.dataset, args.epochs, batch)
        ray = ray_train(args.dataset, args.epochs, workers, batch, shm, extra, env)
        after = plain_loop(args.dataset, args.epochs, batch)
        peer = {k: (before[k] + after[k]) / 2 for k in before}
        print(f"plain loop, batch {batch}: {before['epoch_s']:.2f} / {after['epoch_s']:.2f} s/epoch "
              f"(before / after the Ray run)", flush=True)
        ratio = ray["epoch_s"] / peer["epoch_s"]
        exchange = "" if ray["exchange_s"] is None else \
            f", exchanging {ray['exchange_s']:.2f} s ({ray['exchange_s'] / ray['epoch_s']:.0%})"
        print(f"ray train {workers} worker(s), {label}, global batch {batch}: {ray['epoch_s']:.2f} s/epoch "
              f"({ratio:.2f}x plain){exchange}, {ray['samples_per_s']:,.0f} samples/s, "
              f"fixed overhead {ray['fixed_overhead_s']:.1f} s, tail {ray['tail_s']:.1f} s; cores used by the "
              f"workers {ray.get('workers_cores', 0):.2f}, by everything else {ray.get('others_cores', 0):.2f}",
              flush=True)
        rows.append({"machine": machine, "command": ray["command"], "workers": workers, "batch_size": batch,
                     "allreduce": label if workers > 1 else "-", "env": env,
                     "figure": "epoch_s", "value": ray["epoch_s"], "epoch_s": ray["epoch_s"],
                     "exchange_s": ray["exchange_s"], "peer": f"plain PyTorch loop, batch {batch}",
                     "peer_value": peer["epoch_s"], "ratio": ratio, "samples_per_s": ray["samples_per_s"],
                     "peer_samples_per_s": peer["samples_per_s"], "fixed_overhead_s": ray["fixed_overhead_s"],
                     "tail_s": ray["tail_s"], "wall_s": ray["wall_s"],
                     **{k: ray[k] for k in ("workers_cores", "others_cores", "others_top") if k in ray}})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(rows, indent=2))
    table = [("| machine | command | env | workers | global batch | all-reduce | figure | value | exchange s "
              "| cores: workers / others | peer | peer value | ratio | fixed overhead s | tail s |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['machine']} | `{r['command'].split(' --run.name')[0]}` "
              f"| {' '.join(f'{k}={v}' for k, v in r.get('env', {}).items())} | {r['workers']} | {r['batch_size']} "
              f"| {r['allreduce']} | {r['figure']} | {r['value']:.2f} "
              f"| {'' if r.get('exchange_s') is None else format(r['exchange_s'], '.2f')} "
              f"| {'' if 'workers_cores' not in r else format(r['workers_cores'], '.2f') + ' / ' + format(r['others_cores'], '.2f')} "
              f"| {r['peer']} | {r['peer_value']:.2f} "
              f"| {r['ratio']:.2f}x | {r['fixed_overhead_s']:.1f} | {r['tail_s']:.1f} |"
              for r in rows]
    (RESULTS / "train.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
