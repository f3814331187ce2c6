"""Fixtures of the registry tests: each test's own download cache, and a registry on a folder and on S3."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test downloads into its own cache, never into ~/.cache."""
    monkeypatch.setenv("MLP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "registry") if request.param == "local" else request.getfixturevalue("s3_root")
