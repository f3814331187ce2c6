"""Gradient all-reduce through shared memory for data-parallel workers on one machine.

Why: this model's whole gradient is 79,510 floats (318 KB) and a step computes
quickly, so DDP's step time is set by the all-reduce. Gloo sends the gradient
over loopback TCP (``benchmarks/bench_allreduce.py`` times both paths; figures in
BENCHMARKS.md); this torch build's gloo has no shared-memory path (upstream
gloo added one in pytorch/gloo#458 and reverted it in #490). Workers on the same
machine can instead read each other's gradients from one shared-memory segment:
each rank writes its (already averaged) gradient into its own slot, publishes a
sequence number, waits for everyone else's, and sums all slots in rank order.

The result is exact synchronous SGD, and bit-identical on every rank: every rank
adds the same slots in the same order. With two ranks it is also bit-identical to
gloo's all-reduce (``a/2 + b/2`` either way); with more it differs from gloo
only by the order of the float additions.

Use it through :func:`share_gradients`, which makes the optimizer average the
gradients over the ranks before every step (no DDP wrapper: see
:class:`SharedGradients` for why). It returns None, and the caller wraps the
model in DDP with gloo instead, when the world size is 1, when the ranks cannot
open one segment (different machines or containers), when they do not share a
pid namespace, or off x86-64. :func:`time_ddp_exchange` times DDP's own
all-reduce on that path, so both paths report the seconds spent exchanging.

Segment life: rank 0 creates ``/dev/shm/mlp-allreduce-<pid>-<token>``, the other
ranks map it, and rank 0 unlinks the name right after they have, so during
training no name exists and a killed worker leaves nothing behind; the memory
goes when the last process unmaps it. A worker killed inside that short set-up
window leaves a name whose creator pid is dead, and the next set-up on the
machine removes such names.
"""

# No ``from __future__ import annotations``: DDP's register_comm_hook checks the hook's
# annotations against the real ``dist.GradBucket`` and ``Future`` types, not strings.
import ctypes
import mmap
import os
import platform
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from mlp.procs import pid_alive

SHM_DIR = Path("/dev/shm")
PREFIX = "mlp-allreduce-"
_LINE = 64  # bytes per rank counter: one cache line each, so ranks do not share a line while spinning
_SPIN_S = 50e-6  # busy-wait this long before sleeping in the kernel: a peer in lockstep usually arrives within it
_SLEEP_AFTER_S = 0.002  # "spin" waits only: after this long, sleep between reads instead of burning a core
_MAX_SLEEP_S = 0.001  # "spin" waits only: longest sleep between reads once a wait is long
_CHECK_EVERY_S = 0.1  # how often a waiting rank checks that the peers it waits for are alive
WAITS = ("futex", "spin")  # how a rank waits for its peers; MLP_ALLREDUCE_WAIT picks one (for measurement)


class _Futex:
    """Linux futex wait and wake on a 32-bit word of shared memory, through libc's ``syscall``.

    Why: a rank whose peer is late should give its core away at once, so that the
    late peer (or the Ray process that pre-empted it) can run there; spinning or
    ``sched_yield`` keeps the core, and ``time.sleep`` wakes late. ``FUTEX_WAIT``
    sleeps only while the word still holds the value the waiter saw, and the
    publisher wakes after writing, so no wake-up is lost. The words live in a
    ``MAP_SHARED`` mapping, so the non-private futex operations are used.
    """

    _SYS_FUTEX = 202  # x86-64 (the only architecture this module runs on, see _local_ok)
    _WAIT, _WAKE = 0, 1

    class _Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32,
                                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32]

    def wait(self, address: int, seen: int, timeout_s: float) -> None:
        """Sleep until woken, ``timeout_s`` passes, or the word at ``address`` no longer equals ``seen``."""
        timeout = self._Timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
        self._syscall(self._SYS_FUTEX, address, self._WAIT, seen & 0xFFFFFFFF, ctypes.addressof(timeout), None, 0)

    def wake(self, address: int) -> None:
        """Wake every process sleeping on the word at ``address``."""
        self._syscall(self._SYS_FUTEX, address, self._WAKE, 0x7FFFFFFF, None, None, 0)


def segment_name(pid: int, token: str) -> str:
    """The /dev/shm name: the creator's pid lets a later run tell a stale segment from a live one."""
    return f"{PREFIX}{pid}-{token}"


def remove_stale_segments(directory: Path = SHM_DIR) -> list[str]:
    """Unlink segment names whose creator process is gone; returns the names removed.

    A name only exists between creation and the other ranks mapping it, so a name
    whose creator is dead can belong to no running set-up in this pid namespace.
    """
    removed = []
    for path in directory.glob(f"{PREFIX}*"):
        try:
            pid = int(path.name[len(PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if not pid_alive(pid):
            try:
                path.unlink()
                removed.append(path.name)
            except FileNotFoundError:
                pass
    return removed


def _local_ok() -> bool:
    """Whether this process can take part at all: Linux /dev/shm and x86-64's store ordering.

    The protocol publishes data by writing it and then a counter with ordinary
    stores, and reads the counter before the data; x86-64 (TSO) keeps both in
    program order. Weaker memory models would need fences Python cannot issue.
    """
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64") and SHM_DIR.is_dir()


def _pid_namespace() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


class ShmAllreduce:
    """One shared segment per process group, double-buffered, and the all-reduce over it.

    Layout: ``world`` counters (one cache line each), then two buffers (used
    alternately by call parity) of ``world`` slots of ``capacity`` bytes. Two
    buffers are enough without any "done reading" counter: a rank can only start
    call ``s`` after every rank has arrived at call ``s - 1``, so every rank has
    finished reading call ``s - 2``, the last user of this parity's buffer.
    """

    def __init__(self, mapping: mmap.mmap, rank: int, world: int, capacity: int, pids: list[int],
                 timeout_s: float, wait: str = "futex") -> None:
        self.rank, self.world, self.capacity = rank, world, capacity
        self.pids, self.timeout_s = pids, timeout_s
        self.seq = 0  # calls so far; every rank makes the same calls in the same order
        self._mapping = mapping
        self._counters = memoryview(mapping)[: world * _LINE].cast("q")  # counter of rank r at index r*8
        self._futex = _Futex() if wait == "futex" else None
        anchor = ctypes.c_char.from_buffer(mapping)  # only for the address; dropped so close() can unmap
        self._address = ctypes.addressof(anchor)  # rank r's futex word: the low half of its counter (little-endian)
        del anchor
        raw = torch.frombuffer(mapping, dtype=torch.uint8)
        header = world * _LINE
        self._slots = [[raw[header + (parity * world + r) * capacity:][:capacity] for r in range(world)]
                       for parity in (0, 1)]
        self._view_cache: dict[tuple[int, torch.dtype, tuple[int, ...]], list[torch.Tensor]] = {}

    @staticmethod
    def size_for(world: int, capacity: int) -> int:
        return world * _LINE + 2 * world * capacity

    def fits(self, tensor: torch.Tensor) -> bool:
        """Whether the segment can take ``tensor``: on the CPU, contiguous, and no larger than a slot."""
        return (tensor.device.type == "cpu" and tensor.is_contiguous()
                and tensor.numel() * tensor.element_size() <= self.capacity)

    def allreduce_(self, tensor: torch.Tensor, average: bool = False) -> torch.Tensor:
        """Sum ``tensor`` over the ranks in place (divided by the world size first when ``average``).

        Each rank writes its contribution to its slot, then sums slot 0, 1, ...
        in that order into ``tensor``, so all ranks hold the same bits.
        """
        if not self.fits(tensor):
            raise ValueError(f"tensor of {tensor.numel() * tensor.element_size()} bytes on {tensor.device} "
                             f"does not fit the {self.capacity}-byte shared slots")
        self.seq += 1
        views = self._views(self.seq & 1, tensor)
        if average:
            torch.div(tensor, self.world, out=views[self.rank])
        else:
            views[self.rank].copy_(tensor)
        self._counters[self.rank * (_LINE // 8)] = self.seq  # publish: after the data, in program order
        if self._futex is not None:
            self._futex.wake(self._address + self.rank * _LINE)
        self._wait_for_all(self.seq)
        torch.add(views[0], views[1], out=tensor)
        for view in views[2:]:
            tensor.add_(view)
        return tensor

    def _views(self, parity: int, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's slot as a tensor shaped like ``tensor``, cached: remaking them every call is measurable."""
        key = (parity, tensor.dtype, tuple(tensor.shape))
        views = self._view_cache.get(key)
        if views is None:
            nbytes = tensor.numel() * tensor.element_size()
            views = [slot[:nbytes].view(tensor.dtype).view(tensor.shape) for slot in self._slots[parity]]
            self._view_cache[key] = views
        return views

    def _wait_for_all(self, seq: int) -> None:
        """Return once every rank has published ``seq``: spin for up to ``_SPIN_S``, then sleep.

        Ranks in lockstep meet within the spin, which costs no system call. A
        peer that is later than that is usually one a Ray process pre-empted: the
        "futex" wait then gives this core away until the peer publishes, so the
        scheduler can run the peer (or the intruder) here; the "spin" wait yields
        and then sleeps ever longer, keeping the core meanwhile
        (``benchmarks/bench_allreduce.py`` measures both; figures in BENCHMARKS.md).

        Raises if a peer's process is gone or ``timeout_s`` passes, as gloo would
        on a broken connection, so a dead worker fails the step instead of hanging it.
        """
        counters, stride = self._counters, _LINE // 8
        started = checked = None
        for r in range(self.world):
            if counters[r * stride] >= seq:
                continue
            if started is None:
                started = checked = time.perf_counter()
            while (seen := counters[r * stride]) < seq:
                now = time.perf_counter()
                waited = now - started
                if waited < _SPIN_S:
                    continue
                if self._futex is not None:
                    self._futex.wait(self._address + r * _LINE, seen, _CHECK_EVERY_S)
                elif waited > _SLEEP_AFTER_S:  # a slow peer (evaluation, checkpoint): back off, at most 5% late
                    time.sleep(min(_MAX_SLEEP_S, waited / 20))
                else:
                    os.sched_yield()
                if now - checked > _CHECK_EVERY_S:
                    checked = now
                    if not pid_alive(self.pids[r]):
                        raise RuntimeError(f"shared-memory all-reduce: rank {r} (pid {self.pids[r]}) has exited")
                    if waited > self.timeout_s:
                        raise TimeoutError(f"shared-memory all-reduce: rank {r} did not arrive at call {seq} "
                                           f"within {self.timeout_s:.0f} s")

    def close(self) -> None:
        """Unmap the segment (the name was unlinked at set-up); safe to call twice."""
        if self._mapping.closed:
            return
        self._counters.release()
        self._slots, self._view_cache = [], {}
        try:
            self._mapping.close()
        except BufferError:  # a caller still holds a view of a slot; the mapping goes with the process
            pass

    @classmethod
    def setup(cls, capacity: int, group: Optional[dist.ProcessGroup] = None,
              timeout_s: float = 1800.0, wait: str = "futex") -> Optional["ShmAllreduce"]:
        """Collective: every rank of ``group`` must call it; returns None on every rank if any rank cannot join.

        ``capacity`` is the largest tensor in bytes that will be reduced. The
        decision is made together (all-gathers over ``group``), so either every
        rank uses shared memory or none does, and no rank waits on a peer that
        fell back. ``wait`` is how a rank waits for late peers (``WAITS``; see :meth:`_wait_for_all`).
        """
        if wait not in WAITS:
            raise ValueError(f"wait must be one of {WAITS}, got {wait!r}")
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if world == 1:
            return None
        capacity = -(-capacity // _LINE) * _LINE
        infos: list[Any] = [None] * world
        dist.all_gather_object(infos, (_local_ok(), _pid_namespace(), os.getpid()), group=group)
        if not all(ok for ok, _, _ in infos) or len({ns for _, ns, _ in infos}) != 1 or infos[0][1] is None:
            return None
        size = cls.size_for(world, capacity)
        name: list[Optional[str]] = [None]
        mapping: Optional[mmap.mmap] = None
        if rank == 0:
            remove_stale_segments()
            try:
                name[0], mapping = _create(size)
            except OSError:
                name[0] = None
        dist.broadcast_object_list(name, src=dist.get_global_rank(group, 0) if group is not None else 0,
                                   group=group)
        if name[0] is None:
            return None
        if rank != 0:
            mapping = _open(name[0], size)
        opened: list[Any] = [None] * world
        dist.all_gather_object(opened, mapping is not None, group=group)  # also: everyone has mapped it
        if rank == 0:
            (SHM_DIR / name[0]).unlink(missing_ok=True)
        if not all(opened):
            if mapping is not None:
                mapping.close()
            return None
        assert mapping is not None
        return cls(mapping, rank, world, capacity, [pid for _, _, pid in infos], timeout_s, wait)


def _create(size: int) -> tuple[str, mmap.mmap]:
    name = segment_name(os.getpid(), secrets.token_hex(8))
    fd = os.open(SHM_DIR / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)  # zero-filled: every counter starts at 0
        return name, mmap.mmap(fd, size)
    except OSError:
        os.unlink(SHM_DIR / name)
        raise
    finally:
        os.close(fd)


def _open(name: str, size: int) -> Optional[mmap.mmap]:
    """Map rank 0's segment, or None if this rank cannot see it (another machine or container)."""
    try:
        fd = os.open(SHM_DIR / name, os.O_RDWR)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size != size:
            return None
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


class SharedGradients:
    """Exact synchronous data parallelism without DDP: gradients averaged before every optimizer step.

    Why not DDP with a communication hook: for this model DDP's own per-step
    work in Python (forward pre-hooks, the reducer, a future per bucket) costs
    more than the exchange itself (step times against one process: BENCHMARKS.md,
    ``benchmarks/bench_allreduce.py``).

    Before each ``optimizer.step()`` every rank concatenates its gradients into
    its slot of the segment (divided by the world size), waits for the others,
    and takes the sum of all slots in rank order as the gradient: the same
    arithmetic as DDP's averaging all-reduce, bit-identical on every rank (and
    to gloo's for two ranks). ``exchange_s`` adds up the seconds spent in the
    exchange, waiting for the slowest rank included.
    """

    def __init__(self, shm: ShmAllreduce, params: list[nn.Parameter]) -> None:
        self.shm, self.params = shm, params
        self.flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype)
        self._views, offset = [], 0
        for p in params:  # the averaged gradient of each parameter, as a view of ``flat``
            self._views.append(self.flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        self.exchange_s = 0.0
        self._hook: Any = None

    def average(self) -> None:
        """Replace every parameter's gradient by its average over the ranks (collective)."""
        started = time.perf_counter()
        grads = [p.grad for p in self.params]
        if any(g is view for g, view in zip(grads, self._views)):
            # ``zero_grad(set_to_none=False)`` kept last step's averaged views as the gradients and
            # backward accumulated into them: they already sit in ``flat``; bring in the others.
            for g, view in zip(grads, self._views):
                if g is None:
                    view.zero_()
                elif g is not view:
                    view.copy_(g)
        else:
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                       for g, p in zip(grads, self.params)], out=self.flat)
        self.shm.allreduce_(self.flat, average=True)
        for p, view in zip(self.params, self._views):
            p.grad = view
        self.exchange_s += time.perf_counter() - started

    def attach(self, optimizer: torch.optim.Optimizer) -> "SharedGradients":
        """Average before each ``optimizer.step()`` (a step pre-hook), so the training loop is unchanged."""
        self._hook = optimizer.register_step_pre_hook(lambda _optimizer, _args, _kwargs: self.average())
        return self

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.shm.close()


def share_gradients(model: nn.Module, optimizer: torch.optim.Optimizer,
                    group: Optional[dist.ProcessGroup] = None) -> Optional[SharedGradients]:
    """Make ``optimizer`` average ``model``'s gradients over the ranks through shared memory.

    Collective over ``group``: every rank calls it with its unwrapped model,
    before the first step. The parameters start equal everywhere (rank 0's are
    broadcast, as DDP does). Returns None on every rank when the ranks cannot
    share a segment (different machines or containers, one rank, parameters of
    mixed dtypes or off the CPU); the caller then wraps the model in DDP instead.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    usable = bool(params) and all(p.device.type == "cpu" and p.dtype == params[0].dtype for p in params)
    agreed: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(agreed, usable, group=group)
    if not all(agreed):
        return None
    shm = ShmAllreduce.setup(trainable_bytes(model), group=group, wait=os.environ.get("MLP_ALLREDUCE_WAIT", "futex"))
    if shm is None:
        return None
    src = dist.get_global_rank(group, 0) if group is not None else 0
    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p.data, src=src, group=group)
    return SharedGradients(shm, params).attach(optimizer)


def trainable_bytes(model: nn.Module) -> int:
    """Bytes of all gradients together: the largest tensor the exchange takes."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


class TimedAllreduce:
    """The state of :func:`timed_allreduce_hook`: DDP's process group and the seconds its all-reduces took."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group, self.exchange_s = group, 0.0


def timed_allreduce_hook(state: TimedAllreduce, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: DDP's default averaging all-reduce (gloo, NCCL), timed into ``state.exchange_s``.

    The time runs from the hook's call (the bucket's gradients are ready) until
    the all-reduce completes; for this model's single bucket that is the time a
    step waits for the exchange. Used where shared memory is not: across machines
    and on GPUs, so that a run can say when communication dominates its steps.
    """
    started = time.perf_counter()

    def done(future: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
        state.exchange_s += time.perf_counter() - started
        return future.value()

    return allreduce_hook(state.group, bucket).then(done)


def time_ddp_exchange(model: DistributedDataParallel) -> TimedAllreduce:
    """Register :func:`timed_allreduce_hook` on a DDP model; every rank calls it before the first backward."""
    state = TimedAllreduce(model.process_group)
    model.register_comm_hook(state, timed_allreduce_hook)
    return state
