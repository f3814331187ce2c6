"""The Ray-free predictor: one promoted model (or checkpoint) in memory, answering batches.

Serve's deployment, the plain-FastAPI benchmark peer, the client's offline
comparison and the unit tests all use this class, so every path preprocesses
and post-processes the same way. It never imports Ray.

What it does *not* do: parse HTTP bodies or images (``serve.inputs``,
``serve.images``) or decide when to reload (the deployment does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from mlp.checkpoint import CheckpointError, load_model, read_state
from mlp.config import Config
from mlp.data import class_names
from mlp.model import MLP
from mlp.registry import is_version_number, resolve_version
from mlp.registry.storage import Location, cache_key, cache_root, cached_copy, local_path
from serve.inputs import TableForm

PathLike = Union[str, Path]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a registry version (``latest``, ``vN`` or an alias) or a checkpoint folder."""

    registry: str
    model_name: str
    version: str = "latest"
    checkpoint: Optional[str] = None

    @classmethod
    def from_config(cls, cfg: Config) -> "ModelSource":
        return cls(cfg.registry.path, cfg.registry.model_name, cfg.serve.version, cfg.serve.checkpoint)

    @property
    def follows_registry(self) -> bool:
        """True when the model to serve can change without a redeploy: ``latest`` or an alias, which
        ``promote``, ``rollback`` and ``mlp-registry alias set`` move. A ``vN`` or a checkpoint never changes."""
        return not self.checkpoint and not is_version_number(self.version)

    def resolve(self) -> Path:
        """The local folder to load *now*; ``latest`` and an alias follow their registry pointer.

        A remote registry version or checkpoint (``s3://...``) is downloaded once into this
        node's cache and reused, so polling ``latest`` or an alias costs one pointer read, not a download.
        """
        if self.checkpoint:
            return _checkpoint_folder(self.checkpoint)
        return resolve_version(self.registry, self.model_name, self.version).resolve()


def _checkpoint_folder(checkpoint: str) -> Path:
    """A checkpoint folder on this machine; a remote one (a reported Ray Train checkpoint never changes) cached."""
    local = local_path(checkpoint)  # a plain path or file://; None for a bucket
    if local is None:
        location = Location.of(checkpoint)  # the folder keeps its name: the version shows as checkpoint:<name>
        folder = cached_copy(location, cache_root() / "checkpoints" / cache_key(checkpoint) / location.name)
    else:
        folder = Path(local)
    if not (folder / "model.pt").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint: model.pt is missing")
    return folder.resolve()


@dataclass
class ModelInfo:
    """What ``GET /model`` shows: which model answers, how good it was, where it came from."""

    version: str
    path: str
    dataset: str
    class_names: list[str]
    model: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "path": self.path, "dataset": self.dataset,
                "class_names": self.class_names, "model": self.model,
                "metrics": self.metrics, "provenance": self.provenance}


def _read_json(path: Path) -> dict[str, Any]:
    """An optional JSON file of the folder (metrics, provenance); a damaged one is named, not half-read."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, not a {type(data).__name__}")
    return data


class Predictor:
    """A model in eval mode plus its class names; ``predict`` takes model input: float [N, 784] in [0, 1] for
    an image model, standardised rows (``table_input``) for a table model."""

    def __init__(self, model: MLP, cfg: Config, info: ModelInfo) -> None:
        self.model = model
        self.cfg = cfg
        self.info = info
        schema = cfg.schema
        # What a request row must hold (columns, value ranges, body limits), worked out once per loaded model.
        self.table_form: TableForm | None = (TableForm.from_schema(schema.features, schema.mean, schema.std)
                                             if schema.features else None)

    @property
    def version(self) -> str:
        return self.info.version

    @torch.inference_mode()
    def predict_proba(self, x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        """Softmax probabilities, float32 [N, classes]; the input is already model input (see ``mlp.data``)."""
        tensor = torch.as_tensor(x, dtype=torch.float32).reshape(-1, self.cfg.schema.input_size)
        return torch.softmax(self.model(tensor), dim=1).numpy()

    @property
    def is_table_model(self) -> bool:
        """True for a model trained on a table (``data.source``): it takes named, standardised features."""
        return bool(self.cfg.schema.features)

    def table_input(self, rows: np.ndarray) -> np.ndarray:
        """A table model's raw feature rows [N, F] as model input: the standardisation training fitted."""
        from mlp.tables import standardised

        return standardised(torch.as_tensor(rows, dtype=torch.float32), self.cfg.schema).numpy()

    def predict(self, x: Union[np.ndarray, torch.Tensor]) -> list[dict[str, Any]]:
        """One ``{label, class_name, probabilities}`` per row."""
        return self.format(self.predict_proba(x))

    def format(self, probs: np.ndarray) -> list[dict[str, Any]]:
        labels = probs.argmax(axis=1).tolist()
        names = self.info.class_names
        return [{"label": label, "class_name": names[label], "probabilities": row}
                for label, row in zip(labels, probs.tolist())]


def load_predictor(source: Union[ModelSource, PathLike]) -> Predictor:
    """Load a registry version or a checkpoint folder; the model is rebuilt from its saved config.

    Weights load with ``weights_only=True`` (inside ``mlp.checkpoint.load_model``):
    nothing in the folder is unpickled. Anything that cannot be loaded raises an error
    naming the file: ``FileNotFoundError`` (missing; ``latest`` pointing nowhere) or
    ``mlp.checkpoint.CheckpointError``, a ``ValueError`` (truncated, corrupt, a pickle
    that would run code, weights that do not fit ``config.json``, broken JSON).
    """
    folder = source.resolve() if isinstance(source, ModelSource) else Path(source).expanduser().resolve()
    model, cfg = load_model(folder)
    from_registry = isinstance(source, ModelSource) and not source.checkpoint
    metrics = _read_json(folder / "metrics.json")
    if not metrics:  # a training checkpoint: its progress file is the closest thing to metrics
        metrics = {k: v for k, v in read_state(folder).items() if k != "history"}
    info = ModelInfo(
        version=folder.name if from_registry else f"checkpoint:{folder.name}",
        path=str(folder),
        dataset=cfg.data.name,
        class_names=class_names(cfg),
        model={"hidden_sizes": cfg.model.hidden_sizes, "activation": cfg.model.activation},
        metrics=metrics,
        provenance=_read_json(folder / "provenance.json"),
    )
    return Predictor(model, cfg, info)
