"""Every shipped preset loads and validates (a broken preset should fail here, not on a cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlp.options import load_yaml
from mlp.config import Config

PRESETS = sorted((Path(__file__).parents[2] / "cluster" / "presets").glob("*.yaml"))


def test_presets_exist() -> None:
    assert len(PRESETS) >= 3


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_loads(path: Path) -> None:
    cfg = Config.from_dict(load_yaml(str(path)))
    assert cfg.to_dict() == Config.from_dict(cfg.to_dict()).to_dict()
