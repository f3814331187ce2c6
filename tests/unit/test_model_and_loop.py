"""Model shapes, one SGD step, evaluation and sharding: plain PyTorch, no Ray."""

from __future__ import annotations

import torch

from mlp.config import ModelConfig
from mlp.data import Splits, load_splits, shard_indices, synthetic
from mlp.loop import RunState, evaluate, fit, prepare, train_epoch, train_step
from mlp.model import build_model


def test_model_shapes_and_parameter_count() -> None:
    model = build_model(ModelConfig(), seed=0)
    assert model(torch.rand(5, 784)).shape == (5, 10)
    assert model(torch.rand(5, 28, 28)).shape == (5, 10)
    assert sum(p.numel() for p in model.parameters()) == 784 * 100 + 100 + 100 * 10 + 10
    deep = build_model(ModelConfig(hidden_sizes=[64, 32], activation="tanh"), seed=0)
    assert deep(torch.rand(3, 784)).shape == (3, 10)


def test_same_seed_same_weights() -> None:
    a, b = build_model(ModelConfig(), seed=7), build_model(ModelConfig(), seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_one_training_step_lowers_the_loss() -> None:
    x, y = synthetic(256, seed=3)
    model = build_model(ModelConfig(), seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before, _ = evaluate(model, x, y)
    for _ in range(3):
        train_step(model, optimizer, x, y)
    after, _ = evaluate(model, x, y)
    assert after < before


def test_train_epoch_loss_and_accuracy_are_per_sample_means(config_factory) -> None:
    """With lr 1e-30 (far below float32 resolution) the weights stay put, so the epoch's figures must equal evaluate() on the same shard,
    including the last, smaller batch (1,000 samples, 10% validation: 900 = 14 x 64 + 4)."""
    cfg = config_factory(optim={"lr": 1e-30}, data={"synthetic_size": 1000})
    model, optimizer, data, _ = prepare(cfg, torch.device("cpu"))
    idx = shard_indices(len(data.train_x), 0, cfg.data.seed, 0, 1)
    expected_loss, expected_accuracy = evaluate(model, data.train_x[idx], data.train_y[idx])
    loss, accuracy, samples = train_epoch(model, optimizer, data, cfg, 0, 0, 1)
    assert samples == len(data.train_x) == 900
    assert abs(loss - expected_loss) < 1e-5
    assert accuracy == expected_accuracy


def test_fit_learns_synthetic_data(config_factory) -> None:
    cfg = config_factory(optim={"lr": 0.1}, train={"epochs": 3})
    model, optimizer, data, state = prepare(cfg, torch.device("cpu"))
    seen: list[dict] = []
    fit(cfg, model, optimizer, data, state, lambda m, *_: seen.append(m))
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert seen[-1]["train_loss"] < seen[0]["train_loss"]
    assert seen[-1]["val_accuracy"] > 0.5  # chance is 0.1


def test_fit_starts_at_the_saved_epoch(config_factory) -> None:
    cfg = config_factory(train={"epochs": 3})
    model, optimizer, data, _ = prepare(cfg, torch.device("cpu"))
    seen: list[int] = []
    fit(cfg, model, optimizer, data, RunState(epoch=2), lambda m, *_: seen.append(m["epoch"]))
    assert seen == [3]


def test_shards_are_disjoint_equal_and_cover_the_data() -> None:
    shards = [shard_indices(101, epoch=0, seed=1, rank=r, world=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert not torch.equal(shard_indices(101, 1, 1, 0, 2), shards[0])  # reshuffled each epoch


def test_validation_split_is_seeded_and_disjoint(config_factory) -> None:
    cfg = config_factory()
    a, b = load_splits(cfg.data), load_splits(cfg.data)
    assert torch.equal(a.val_x, b.val_x)
    assert len(a.val_x) == int(cfg.data.synthetic_size * cfg.data.val_fraction)
    assert len(a.train_x) + len(a.val_x) == cfg.data.synthetic_size
    assert isinstance(a, Splits) and a.train_x.min() >= 0 and a.train_x.max() <= 1
