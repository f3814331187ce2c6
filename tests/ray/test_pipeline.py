"""mlp-pipeline end to end on the shared cluster: a small sweep, promotion, and a live endpoint."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
from ray import serve

from cluster.pipeline import main
from mlp.config import DataConfig
from mlp.data import load_test
from mlp.registry import resolve_version
from serve.predictor import load_predictor


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pipeline_sweeps_promotes_and_serves_the_winner(tmp_path: Path) -> None:
    port = free_port()
    argv = ["--data.dataset", "synthetic", "--data.synthetic_size", "2000", "--train.epochs", "2",
            "--tune.num_samples", "2", "--run.name", "pipe", "--run.storage_path", str(tmp_path / "runs"),
            "--registry.path", str(tmp_path / "registry"), "--serve.port", str(port),
            "--serve.min_replicas", "1", "--serve.max_replicas", "1", "--detach"]
    try:
        assert main(argv) == 0
        version_dir = resolve_version(tmp_path / "registry", "mlp")
        assert version_dir.name == "v1"
        x, _ = load_test(DataConfig(dataset="synthetic"))
        offline = load_predictor(version_dir)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/model").json()["version"] == "v1"
            answer = http.post("/predict", json={"instances": x[:20].tolist()}).json()
        labels = [p["label"] for p in answer["predictions"]]
        assert labels == [p["label"] for p in offline.predict(x[:20])]
    finally:
        serve.shutdown()


def test_pipeline_refuses_a_bad_space_before_running(tmp_path: Path, capsys) -> None:
    code = main(["--tune.space.optim.lr", "loguniform:0.5:0.001", "--run.storage_path", str(tmp_path / "runs")])
    assert code == 2
    assert "optim.lr" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
