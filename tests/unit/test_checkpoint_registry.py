"""Checkpoints round-trip with weights_only=True; the registry numbers versions and moves `latest`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mlp import registry
from mlp.checkpoint import load_model, restore_training, save_checkpoint
from mlp.loop import build_optimizer
from mlp.model import build_model


def test_checkpoint_round_trip_weights_only(tmp_path: Path, config_factory) -> None:
    cfg = config_factory(model={"hidden_sizes": [32]}, optim={"momentum": 0.9})
    model = build_model(cfg.model, seed=3)
    optimizer = build_optimizer(cfg, model)
    x = torch.rand(8, 784)
    model(x).sum().backward()
    optimizer.step()  # gives the optimizer a momentum buffer to save
    save_checkpoint(tmp_path / "ck", model, cfg, {"epoch": 4, "elapsed_s": 1.5}, optimizer)

    state = torch.load(tmp_path / "ck" / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    loaded, loaded_cfg = load_model(tmp_path / "ck")
    assert loaded_cfg == cfg
    assert torch.allclose(loaded(x), model.eval()(x))

    fresh = build_model(cfg.model, seed=99)
    fresh_opt = build_optimizer(cfg, fresh)
    progress = restore_training(tmp_path / "ck", fresh, fresh_opt)
    assert progress["epoch"] == 4
    assert torch.allclose(fresh(x), model(x))
    assert fresh_opt.state_dict()["state"][0]["momentum_buffer"].shape == (32, 784)


def test_promote_numbers_versions_and_moves_latest(tmp_path: Path, config_factory) -> None:
    cfg = config_factory()
    ck = save_checkpoint(tmp_path / "ck", build_model(cfg.model, seed=0), cfg, {"epoch": 1})
    root = tmp_path / "registry"
    v1 = registry.promote(root, "mlp", ck, {"test_accuracy": 0.5}, registry.make_provenance(cfg, ck, "t1"))
    v2 = registry.promote(root, "mlp", ck, {"test_accuracy": 0.6}, registry.make_provenance(cfg, ck, "t2"))
    assert (v1.name, v2.name) == ("v1", "v2")
    assert os.readlink(root / "mlp" / "latest") == "v2"
    assert registry.resolve_version(root, "mlp") == v2
    assert registry.resolve_version(root, "mlp", "v1") == v1
    provenance = json.loads((v2 / "provenance.json").read_text())
    assert provenance["trial_id"] == "t2" and provenance["version"] == "v2"
    assert provenance["libraries"]["torch"] and provenance["dataset"] == "synthetic"
    assert json.loads((v1 / "metrics.json").read_text())["test_accuracy"] == 0.5
    model, _ = load_model(v2)
    assert model(torch.rand(2, 784)).shape == (2, 10)
    assert not [p for p in (root / "mlp").iterdir() if p.name.startswith(".")]  # no staging left


def test_resolve_without_models_explains(tmp_path: Path) -> None:
    try:
        registry.resolve_version(tmp_path, "mlp")
    except FileNotFoundError as err:
        assert "--promote" in str(err)
    else:
        raise AssertionError("expected FileNotFoundError")


def test_promoted_versions_are_readable_by_other_users(tmp_path: Path, config_factory) -> None:
    cfg = config_factory()
    ck = save_checkpoint(tmp_path / "ck", build_model(cfg.model, seed=0), cfg, {"epoch": 1})
    version = registry.promote(tmp_path / "registry", "mlp", ck, {}, registry.make_provenance(cfg, ck))
    assert version.stat().st_mode & 0o755 == 0o755
