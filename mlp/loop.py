"""The training loop: plain PyTorch, runnable in one process without Ray.

``fit`` knows nothing about Ray. Distribution comes in through three values
(``rank``, ``world`` and a model that may already be DDP-wrapped) and results go
out through the ``on_epoch_end`` callback, which decides about reporting and
checkpoints. ``mlp.distributed.trainer`` (Ray Train) and ``tune`` (Ray Tune) both drive
this same loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mlp.checkpoint import load_model, restore_training
from mlp.config import Config
from mlp.data import EpochData, load_splits, test_batches
from mlp.model import build_model

EpochCallback = Callable[[dict[str, Any], nn.Module, torch.optim.Optimizer, dict[str, Any]], None]


@dataclass
class RunState:
    """Progress that survives a restart (stored as state.json in each checkpoint)."""

    epoch: int = 0  # epochs completed
    elapsed_s: float = 0.0  # training seconds so far, across restarts
    best_val_accuracy: float = 0.0
    time_to_target_s: Optional[float] = None
    history: list[dict[str, Any]] = field(default_factory=list)


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` names, at the first epoch's learning rate."""
    opt = cfg.optim
    if opt.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)


def lr_at(cfg: Config, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) under ``optim.schedule``.

    A function of the epoch alone, not a scheduler object with state: a resumed run
    sets the same rate as an uninterrupted one with nothing extra in the checkpoint.
    """
    opt = cfg.optim
    if opt.schedule == "cosine":
        return opt.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.train.epochs))
    if opt.schedule == "step":
        return opt.lr * opt.gamma ** (epoch // opt.step_size)
    return opt.lr


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step; returns (the batch's mean loss, the logits), both detached.

    Both stay tensors on the model's device: calling ``.item()`` every step
    would stall a GPU, so the caller keeps what it needs and reads it once per epoch.
    """
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8192) -> tuple[float, float]:
    """(mean loss, accuracy) over a whole split held in memory, in eval mode."""
    return evaluate_batches(model, ((x[s:s + batch_size], y[s:s + batch_size]) for s in range(0, len(x), batch_size)))


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(mean loss, accuracy) over a split given batch by batch (in memory or streamed), in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct, rows = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        rows += len(y)
    model.train(was_training)
    return total_loss / max(rows, 1), correct / max(rows, 1)


def evaluate_checkpoint(folder: str | Path) -> dict[str, float]:
    """Test loss and accuracy of a checkpoint folder, rebuilt from its own config."""
    model, cfg = load_model(folder)
    loss, accuracy = evaluate_batches(model, test_batches(cfg.data, cfg.schema))
    return {"test_loss": loss, "test_accuracy": accuracy}


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: EpochData, cfg: Config,
                epoch: int, rank: int, world: int) -> tuple[float, float, int]:
    """One pass over this worker's shard; returns (loss, accuracy, samples seen by all workers).

    The per-step bookkeeping keeps each step's detached loss, logits and labels in a
    list and computes loss and accuracy once at the end: with this model a step is
    short and each small tensor operation pays a fixed dispatch cost, so summing
    per step used to add a visible share to an epoch (BENCHMARKS.md, one worker).
    """
    model.train()
    per_worker = max(1, cfg.train.batch_size // world)
    losses: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for x, y in data.train_batches(epoch, rank, world, per_worker):
        loss, logits = train_step(model, optimizer, x, y)
        losses.append(loss)
        outputs.append(logits)
        labels.append(y)
    if not losses:
        raise RuntimeError(f"worker {rank} got no training rows in epoch {epoch + 1}: the table is too small "
                           f"for {world} workers")
    rows = sum(len(y) for y in labels)
    sizes = torch.tensor([len(y) for y in labels], dtype=torch.float32, device=losses[0].device)
    mean_loss = (torch.stack(losses) * sizes).sum().item() / rows
    correct = (torch.cat(outputs).argmax(1) == torch.cat(labels)).sum().item()
    return mean_loss, correct / rows, rows * world


def fit(cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer, data: EpochData,
        state: RunState, on_epoch_end: EpochCallback, rank: int = 0, world: int = 1,
        epoch_extras: Optional[Callable[[], dict[str, Any]]] = None) -> RunState:
    """Train from ``state.epoch`` to ``cfg.train.epochs``, calling ``on_epoch_end`` after each epoch.

    The callback gets (metrics, model, optimizer, state-as-dict); it may raise to
    stop the run, which is how Tune's early stopping and interrupts get in.
    ``epoch_extras`` adds the caller's own figures to each epoch's metrics (and
    so to the history saved in checkpoints), e.g. the seconds spent exchanging gradients.
    """
    target = cfg.train.target_accuracy
    for epoch in range(state.epoch, cfg.train.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        started = time.perf_counter()
        train_loss, train_acc, samples = train_epoch(model, optimizer, data, cfg, epoch, rank, world)
        val_loss, val_acc = evaluate_batches(model, data.val_batches())
        seconds = time.perf_counter() - started
        state.epoch = epoch + 1
        state.elapsed_s += seconds
        state.best_val_accuracy = max(state.best_val_accuracy, val_acc)
        if target is not None and state.time_to_target_s is None and val_acc >= target:
            state.time_to_target_s = state.elapsed_s
        metrics = {
            "epoch": state.epoch, "train_loss": train_loss, "train_accuracy": train_acc,
            "val_loss": val_loss, "val_accuracy": val_acc, "best_val_accuracy": state.best_val_accuracy,
            "epoch_s": seconds, "samples_per_s": samples / seconds, "elapsed_s": state.elapsed_s,
            "lr": optimizer.param_groups[0]["lr"],  # the rate this epoch trained with (a schedule may change it)
            "time_to_target_s": state.time_to_target_s, "timestamp": time.time(),
            **(epoch_extras() if epoch_extras is not None else {}),
        }
        state.history.append(metrics)
        on_epoch_end(metrics, model, optimizer, asdict(state))
    return state


def prepare(cfg: Config, device: torch.device, resume_from: Optional[str] = None,
            data: Optional[EpochData] = None) -> tuple[nn.Module, torch.optim.Optimizer, EpochData, RunState]:
    """Model, optimizer, data (on ``device``) and progress, restored from a checkpoint folder if given.

    ``data`` is the caller's own when it streams (``mlp.distributed.ingest``); else the splits are loaded here.
    """
    model = build_model(cfg.model, cfg.data.seed, cfg.schema.input_size, cfg.schema.num_classes).to(device)
    optimizer = build_optimizer(cfg, model)
    state = RunState()
    if resume_from is not None:
        saved = restore_training(resume_from, model, optimizer)
        state = RunState(**{k: saved[k] for k in RunState.__dataclass_fields__ if k in saved})
    return model, optimizer, data if data is not None else load_splits(cfg.data, cfg.schema).to(device), state


def set_threads(cfg: Config) -> None:
    """Ray pins OMP_NUM_THREADS=1 in workers; choose torch's thread count on purpose instead."""
    threads = cfg.train.threads or max(1, int(cfg.scaling.cpus_per_worker))
    torch.set_num_threads(threads)
