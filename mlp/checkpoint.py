"""Checkpoint folders: weights, optimizer state, the resolved config and progress.

Layout of one checkpoint folder::

    model.pt       state_dict of the bare model (never a DDP wrapper)
    optimizer.pt   optimizer state_dict, for resuming
    config.json    the resolved Config, so a checkpoint alone rebuilds the model
    state.json     epoch, elapsed seconds, best val accuracy, ...

Everything loads with ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from mlp.config import Config
from mlp.model import MLP, build_model

PathLike = Union[str, Path]


def bare_model(model: nn.Module) -> nn.Module:
    """Strip a DistributedDataParallel wrapper, so weights load into a plain MLP."""
    return getattr(model, "module", model)


def save_checkpoint(folder: PathLike, model: nn.Module, cfg: Config,
                    state: dict[str, Any], optimizer: Optional[torch.optim.Optimizer] = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in bare_model(model).state_dict().items()}
    torch.save(weights, folder / "model.pt")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (folder / "state.json").write_text(json.dumps(state, indent=2))
    return folder


def read_config(folder: PathLike) -> Config:
    return Config.from_dict(json.loads((Path(folder) / "config.json").read_text()))


def read_state(folder: PathLike) -> dict[str, Any]:
    path = Path(folder) / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_model(folder: PathLike, device: str | torch.device = "cpu") -> tuple[MLP, Config]:
    """Rebuild the model from a checkpoint or registry folder alone, in eval mode."""
    folder = Path(folder)
    if not (folder / "model.pt").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint: model.pt is missing")
    cfg = read_config(folder)
    model = build_model(cfg.model, seed=cfg.data.seed)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return model.to(device).eval(), cfg


def restore_training(folder: PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load weights and optimizer state in place for a resumed run; returns the saved progress."""
    folder = Path(folder)
    bare_model(model).load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    if (folder / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    return read_state(folder)
