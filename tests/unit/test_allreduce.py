"""The shared-memory all-reduce (``mlp.distributed.allreduce``) between two real processes over gloo, no Ray.

One pair of spawned ranks runs every two-process check once (starting
processes is most of the cost) and rank 0 writes what it saw; the tests below
assert on that record. World size 1 runs in this process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mlp.distributed import allreduce
from mlp.distributed.allreduce import PREFIX, SHM_DIR, ShmAllreduce, segment_name, share_gradients, time_ddp_exchange
from mlp.config import ModelConfig
from mlp.model import build_model

pytestmark = pytest.mark.skipif(not allreduce._local_ok(), reason="needs Linux /dev/shm on x86-64")

WORLD = 2


def _names_of(pid: int) -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob(f"{PREFIX}{pid}-*"))


def _train(model: torch.nn.Module, steps: int, rank: int,
           optimizer: torch.optim.Optimizer | None = None, set_to_none: bool = True) -> torch.Tensor:
    """A few SGD steps on fixed data, 16 samples per rank; returns the flat weights."""
    gen = torch.Generator().manual_seed(5)
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x, y = torch.rand(WORLD * 16, 784, generator=gen), torch.randint(0, 10, (WORLD * 16,), generator=gen)
        optimizer.zero_grad(set_to_none=set_to_none)
        F.cross_entropy(model(x[rank * 16:(rank + 1) * 16]), y[rank * 16:(rank + 1) * 16]).backward()
        optimizer.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _same_on_all_ranks(t: torch.Tensor) -> bool:
    gathered = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(gathered, t)
    return all(torch.equal(gathered[0], g) for g in gathered)


def _rank_main(rank: int, port: int, out: str) -> None:
    """Both ranks run this; rank 0 records the outcome of each check in ``out``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    seen: dict[str, Any] = {"rank0_pid": os.getpid()}

    state = ShmAllreduce.setup(4 * 10_000)
    assert state is not None
    seen["names_after_setup"] = [p.name for p in SHM_DIR.glob(f"{PREFIX}*")]
    # Many calls of changing sizes: both parities of the double buffer, each checked against gloo.
    worst, identical = 0.0, True
    gen = torch.Generator().manual_seed(100 + rank)
    for call in range(60):
        x = torch.randn(1 + (call * 997) % 10_000, generator=gen)
        expected = x.clone()
        dist.all_reduce(expected)
        average = call % 2 == 1
        got = state.allreduce_(x.clone(), average=average)
        worst = max(worst, (got - (expected / WORLD if average else expected)).abs().max().item())
        identical = identical and _same_on_all_ranks(got)
    seen["raw_max_abs_diff"], seen["raw_bit_identical"] = worst, identical

    # A late peer: the waiting rank sleeps in the kernel (little CPU) and wakes as soon as the peer publishes,
    # not at its next liveness check (made 2 s apart here, so a lost wake-up shows).
    allreduce._CHECK_EVERY_S = 2.0
    dist.barrier()
    if rank == 1:
        time.sleep(0.5)
        arrived = torch.tensor([time.time()], dtype=torch.float64)
        state.allreduce_(torch.ones(100))
    else:
        wall, cpu = time.time(), time.thread_time()
        state.allreduce_(torch.ones(100))
        returned, seen["late_peer_cpu_s"] = time.time(), time.thread_time() - cpu
        seen["late_peer_wait_s"] = returned - wall
        arrived = torch.tensor([returned], dtype=torch.float64)
    dist.broadcast(arrived, src=1)
    if rank == 0:
        seen["late_peer_wake_s"] = returned - arrived.item()
    allreduce._CHECK_EVERY_S = 0.1
    state.close()

    # The spin-and-sleep wait (kept for measurement) gives the same sums.
    spin = ShmAllreduce.setup(4 * 1000, wait="spin")
    assert spin is not None
    x = torch.randn(1000, generator=gen)
    expected = x.clone()
    dist.all_reduce(expected)
    seen["spin_max_abs_diff"] = (spin.allreduce_(x) - expected).abs().max().item()
    spin.close()

    # The optimizer-step exchange against DDP's default all-reduce, on a deeper model (6 parameters),
    # from different initial weights per rank: share_gradients must broadcast rank 0's first, as DDP does.
    deep = ModelConfig(hidden_sizes=[100, 50, 50])
    default = DistributedDataParallel(build_model(deep, seed=0))
    shared_model = build_model(deep, seed=rank)  # rank 1 starts elsewhere on purpose
    optimizer = torch.optim.SGD(shared_model.parameters(), lr=0.1)
    shared = share_gradients(shared_model, optimizer)
    assert shared is not None
    reference = _train(default, 6, rank)
    weights = _train(shared_model, 6, rank, optimizer)
    seen["calls_per_step"] = shared.shm.seq / 6
    seen["exchange_s"] = shared.exchange_s
    seen["ddp_max_abs_diff"] = (reference - weights).abs().max().item()
    seen["ddp_bit_identical"] = _same_on_all_ranks(weights)
    seen["names_while_training"] = [p.name for p in SHM_DIR.glob(f"{PREFIX}*")]
    shared.close()

    # The same with zero_grad(set_to_none=False): backward accumulates into last step's averaged views.
    kept_model = build_model(deep, seed=rank)
    kept_optimizer = torch.optim.SGD(kept_model.parameters(), lr=0.1)
    kept = share_gradients(kept_model, kept_optimizer)
    assert kept is not None
    kept_weights = _train(kept_model, 6, rank, kept_optimizer, set_to_none=False)
    seen["kept_grads_max_abs_diff"] = (reference - kept_weights).abs().max().item()
    kept.close()

    # DDP's own all-reduce with its time recorded: same weights as without the timing hook.
    timed = DistributedDataParallel(build_model(deep, seed=0))
    clock = time_ddp_exchange(timed)
    seen["timed_max_abs_diff"] = (reference - _train(timed, 6, rank)).abs().max().item()
    seen["timed_exchange_s"] = clock.exchange_s

    # A peer that dies: the survivor's next call fails fast instead of waiting forever.
    doomed = ShmAllreduce.setup(4 * 100)
    assert doomed is not None
    dist.barrier()
    if rank == 1:
        os._exit(0)
    started = time.monotonic()
    try:
        doomed.allreduce_(torch.ones(100))
        seen["dead_peer"] = "returned"
    except RuntimeError as err:
        seen["dead_peer"] = str(err)
    seen["dead_peer_s"] = time.monotonic() - started
    Path(out).write_text(json.dumps(seen))
    os._exit(0)  # the group's peer is gone: skip gloo's teardown handshake


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _killed_creator_segment() -> str:
    """A process that created a segment the way rank 0 does, then was killed before unlinking it.

    Forked rather than started afresh: the child needs nothing but ``_create``, and a fork costs
    milliseconds where a new interpreter importing torch costs seconds.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: create, report the name, wait to be killed
        os.close(read_end)
        name, _ = allreduce._create(4096)
        os.write(write_end, name.encode())
        time.sleep(60)
        os._exit(1)
    os.close(write_end)
    name = os.read(read_end, 200).decode()
    os.close(read_end)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return name


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    stale = _killed_creator_segment()
    assert (SHM_DIR / stale).exists()
    live = SHM_DIR / segment_name(os.getpid(), "livetest")  # a creator that is alive: must be left alone
    live.write_bytes(b"")
    out = str(tmp_path_factory.mktemp("allreduce") / "rank0.json")
    try:
        mp.spawn(_rank_main, args=(_free_port(), out), nprocs=WORLD)
        seen = json.loads(Path(out).read_text())
        seen["stale_left"] = (SHM_DIR / stale).exists()
        seen["live_left"] = live.exists()
        yield seen
    finally:
        live.unlink(missing_ok=True)
        (SHM_DIR / stale).unlink(missing_ok=True)


def test_equals_gloo_and_is_bit_identical_across_ranks(pair: dict[str, Any]) -> None:
    assert pair["raw_max_abs_diff"] < 1e-6
    assert pair["raw_bit_identical"]


def test_a_rank_waiting_for_a_late_peer_sleeps_and_wakes_when_it_arrives(pair: dict[str, Any]) -> None:
    assert pair["late_peer_wait_s"] >= 0.45  # it did wait for the peer's 0.5 s
    assert pair["late_peer_cpu_s"] < 0.1 * pair["late_peer_wait_s"]  # asleep, not spinning
    assert pair["late_peer_wake_s"] < 0.05  # woken by the publish, not by the 2 s liveness check
    assert pair["spin_max_abs_diff"] == 0.0


def test_shared_gradients_match_ddp_bit_for_bit(pair: dict[str, Any]) -> None:
    assert pair["calls_per_step"] == 1  # one exchange of all six gradients per optimizer step
    assert pair["ddp_max_abs_diff"] == 0  # two ranks: a/2 + b/2 in the same order as gloo's sum
    assert pair["ddp_bit_identical"]
    assert pair["exchange_s"] > 0
    assert pair["kept_grads_max_abs_diff"] == 0  # zero_grad(set_to_none=False) works the same


def test_timed_ddp_all_reduce_changes_nothing_but_records_its_time(pair: dict[str, Any]) -> None:
    assert pair["timed_max_abs_diff"] == 0
    assert pair["timed_exchange_s"] > 0


def test_no_segment_name_exists_after_setup_or_after_exit(pair: dict[str, Any]) -> None:
    ours = f"{PREFIX}{pair['rank0_pid']}-"
    assert not [n for n in pair["names_after_setup"] + pair["names_while_training"] if n.startswith(ours)]
    assert _names_of(pair["rank0_pid"]) == []


def test_stale_segment_of_a_killed_process_is_removed_by_the_next_run(pair: dict[str, Any]) -> None:
    assert not pair["stale_left"]
    assert pair["live_left"]


def test_dead_peer_raises_instead_of_hanging(pair: dict[str, Any]) -> None:
    assert "has exited" in pair["dead_peer"]
    assert pair["dead_peer_s"] < 5


def test_world_size_one_keeps_the_default_all_reduce() -> None:
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        model = build_model(ModelConfig(), seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        assert share_gradients(model, optimizer) is None
        before = [p.detach().clone() for p in model.parameters()]
        _train(model, 1, 0, optimizer)
        assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    finally:
        dist.destroy_process_group()
