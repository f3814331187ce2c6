"""mlp-pipeline end to end on the shared cluster: sweep (or train), promote, serve, verify over HTTP, report.

The endpoint is scored over real HTTP on the whole test set and compared with
the promoted version loaded offline; a model changed under the live endpoint
must fail verification, roll ``latest`` back and exit non-zero.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

import serve.deploy as serve_deploy
from cluster.pipeline import main
from mlp import registry
from mlp.checkpoint import save_checkpoint
from mlp.config import Config, DataConfig
from mlp.data import load_test
from mlp.model import build_model
from mlp.registry import read_latest, resolve_version
from serve.predictor import load_predictor
from s3server import free_port  # tests/ is on sys.path while pytest runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



def pipeline_args(tmp_path: Path, port: int, *extra: str) -> list[str]:
    return ["--run.name", "pipe", "--run.storage_path", str(tmp_path / "runs"),
            "--registry.path", str(tmp_path / "registry"), "--serve.port", str(port),
            "--serve.min_replicas", "1", "--serve.max_replicas", "1", "--stop-after-verify", *extra]


def check_report(folder: Path, pngs: tuple[str, ...]) -> dict[str, Any]:
    """The report and its plots exist, are non-empty and linked; returns the verification record."""
    text = (folder / "pipeline_report.md").read_text()
    for png in pngs:
        data = (folder / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, png
        assert f"]({png})" in text, png
    return json.loads((folder / "verification.json").read_text())


def test_pipeline_sweeps_promotes_serves_and_verifies_the_winner(tmp_path: Path, capsys) -> None:
    port = free_port()
    argv = pipeline_args(tmp_path, port, "--data.dataset", "synthetic", "--data.synthetic_size", "2000",
                         "--train.epochs", "2", "--tune.num_samples", "2")
    try:
        assert main(argv) == 0
        captured = capsys.readouterr()
        out = captured.out
        assert "verify [" in captured.err and "(100%" in captured.err  # the verification pass's progress
        for number, stage in enumerate(("sweep", "deploy", "verify", "report"), 1):
            assert f"[pipeline {number}/4] {stage} ok in" in out
        version_dir = resolve_version(tmp_path / "registry", "mlp")
        assert version_dir.name == "v1"
        folder = tmp_path / "runs" / "pipe"
        record = check_report(folder, ("verify_latency.png", "winner_learning_curves.png", "val_accuracy_vs_lr.png"))
        x, y = load_test(DataConfig(dataset="synthetic"))
        offline = load_predictor(version_dir)
        labels = [p["label"] for p in offline.predict(x)]
        offline_accuracy = sum(int(a == b) for a, b in zip(labels, y.tolist())) / len(y)
        assert record["ok"] and record["images"] == len(x) and record["mismatches"] == 0
        assert record["served_accuracy"] == record["offline_accuracy"] == pytest.approx(offline_accuracy)
        assert record["requests"] == -(-len(x) // 64) and record["p99_ms"] >= record["p50_ms"] > 0
        assert f"pipeline report: {folder / 'pipeline_report.md'}" in out
        # the endpoint was left up (a shared cluster) and still answers with the verified model
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/model").json()["version"] == "v1"
            answer = http.post("/predict", json={"instances": x[:20].tolist()}).json()
        assert [p["label"] for p in answer["predictions"]] == labels[:20]
    finally:
        serve.shutdown()


def test_a_model_changed_under_the_endpoint_fails_verification_and_rolls_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """v1 is promoted first; the pipeline trains and promotes v2 and deploys it, then v2's weights are
    replaced on disk by v1's (the replica keeps v2's in memory): served != offline, so latest goes back
    to v1, the endpoint serves v1 again, and the command exits 1 naming the mismatch."""
    port = free_port()
    cfg = Config.from_dict({"data": {"dataset": "synthetic"}, "registry": {"path": str(tmp_path / "registry")}})
    first = save_checkpoint(tmp_path / "v1-source", build_model(cfg.model, seed=7), cfg, {"epoch": 0})
    registry.promote(str(tmp_path / "registry"), "mlp", first, {"test_accuracy": 0.1},
                     registry.make_provenance(cfg, "hand-made v1"))
    real_deploy = serve_deploy.deploy

    def deploy_then_tamper(config: Config) -> str:
        url = real_deploy(config)
        served = resolve_version(tmp_path / "registry", "mlp")
        assert served.name == "v2"
        shutil.copy2(first / "model.pt", served / "model.pt")  # same shapes, other weights
        return url

    monkeypatch.setattr(serve_deploy, "deploy", deploy_then_tamper)
    argv = pipeline_args(tmp_path, port, "--skip-sweep", "--data.dataset", "synthetic",
                         "--data.synthetic_size", "2000", "--train.epochs", "2")
    try:
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert "[pipeline 3/4] verify FAILED in" in captured.out
        assert "served predictions differ from v2's offline predictions" in captured.err
        assert "latest moved back from v2 to v1" in captured.err
        assert read_latest(tmp_path / "registry", "mlp") == "v1"
        folder = tmp_path / "runs" / "pipe"
        record = check_report(folder, ("verify_latency.png", "winner_learning_curves.png"))
        assert not record["ok"] and record["mismatches"] > 0 and "v1" in record["rollback"]
        assert "**Failed:**" in (folder / "pipeline_report.md").read_text()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/model").json()["version"] == "v1"
    finally:
        serve.shutdown()


def test_pipeline_gates_a_new_version_instead_of_swapping(tmp_path: Path, capsys) -> None:
    """--rollout: with a version already served, the new one runs beside it and the gate decides on the
    replayed test set. A trained v2 shadowing a random v1 is promoted (exit 0, latest v2); a barely trained
    v3 as a 50% canary is rolled back (exit 1, latest stays v2). Each decision is in the report."""
    port = free_port()
    reg = tmp_path / "registry"
    cfg = Config.from_dict({"data": {"dataset": "synthetic"}, "registry": {"path": str(reg)}})
    first = save_checkpoint(tmp_path / "v1-source", build_model(cfg.model, seed=7), cfg, {"epoch": 0})
    registry.promote(str(reg), "mlp", first, {"test_accuracy": 0.1}, registry.make_provenance(cfg, "random v1"))
    common = ["--skip-sweep", "--data.dataset", "synthetic", "--data.synthetic_size", "2000",
              "--rollout-min-labelled", "100"]
    try:
        argv = pipeline_args(tmp_path, port, *common, "--train.epochs", "2", "--rollout", "shadow",
                             "--run.name", "gated-good")
        assert main(argv) == 0
        out = capsys.readouterr().out
        for number, stage in enumerate(("train", "deploy", "rollout", "verify", "report"), 1):
            outcome = "promote" if stage == "rollout" else "ok"
            assert f"[pipeline {number}/5] {stage} {outcome} in" in out, out[-3000:]
        assert "v2 as a shadow beside v1" in out and "rollout: promote v2 after " in out
        assert read_latest(reg, "mlp") == "v2"
        history = (reg / "mlp" / "latest.history").read_text().splitlines()
        assert [json.loads(line)["by"] for line in history] == ["gate"]  # v2 went in without moving latest
        record = check_report(tmp_path / "runs" / "gated-good", ("verify_latency.png",))
        assert record["ok"] and record["version"] == "v2" and record["rollout"]["action"] == "promote"
        assert "## Rollout" in (tmp_path / "runs" / "gated-good" / "pipeline_report.md").read_text()

        argv = pipeline_args(tmp_path, port, *common, "--train.epochs", "1", "--optim.lr", "0.000001",
                             "--rollout", "canary", "--rollout-percent", "50", "--run.name", "gated-bad")
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert "rollout: rollback v3 after " in captured.out
        assert "the gate did not promote v3 (rollback)" in captured.err
        assert read_latest(reg, "mlp") == "v2"
        record = check_report(tmp_path / "runs" / "gated-bad", ("verify_latency.png",))
        assert record["ok"] and record["version"] == "v2" and record["rollout"]["action"] == "rollback"
        figures = record["rollout"]["figures"]
        assert figures["candidate"]["accuracy"] < figures["current"]["accuracy"] - 0.02
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/model").json()["version"] == "v2"
            assert http.get("/rollout").json()["rollout"] is None
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_pipeline_on_fashion_mnist_serves_what_it_promoted(tmp_path: Path, capsys) -> None:
    if not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("MLP_DATA_DIR"):
        pytest.fail("Fashion-MNIST missing: apt-get install dataset-fashion-mnist (CI installs it)")
    port = free_port()
    argv = pipeline_args(tmp_path, port, "--data.dataset", "fashion-mnist", "--train.epochs", "2",
                         "--tune.num_samples", "2", "--tune.space.model.hidden_sizes", "choice:64,128",
                         "--tune.space.optim.lr", "loguniform:0.05:0.2")
    try:
        assert main(argv) == 0
        record = check_report(tmp_path / "runs" / "pipe",
                              ("verify_latency.png", "winner_learning_curves.png", "val_accuracy_vs_lr.png"))
        assert record["ok"] and record["images"] == 10_000 and record["mismatches"] == 0
        assert record["served_accuracy"] == record["offline_accuracy"] > 0.8
        metrics = json.loads((resolve_version(tmp_path / "registry", "mlp") / "metrics.json").read_text())
        assert record["offline_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    finally:
        serve.shutdown()


def test_pipeline_refuses_a_bad_space_before_running(tmp_path: Path, capsys) -> None:
    code = main(["--tune.space.optim.lr", "loguniform:0.5:0.001", "--run.storage_path", str(tmp_path / "runs")])
    assert code == 2
    assert "optim.lr" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
