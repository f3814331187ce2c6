"""Checkpoint folders: weights, optimizer state, the resolved config and progress.

Layout of one checkpoint folder::

    model.pt       state_dict of the bare model (never a DDP wrapper)
    optimizer.pt   optimizer state_dict, for resuming
    config.json    the resolved Config, so a checkpoint alone rebuilds the model
    state.json     epoch, elapsed seconds, best val accuracy, ...

Everything loads with ``torch.load(weights_only=True)``: nothing is unpickled.
A file that cannot be loaded (missing, truncated, not a ``torch.save`` file, a
pickle that asks to run code, weights that do not fit ``config.json``) raises
an error that names the file: ``FileNotFoundError`` when it is missing,
``CheckpointError`` (a ``ValueError``) otherwise, ``UnsafeCheckpointError`` when
it would run code. Callers such as Serve's hot swap catch them and keep what
they have.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from mlp.config import Config
from mlp.model import MLP, build_model

PathLike = Union[str, Path]
WEIGHTS_FILE, OPTIMIZER_FILE, CONFIG_FILE, STATE_FILE = "model.pt", "optimizer.pt", "config.json", "state.json"


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be loaded; the message names the file and what is wrong."""


class UnsafeCheckpointError(CheckpointError):
    """A file that would run code when unpickled; refused before anything in it ran."""


def bare_model(model: nn.Module) -> nn.Module:
    """Strip a DistributedDataParallel wrapper, so weights load into a plain MLP."""
    return getattr(model, "module", model)


def save_checkpoint(folder: PathLike, model: nn.Module, cfg: Config,
                    state: dict[str, Any], optimizer: Optional[torch.optim.Optimizer] = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in bare_model(model).state_dict().items()}
    torch.save(weights, folder / WEIGHTS_FILE)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2))
    return folder


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint: {name} is missing ({path})")
    return path


def read_config(folder: PathLike) -> Config:
    """The resolved config saved beside the weights; a missing or broken file is named in the error."""
    path = _require(Path(folder), CONFIG_FILE)
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError) as err:  # bad JSON, or a config this code refuses
        raise CheckpointError(f"{path} cannot be used: {err}") from None


def load_tensors(path: PathLike) -> Any:
    """``torch.load(path, weights_only=True)``, with errors that name the file.

    The weights-only unpickler refuses any pickle that asks to call something
    (``os.system``, a class constructor, ...) before calling it, so a planted
    ``model.pt`` never runs; the refusal becomes ``UnsafeCheckpointError``.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            found = re.search(r"unsupported GLOBAL \S+|Unsupported [^\n]+", str(err))
            why = found.group(0).strip() if found else "refused by the weights-only loader"
            raise UnsafeCheckpointError(
                f"{path} refused: not a plain tensor file; loading it needs the full unpickler, which runs "
                f"whatever code the file names ({why}); nothing in it was run. Do not load it with "
                f"weights_only=False: promote a trained checkpoint again, or save weights with "
                f"torch.save(model.state_dict(), ...)") from None
        raise CheckpointError(f"{path} is corrupt (truncated, or not a torch.save file): {_gist(err)}") from None
    except (PermissionError, IsADirectoryError):
        raise  # their messages name the file, and the file is not the problem
    except (RuntimeError, EOFError, ValueError, OSError) as err:  # a cut zip can fail a seek with EINVAL
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path} is empty (0 bytes): a copy or download that never finished?") from None
        raise CheckpointError(f"{path} is corrupt (truncated, or not a torch.save file): {_gist(err)}") from None


def _gist(err: BaseException) -> str:
    """An exception's message on one line, without torch's paragraphs of advice (``model.pt`` is named already)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(". ")[0]


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    weights = load_tensors(path)
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path} holds a {type(weights).__name__}, not a state_dict of tensors")
    return dict(weights)


def read_state(folder: PathLike) -> dict[str, Any]:
    """Saved progress (epoch, history, ...); empty for a folder without ``state.json`` (a registry version)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


def load_model(folder: PathLike, device: str | torch.device = "cpu") -> tuple[MLP, Config]:
    """Rebuild the model from a checkpoint or registry folder alone, in eval mode."""
    folder = Path(folder)
    weights_path = _require(folder, WEIGHTS_FILE)
    cfg = read_config(folder)
    model = build_model(cfg.model, cfg.data.seed, cfg.schema.input_size, cfg.schema.num_classes)
    _load_into(model, weights_path, folder / CONFIG_FILE)
    return model.to(device).eval(), cfg


def _load_into(model: nn.Module, weights_path: Path, config_path: Path) -> None:
    try:
        bare_model(model).load_state_dict(_state_dict(weights_path))
    except RuntimeError as err:  # missing/unexpected keys or shapes: weights of another model
        raise CheckpointError(f"{weights_path} does not fit the model described by {config_path}: "
                              f"{' '.join(str(err).split())}") from None


def restore_training(folder: PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load weights and optimizer state in place for a resumed run; returns the saved progress."""
    folder = Path(folder)
    _load_into(model, _require(folder, WEIGHTS_FILE), folder / CONFIG_FILE)
    if (folder / OPTIMIZER_FILE).is_file():
        optimizer_state = load_tensors(folder / OPTIMIZER_FILE)
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{folder / OPTIMIZER_FILE} does not fit this optimizer: {err}") from None
    return read_state(folder)
