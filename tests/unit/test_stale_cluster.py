"""A cluster address that `ray start` left behind is joined only while something answers there."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mlp.distributed.trainer import stale_local_cluster


@pytest.fixture
def ray_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray"


def test_no_file_means_nothing_to_ignore(ray_tmp: Path) -> None:
    assert stale_local_cluster() is None


def test_a_live_address_is_joined_and_a_dead_one_is_named(ray_tmp: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        (ray_tmp / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
        assert stale_local_cluster() is None
    sentence = stale_local_cluster()  # the listener is closed now: nothing answers on that port
    assert sentence == (f"the Ray cluster address 127.0.0.1:{port} in {ray_tmp / 'ray_current_cluster'} "
                        f"(nothing answers there)")
