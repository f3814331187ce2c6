"""Model and optimizer options a sweep can search: dropout, sgd | adam | adamw, lr schedules. No Ray."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mlp.checkpoint import save_checkpoint
from mlp.config import ConfigError, ModelConfig
from mlp.loop import fit, lr_at, prepare
from mlp.model import build_model


def run(cfg, resume_from=None) -> list[dict]:
    model, optimizer, data, state = prepare(cfg, torch.device("cpu"), resume_from=resume_from)
    seen: list[dict] = []
    fit(cfg, model, optimizer, data, state, lambda m, *_: seen.append(m))
    return seen


@pytest.mark.parametrize("name, lr, momentum", [("sgd", 0.05, 0.9), ("adam", 0.002, 0.0), ("adamw", 0.002, 0.0)])
def test_every_optimizer_learns(config_factory, name: str, lr: float, momentum: float) -> None:
    cfg = config_factory(optim={"name": name, "lr": lr, "momentum": momentum, "weight_decay": 1e-4},
                         train={"epochs": 3})
    model, optimizer, _, _ = prepare(cfg, torch.device("cpu"))
    assert type(optimizer).__name__.lower() == name
    seen = run(cfg)
    assert seen[-1]["train_loss"] < seen[0]["train_loss"]
    assert seen[-1]["val_accuracy"] > 0.5  # chance is 0.1


def test_adam_and_adamw_apply_weight_decay_differently(config_factory) -> None:
    """AdamW's decay is decoupled from the gradient's moments, Adam's is an L2 term inside them."""
    weights = {}
    for name in ("adam", "adamw"):
        cfg = config_factory(optim={"name": name, "lr": 0.01, "weight_decay": 0.5}, train={"epochs": 1})
        model, optimizer, data, state = prepare(cfg, torch.device("cpu"))
        fit(cfg, model, optimizer, data, state, lambda *_: None)
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.allclose(weights["adam"], weights["adamw"])


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.2] * 6),
    ("none", [0.2] * 6),
    ("step", [0.2, 0.2, 0.1, 0.1, 0.05, 0.05]),
    ("cosine", [0.2 * 0.5 * (1 + math.cos(math.pi * e / 6)) for e in range(6)]),
])
def test_schedules_set_each_epochs_rate(config_factory, schedule: str, expected: list[float]) -> None:
    cfg = config_factory(optim={"lr": 0.2, "schedule": schedule, "step_size": 2, "gamma": 0.5},
                         train={"epochs": 6}, data={"synthetic_size": 500})
    assert [lr_at(cfg, e) for e in range(6)] == pytest.approx(expected)
    assert [m["lr"] for m in run(cfg)] == pytest.approx(expected)  # what each epoch really trained with


def test_a_resumed_run_keeps_its_schedule(config_factory, tmp_path: Path) -> None:
    """Two epochs, a checkpoint, two more: the same rates and the same losses as four epochs at once."""
    whole = config_factory(optim={"lr": 0.2, "schedule": "cosine"}, train={"epochs": 4})
    straight = run(whole)
    first = config_factory(optim={"lr": 0.2, "schedule": "cosine"}, train={"epochs": 4})
    model, optimizer, data, state = prepare(first, torch.device("cpu"))
    halfway: list[dict] = []

    def stop_after_two(metrics, model, optimizer, saved) -> None:
        halfway.append(metrics)
        if metrics["epoch"] == 2:
            save_checkpoint(tmp_path / "ckpt", model, first, saved, optimizer)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(first, model, optimizer, data, state, stop_after_two)
    resumed = halfway + run(first, resume_from=str(tmp_path / "ckpt"))
    assert [m["epoch"] for m in resumed] == [1, 2, 3, 4]
    assert [m["lr"] for m in resumed] == pytest.approx([m["lr"] for m in straight])
    assert [m["val_loss"] for m in resumed] == pytest.approx([m["val_loss"] for m in straight], rel=1e-6)


def test_dropout_acts_in_training_only_and_zero_keeps_the_reference_layers() -> None:
    plain, dropped = build_model(ModelConfig(), seed=0), build_model(ModelConfig(dropout=0.5), seed=0)
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain)  # old checkpoints' layer numbering
    assert list(plain.state_dict()) == ["1.weight", "1.bias", "3.weight", "3.bias"]
    x = torch.rand(8, 784)
    dropped.eval()
    assert torch.equal(dropped(x), dropped(x)) and torch.allclose(dropped(x), plain.eval()(x))
    dropped.train()
    assert not torch.equal(dropped(x), dropped(x))


@pytest.mark.parametrize("section, values, key", [
    ("optim", {"name": "rmsprop"}, "optim.name"),
    ("optim", {"name": "adam", "momentum": 0.9}, "optim.momentum"),
    ("optim", {"schedule": "linear"}, "optim.schedule"),
    ("optim", {"gamma": 0}, "optim.gamma"),
    ("optim", {"step_size": 0}, "optim.step_size"),
    ("model", {"dropout": 1.0}, "model.dropout"),
])
def test_bad_options_are_refused_naming_the_key(config_factory, section: str, values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_factory(**{section: values})
    assert err.value.key == key


def test_a_sweep_can_search_the_new_options(config_factory) -> None:
    from tune.space import apply_params, parse_space

    dims = parse_space({"optim.name": "choice:sgd,adam,adamw", "optim.schedule": "choice:constant,cosine,step",
                        "model.dropout": "uniform:0:0.5"})
    assert [d.key for d in dims] == ["optim.name", "optim.schedule", "model.dropout"]
    cfg = apply_params(config_factory().to_dict(),
                       {"optim.name": "adamw", "optim.schedule": "cosine", "model.dropout": 0.25})
    assert (cfg.optim.name, cfg.optim.schedule, cfg.model.dropout) == ("adamw", "cosine", 0.25)
    with pytest.raises(ConfigError) as err:
        parse_space({"optim.name": "choice:sgd,lbfgs"})
    assert err.value.key.startswith("tune.space.optim.name")
