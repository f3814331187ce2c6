"""Shared fixtures: a small config factory and a real S3-compatible server, usable by every test layer."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from mlp.config import Config
from s3server import s3_server  # tests/s3server.py: this folder is on sys.path while pytest runs

S3_BUCKET = "mlp-test"


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


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """One moto S3 server process for the whole session; the AWS_* variables a client needs."""
    with s3_server(S3_BUCKET) as env:
        yield env


@pytest.fixture
def s3_root(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix in the test bucket, with this test's environment pointing at the server."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex[:8]}"
