"""Serve follows the registry's pointers live: ``mlp-registry rollback`` and ``alias set`` swap the model.

A local registry holds v1 and v2, two untrained models with different weights (so
their predictions differ and no training time is spent). Clients send ``/predict``
without pause while the real CLI (``python -m mlp.registry.cli``, in a subprocess)
moves the pointer the deployment follows; every answer must succeed and equal the
offline prediction of the version it names, and the last ones must come from the
version the pointer now names. Serve is shut down at the end of the module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import numpy as np
import pytest
import torch
from ray import serve

from mlp import registry
from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.model import build_model
from serve.app import build_from_config
from serve.options import http_options
from serve.predictor import Predictor, load_predictor
from s3server import free_port  # tests/ is on sys.path while pytest runs

REPO = Path(__file__).resolve().parents[2]
SERVE = {"min_replicas": 1, "max_replicas": 1, "load_grace_s": 30.0}
ROWS = torch.rand(32, 784, generator=torch.Generator().manual_seed(0))



@pytest.fixture(scope="module")
def two_versions(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A registry with v1 and v2 (latest), their offline predictors, and Serve's HTTP proxy on a free port."""
    tmp = tmp_path_factory.mktemp("registry_serve")
    cfg = Config.from_dict({"data": {"dataset": "synthetic"}, "model": {"hidden_sizes": [16]},
                            "registry": {"path": str(tmp / "registry")}, "serve": {**SERVE, "port": free_port()}})
    offline: dict[str, Predictor] = {}
    for seed in (1, 2):
        checkpoint = save_checkpoint(tmp / f"ck{seed}", build_model(cfg.model, seed=seed), cfg, {"epoch": 1})
        version = registry.promote(cfg.registry.path, "mlp", checkpoint, {"test_accuracy": seed / 10},
                                   registry.make_provenance(cfg, checkpoint, f"seed{seed}"))
        offline[version.name] = load_predictor(checkpoint)
    assert not np.allclose(offline["v1"].predict_proba(ROWS), offline["v2"].predict_proba(ROWS), atol=1e-3)
    serve.start(http_options=http_options(cfg.serve))
    yield {"cfg": cfg, "offline": offline, "url": f"http://127.0.0.1:{cfg.serve.port}"}
    serve.shutdown()


def deploy(cfg: Config, version: str) -> Config:
    """(Re)deploy the application serving ``version`` of the registry and wait until it answers."""
    data = cfg.to_dict()
    pinned = Config.from_dict({**data, "serve": {**data["serve"], "version": version}})
    serve.run(build_from_config(pinned), name="registry", route_prefix="/")
    return pinned


def registry_cli(cfg: Config, *args: str) -> str:
    """The real command, as an operator runs it; returns its one line."""
    done = subprocess.run([sys.executable, "-m", "mlp.registry.cli", "--registry.path", cfg.registry.path, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def served_model(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/model", timeout=10).json()


def swap_under_load(env: dict[str, Any], move: Callable[[], None], to: str) -> list[dict[str, Any]]:
    """Run ``move`` while two clients post continuously; returns every answer once ``to`` has answered a while."""
    answers: list[dict[str, Any]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=env["url"], timeout=30) as http:
            while not stop.is_set():
                try:
                    resp = http.post("/predict", json={"instances": ROWS.tolist()})
                except httpx.HTTPError as err:
                    failures.append(repr(err))
                    continue
                if resp.status_code == 200:
                    answers.append(resp.json())
                else:
                    failures.append(f"{resp.status_code} {resp.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        move()
        deadline = time.time() + 20  # the watcher reads the pointer once a second
        while time.time() < deadline and not any(a["version"] == to for a in answers[-4:]):
            time.sleep(0.1)
        time.sleep(0.5)  # keep the load on after the swap
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:3]
    return answers


def assert_swapped(env: dict[str, Any], answers: list[dict[str, Any]], was: str, now: str) -> None:
    versions = [a["version"] for a in answers]
    assert versions[0] == was and versions[-1] == now, f"answers did not switch from {was} to {now}"
    for answer in answers:  # each answer is exactly the offline prediction of the version it names
        expected = env["offline"][answer["version"]].predict_proba(ROWS)
        assert np.allclose([p["probabilities"] for p in answer["predictions"]], expected, atol=1e-5)


def test_rollback_swaps_the_served_latest_back_without_a_failed_request(two_versions) -> None:
    env = two_versions
    cfg = deploy(env["cfg"], "latest")
    assert served_model(env["url"])["version"] == "v2"
    answers = swap_under_load(env, lambda: registry_cli(cfg, "rollback"), to="v1")
    assert_swapped(env, answers, "v2", "v1")
    model = served_model(env["url"])
    assert (model["version"], model["source"]["version"], model["metrics"]["test_accuracy"]) == ("v1", "latest", 0.1)
    assert registry.read_latest(cfg.registry.path, "mlp") == "v1"


def test_alias_set_swaps_a_deployment_that_serves_the_alias(two_versions) -> None:
    env = two_versions
    cfg = env["cfg"]
    registry_cli(cfg, "alias", "set", "champion", "v2")
    deploy(cfg, "champion")
    model = served_model(env["url"])
    assert (model["version"], model["source"]["version"]) == ("v2", "champion")
    line = []
    answers = swap_under_load(env, lambda: line.append(registry_cli(cfg, "alias", "set", "champion", "v1")), to="v1")
    assert line == [f"alias champion of model 'mlp' in {cfg.registry.path}: v2 -> v1"]
    assert_swapped(env, answers, "v2", "v1")
    model = served_model(env["url"])
    assert (model["version"], model["source"]["version"]) == ("v1", "champion")
