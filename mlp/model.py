"""The multilayer perceptron: 784 -> hidden layers -> 10 logits (a table's own sizes for a table).

Plain PyTorch and nothing else: no Ray, no distribution, no data loading.
Softmax lives in the loss (cross-entropy on logits) and in the predictor.
"""

from __future__ import annotations

import torch
from torch import nn

from mlp.config import ModelConfig

INPUT_SIZE = 28 * 28
NUM_CLASSES = 10

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MLP(nn.Sequential):
    """Flattens its input, so both [N, 784] and [N, 28, 28] batches work."""

    def __init__(self, cfg: ModelConfig, input_size: int = INPUT_SIZE, num_classes: int = NUM_CLASSES) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_size
        for hidden in cfg.hidden_sizes:
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[cfg.activation]()]
            if cfg.dropout > 0:  # only then: a model without dropout keeps the layer numbering of older checkpoints
                layers.append(nn.Dropout(cfg.dropout))
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def build_model(cfg: ModelConfig, seed: int, input_size: int = INPUT_SIZE, num_classes: int = NUM_CLASSES) -> MLP:
    """Seeded construction, so every worker (and every rerun) starts from the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(cfg, input_size, num_classes)
