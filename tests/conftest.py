"""Shared fixtures: a small config factory usable by every test layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlp.config import Config


def make_config(tmp: Path, **sections: dict[str, Any]) -> Config:
    """A fast synthetic-data config writing under ``tmp``; sections override by name."""
    data: dict[str, Any] = {
        "data": {"dataset": "synthetic", "synthetic_size": 2000},
        "train": {"epochs": 2},
        "run": {"storage_path": str(tmp / "runs")},
        "registry": {"path": str(tmp / "registry")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Config.from_dict(data)


@pytest.fixture
def config_factory(tmp_path: Path):
    return lambda **sections: make_config(tmp_path, **sections)
