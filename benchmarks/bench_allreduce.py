"""Gloo vs the shared-memory all-reduce (``mlp.distributed.allreduce``), and what each makes of a training step, outside Ray.

    python benchmarks/bench_allreduce.py [--iters 2000] [--steps 600] [--exact-steps 200]

Two processes (torch.multiprocessing spawn, gloo over TCP on 127.0.0.1, one
torch thread each, as Ray Train's workers run) measure, in one run:

(a) gloo's all-reduce of the model's gradient (79,510 float32), without and with
    ``LOCAL_WORLD_SIZE=2`` (the variable upstream gloo's reverted shared-memory
    path keyed on; a separate process pair, since it is read from the environment);
(b) the shared-memory all-reduce of the same tensor: median and p90 per call;
(c) a full data-parallel training step of the real model (``mlp.model.build_model``,
    32 samples per worker, synthetic data) in DDP with its default all-reduce, and
    without DDP with ``share_gradients`` (what training uses) with its futex wait and with the
    spin-and-sleep wait (``MLP_ALLREDUCE_WAIT=spin``), in alternating blocks (``--rounds`` triples of
    ``--steps`` steps); mean and median seconds per step, steps/s.

The peer is one process stepping the same model at batch 64 (the same global
batch, so the same number of steps per epoch), measured before and after the
two-worker runs and averaged. Exactness: from the same seed and data, the
weights after ``--exact-steps`` steps with each path are compared, and each
path's weights are compared across the two ranks bit for bit.

Writes ``benchmarks/results/allreduce.json`` and ``allreduce.md``. The machine's
load average is recorded beside the figures: on a shared 2-core machine two
workers compete with everything else for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mlp.distributed.allreduce import ShmAllreduce, share_gradients
from mlp.config import ModelConfig
from mlp.model import build_model

RESULTS = Path(__file__).parent / "results"
GRAD_ELEMENTS = 784 * 100 + 100 + 100 * 10 + 10  # the reference MLP's parameters: 79,510
GLOBAL_BATCH = 64
STEPS_PER_EPOCH = 844  # 54,000 training samples at global batch 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"median_us": statistics.median(ordered) * 1e6, "p90_us": ordered[int(0.9 * (len(ordered) - 1))] * 1e6}


def synthetic_batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed MNIST-shaped global batches, the same in every process."""
    gen = torch.Generator().manual_seed(1234)
    return [(torch.rand(GLOBAL_BATCH, 784, generator=gen), torch.randint(0, 10, (GLOBAL_BATCH,), generator=gen))
            for _ in range(count)]


def time_calls(fn: Callable[[], Any], iters: int, warmup: int = 100) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def make_ddp(hook: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    """"default": the model in DDP (gloo's all-reduce); "shm": the plain model whose optimizer
    averages gradients through shared memory (``mlp.allreduce.share_gradients``, what training uses)."""
    if hook == "default":
        model = DistributedDataParallel(build_model(ModelConfig(), seed=0))
        return model, torch.optim.SGD(model.parameters(), lr=0.01), None
    model = build_model(ModelConfig(), seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    os.environ["MLP_ALLREDUCE_WAIT"] = "spin" if hook == "shm_spin" else "futex"
    state = share_gradients(model, optimizer)
    if state is None:
        raise RuntimeError("the shared-memory exchange did not enable between two local processes")
    return model, optimizer, state


def ddp_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              batches: list[tuple[torch.Tensor, torch.Tensor]], rank: int, world: int) -> list[float]:
    """Train one step per batch on this rank's share; returns the seconds of each step."""
    share = GLOBAL_BATCH // world
    dist.barrier()
    times = []
    for x, y in batches:
        started = time.perf_counter()
        xs, ys = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(xs), ys).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times


def step_stats(times: list[float]) -> dict[str, float]:
    """Mean (what an epoch costs) and median (robust to a neighbour taking the core) seconds per step."""
    return {"mean_s": statistics.mean(times), "median_s": statistics.median(times)}


def flat_weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def worker(rank: int, world: int, port: int, variant: str, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    if variant == "local_world_size":
        os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    else:
        os.environ.pop("LOCAL_WORLD_SIZE", None)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result: dict[str, Any] = {}
    grad = torch.randn(GRAD_ELEMENTS, generator=torch.Generator().manual_seed(rank))

    work = torch.zeros(GRAD_ELEMENTS)  # repeated sums of zeros: no overflow, no subnormals, same cost as any floats
    result["gloo"] = percentiles(time_calls(lambda: dist.all_reduce(work), args.iters))
    if variant == "main":
        shm = ShmAllreduce.setup(GRAD_ELEMENTS * 4)
        assert shm is not None
        result["shm"] = percentiles(time_calls(lambda: shm.allreduce_(work), args.iters))
        # One call each on the same input: shm against gloo, and shm's bits across ranks.
        a, b = grad.clone(), grad.clone()
        dist.all_reduce(a)
        shm.allreduce_(b)
        both = [torch.empty_like(b) for _ in range(world)]
        dist.all_gather(both, b)
        result["raw_exact"] = {"max_abs_diff_vs_gloo": (a - b).abs().max().item(),
                               "bit_identical_across_ranks": all(torch.equal(both[0], t) for t in both)}
        shm.close()

        batches = synthetic_batches(args.steps)
        runs: dict[str, list[float]] = {"default": [], "shm": [], "shm_spin": []}
        blocks: dict[str, list[float]] = {"default": [], "shm": [], "shm_spin": []}
        for hook in ("default", "shm", "shm_spin") * args.rounds:  # alternating blocks: drift hits both alike
            model, optimizer, state = make_ddp(hook)
            ddp_steps(model, optimizer, batches[:20], rank, world)  # warm-up
            times = ddp_steps(model, optimizer, batches, rank, world)
            runs[hook] += times
            blocks[hook].append(statistics.mean(times))
            if state is not None:
                state.close()
        result["ddp_step"] = {hook: step_stats(v) for hook, v in runs.items()}
        result["ddp_step_s_blocks"] = blocks

        exact = synthetic_batches(args.exact_steps)
        weights = {}
        for hook in ("default", "shm"):
            model, optimizer, state = make_ddp(hook)
            ddp_steps(model, optimizer, exact, rank, world)
            w = flat_weights(model)
            gathered = [torch.empty_like(w) for _ in range(world)]
            dist.all_gather(gathered, w)
            weights[hook] = w
            result[f"{hook}_bit_identical_across_ranks"] = all(torch.equal(gathered[0], t) for t in gathered)
            if state is not None:
                state.close()
        result["ddp_max_abs_diff"] = (weights["default"] - weights["shm"]).abs().max().item()
        result["ddp_bit_identical_to_default"] = torch.equal(weights["default"], weights["shm"])
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def run_pair(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.spawn(worker, args=(2, free_port(), variant, args, out), nprocs=2)
        return json.loads(Path(out).read_text())


def single_process_step(steps: int) -> list[float]:
    """The peer: one process, one thread, batch 64: seconds of each step."""
    torch.set_num_threads(1)
    model = build_model(ModelConfig(), seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = synthetic_batches(steps)
    for x, y in batches[:20]:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    times = []
    for x, y in batches:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=2000, help="all-reduce calls timed per variant")
    parser.add_argument("--steps", type=int, default=400, help="training steps per timed DDP block")
    parser.add_argument("--rounds", type=int, default=3, help="alternating default / shm / shm-spin block triples")
    parser.add_argument("--exact-steps", type=int, default=200, help="steps before comparing weights")
    args = parser.parse_args()

    load_before = os.getloadavg()
    started = time.perf_counter()
    single_before = single_process_step(args.steps * args.rounds)
    lws = run_pair("local_world_size", args)
    main_pair = run_pair("main", args)
    single_after = single_process_step(args.steps * args.rounds)
    load_after = os.getloadavg()
    single_stats = step_stats(single_before + single_after)
    single = single_stats["mean_s"]
    single_before_s, single_after_s = statistics.mean(single_before), statistics.mean(single_after)

    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    load = f"{load_before[0]:.2f} -> {load_after[0]:.2f}"
    gloo, gloo_lws, shm = main_pair["gloo"], lws["gloo"], main_pair["shm"]
    default, shm_step = main_pair["ddp_step"]["default"], main_pair["ddp_step"]["shm"]
    default_s, shm_s = default["mean_s"], shm_step["mean_s"]
    rows = [
        {"figure": "all-reduce 79,510 float32, gloo, median us", "value": gloo["median_us"], "median": gloo["median_us"],
         "p90": gloo["p90_us"]},
        {"figure": "all-reduce 79,510 float32, gloo with LOCAL_WORLD_SIZE=2, median us",
         "value": gloo_lws["median_us"], "median": gloo_lws["median_us"], "p90": gloo_lws["p90_us"], "peer": "gloo", "peer_value": gloo["median_us"],
         "ratio": gloo_lws["median_us"] / gloo["median_us"]},
        {"figure": "all-reduce 79,510 float32, shared memory, median us", "value": shm["median_us"],
         "median": shm["median_us"], "p90": shm["p90_us"], "peer": "gloo", "peer_value": gloo["median_us"],
         "ratio": shm["median_us"] / gloo["median_us"]},
        {"figure": "step, 2 workers x 32, DDP with gloo's all-reduce, mean ms", "value": default_s * 1e3,
         "median": default["median_s"] * 1e3, "steps_per_s": 1 / default_s, "peer": "1 process, batch 64",
         "peer_value": single * 1e3, "ratio": default_s / single},
        {"figure": "step, 2 workers x 32, share_gradients (no DDP), mean ms", "value": shm_s * 1e3,
         "median": shm_step["median_s"] * 1e3, "steps_per_s": 1 / shm_s, "peer": "1 process, batch 64",
         "peer_value": single * 1e3, "ratio": shm_s / single},
        {"figure": "step, 2 workers x 32, share_gradients with the spin-and-sleep wait, mean ms",
         "value": main_pair["ddp_step"]["shm_spin"]["mean_s"] * 1e3,
         "median": main_pair["ddp_step"]["shm_spin"]["median_s"] * 1e3,
         "steps_per_s": 1 / main_pair["ddp_step"]["shm_spin"]["mean_s"], "peer": "share_gradients, futex wait",
         "peer_value": shm_s * 1e3, "ratio": main_pair["ddp_step"]["shm_spin"]["mean_s"] / shm_s},
        {"figure": "step, share_gradients vs DDP with gloo, mean", "value": shm_s * 1e3,
         "peer": "default all-reduce", "peer_value": default_s * 1e3, "ratio": shm_s / default_s},
        {"figure": "1 process, batch 64, mean ms per step", "value": single * 1e3,
         "median": single_stats["median_s"] * 1e3, "before": single_before_s * 1e3, "after": single_after_s * 1e3,
         "steps_per_s": 1 / single},
    ]
    exact = {"raw": main_pair["raw_exact"], "ddp_steps": args.exact_steps,
             "ddp_max_abs_diff_shm_vs_default": main_pair["ddp_max_abs_diff"],
             "ddp_bit_identical_to_default": main_pair["ddp_bit_identical_to_default"],
             "shm_bit_identical_across_ranks": main_pair["shm_bit_identical_across_ranks"],
             "default_bit_identical_across_ranks": main_pair["default_bit_identical_across_ranks"]}
    report = {"machine": machine, "load_average_1m": load, "command": "python benchmarks/bench_allreduce.py "
              f"--iters {args.iters} --steps {args.steps} --rounds {args.rounds} --exact-steps {args.exact_steps}",
              "wall_s": time.perf_counter() - started, "rows": rows, "exactness": exact,
              "ddp_step_s_blocks": main_pair["ddp_step_s_blocks"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "allreduce.json").write_text(json.dumps(report, indent=2) + "\n")

    def fmt(v: Any, digits: int = 2) -> str:
        return "" if v is None else f"{v:,.{digits}f}"

    lines = [f"`{report['command']}` on {machine}; load average (1 min) {load}; {report['wall_s']:.0f} s.", "",
             "| figure | value | median | p90 | steps/s | peer | peer value | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['figure']} | {fmt(r['value'])} | {fmt(r.get('median'))} | {fmt(r.get('p90'))} "
                     f"| {fmt(r.get('steps_per_s'), 0)} "
                     f"| {r.get('peer', '')} | {fmt(r.get('peer_value'))} | "
                     f"{fmt(r.get('ratio'))}{'x' if 'ratio' in r else ''} |")
    lines += ["", (f"Projected epoch ({STEPS_PER_EPOCH} steps at global batch 64): 1 process "
              f"{STEPS_PER_EPOCH * single:.2f} s, 2 workers default {STEPS_PER_EPOCH * default_s:.2f} s, "
              f"2 workers shared memory {STEPS_PER_EPOCH * shm_s:.2f} s."), "",
              (f"Exactness: one all-reduce, shared memory vs gloo: max abs diff "
              f"{exact['raw']['max_abs_diff_vs_gloo']:.3g}, bit-identical across ranks "
              f"{exact['raw']['bit_identical_across_ranks']}. After {args.exact_steps} steps from the same seed: "
              f"max abs weight diff, share_gradients vs DDP with gloo {exact['ddp_max_abs_diff_shm_vs_default']:.3g} "
              f"(bit-identical: {exact['ddp_bit_identical_to_default']}); weights bit-identical across ranks: "
              f"shared memory {exact['shm_bit_identical_across_ranks']}, default "
              f"{exact['default_bit_identical_across_ranks']}.")]
    (RESULTS / "allreduce.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
