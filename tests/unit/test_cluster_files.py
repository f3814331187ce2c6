"""The shipped cluster files point at real entry points with options those entry points accept."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from mlp.cli import make_parser, parse_config

ROOT = Path(__file__).parents[2]


def _check_command(command: str) -> None:
    """`python -m mlp.train ...` inside a manifest must parse exactly as the CLI would."""
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "mlp.train"], argv
    parser = make_parser("mlp-train", "")
    parser.add_argument("--promote", action="store_true")
    cfg, _ = parse_config(parser, [a if a != "cluster/presets/fashion-2workers.yaml" else str(ROOT / a)
                                   for a in argv[3:]])
    assert cfg.data.dataset == "fashion-mnist"
    for arg in argv:
        if arg.endswith(".yaml"):
            assert (ROOT / arg).is_file(), f"{arg} does not exist"


def test_rayjob_entrypoint_is_a_valid_training_command() -> None:
    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob-train.yaml").read_text())
    assert job["kind"] == "RayJob"
    assert job["spec"]["rayClusterSpec"]["rayVersion"].startswith("2.60")
    assert job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    _check_command(job["spec"]["entrypoint"])


def test_cluster_launcher_config_parses() -> None:
    launcher = yaml.safe_load((ROOT / "cluster" / "cluster.yaml").read_text())
    assert launcher["provider"]["type"] == "local"
    assert any("RAY_AUTH_MODE=token" in c for c in launcher["head_start_ray_commands"])


@pytest.mark.parametrize("source", ["serve_config.yaml", "kuberay/rayservice.yaml"])
def test_serve_configs_build_a_valid_application_config(source: str) -> None:
    from serve.options import config_from_app_args, deployment_options

    doc = yaml.safe_load((ROOT / "cluster" / source).read_text())
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"]) if doc.get("kind") == "RayService" else doc
    (app,) = serve_config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert (module, attr) == ("serve.app", "build_app")
    cfg = config_from_app_args(app["args"])  # the same validation build_app applies
    assert deployment_options(cfg.serve)["max_queued_requests"] == cfg.serve.max_queued_requests
