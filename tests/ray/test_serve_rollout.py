"""Canary, shadow and the rollout gate, on a real Serve app over real HTTP, driven by the real CLI.

One application serves ``latest`` of a registry holding three versions trained here on Fashion-MNIST:
v1 (small), v2 (better: more data, wider) and v3 (trained on shuffled labels: deliberately worse).
In order, the tests:

* run a 10% canary of v2 under continuous load, change it to 50%, end it: no request fails, every
  answer names its version and equals that version's offline prediction, and the split is 10 +- 3%;
* run a shadow of v2 with labelled feedback: clients get v1's answers, the agreement rate and v2's
  latency are recorded, and the gate promotes v2 (``latest`` moves, the decision is recorded);
* run a canary of v3 with labelled feedback: the gate rolls it back within the documented number of
  labelled instances, and ``latest`` stays on v2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from ray import serve

from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.data import Splits, load_test
from mlp.loop import fit, prepare
from mlp.registry import make_provenance, promote, read_latest, set_latest
from mlp.registry.rollouts import read_decisions, read_rollout
from serve.app import build_from_config
from serve.options import http_options
from serve.predictor import load_predictor
from s3server import free_port  # tests/ is on sys.path while pytest runs
from served import metrics_urls, scrape, total

REPO = Path(__file__).resolve().parents[2]
SERVE = {"min_replicas": 1, "max_replicas": 1, "max_instances": 256, "max_body_bytes": 2_000_000}


def train(tmp: Path, name: str, seed: int, width: int, rows: int, epochs: int, shuffle: bool = False) -> tuple[Path, Config]:
    """A few seconds of real training on a Fashion-MNIST subset; ``shuffle``: on permuted labels."""
    cfg = Config.from_dict({
        "data": {"dataset": "fashion-mnist", "seed": seed}, "model": {"hidden_sizes": [width]},
        "train": {"epochs": epochs}, "run": {"storage_path": str(tmp / "runs")},
        "registry": {"path": str(tmp / "registry")}, "serve": {**SERVE, "port": free_port()}})
    model, optimizer, data, state = prepare(cfg, torch.device("cpu"))
    y = data.train_y[:rows]
    if shuffle:
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]
    data = Splits(data.train_x[:rows], y, data.val_x[:500], data.val_y[:500])
    fit(cfg, model, optimizer, data, state, lambda *_: None)
    return save_checkpoint(tmp / name, model, cfg, {"epoch": epochs}), cfg


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout")
    v1, cfg = train(tmp, "v1", seed=0, width=16, rows=2000, epochs=1)
    v2, _ = train(tmp, "v2", seed=1, width=64, rows=12000, epochs=3)
    v3, _ = train(tmp, "v3", seed=2, width=64, rows=3000, epochs=2, shuffle=True)
    reg = cfg.registry
    for folder in (v1, v2, v3):
        promote(reg.path, reg.model_name, folder, {}, make_provenance(cfg, str(folder)))
    set_latest(reg.path, reg.model_name, "v1")
    serve.start(http_options=http_options(cfg.serve))
    serve.run(build_from_config(cfg), name="rollout", route_prefix="/")
    x, y = load_test(cfg.data)
    offline = {f"v{i}": load_predictor(folder) for i, folder in enumerate((v1, v2, v3), start=1)}
    with httpx.Client(base_url=f"http://127.0.0.1:{cfg.serve.port}", timeout=30) as http:
        yield {"http": http, "cfg": cfg, "x": x[:2000].reshape(-1, 784).numpy(), "y": y[:2000].numpy(), "offline": offline}
    serve.shutdown()


def registry_cli(cfg: Config, *args: str) -> str:
    """The real ``mlp-registry`` command against the app's registry."""
    done = subprocess.run([sys.executable, "-m", "mlp.registry", *args, "--registry.path", cfg.registry.path],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def predict(http: httpx.Client, rows: np.ndarray) -> dict[str, Any]:
    response = http.post("/predict", content=json.dumps({"instances": rows.tolist()}),
                         headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"request_id", "version", "predictions"}, body
    return body


def wait_for_version(http: httpx.Client, rows: np.ndarray, version: str, present: bool, timeout_s: float = 30) -> None:
    """Until an answer from ``version`` shows up (``present``) or none does for 2 s in a row."""
    deadline, clean_since = time.monotonic() + timeout_s, time.monotonic()
    while time.monotonic() < deadline:
        seen = predict(http, rows[:1])["version"] == version
        if present and seen:
            return
        if not present:
            clean_since = time.monotonic() if seen else clean_since
            if time.monotonic() - clean_since > 2.0:
                return
        time.sleep(0.01)
    raise AssertionError(f"{version} {'never answered' if present else 'kept answering'} within {timeout_s}s")


class Load:
    """Single-instance requests from two threads until stopped; every answer and every failure kept."""

    def __init__(self, url: str, x: np.ndarray) -> None:
        self.url, self.x = url, x
        self.answers: list[tuple[float, int, str, int]] = []  # (time, row, version, label)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(2)]

    def _run(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            i = k
            while not self._stop.is_set():
                row = i % len(self.x)
                try:
                    response = http.post("/predict", content=json.dumps(self.x[row].tolist()),
                                         headers={"content-type": "application/json"})
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                    else:
                        body = response.json()
                        self.answers.append((time.monotonic(), row, body["version"], body["label"]))
                except httpx.HTTPError as err:
                    self.failures.append(repr(err))
                i += 2

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def count_from(self, start: float) -> Counter:
        return Counter(version for at, _, version, _ in list(self.answers) if at >= start)


def test_canary_splits_live_traffic_and_starting_changing_ending_it_fails_no_request(app) -> None:
    http, cfg, x = app["http"], app["cfg"], app["x"]
    url = str(http.base_url).rstrip("/")
    with Load(url, x) as load:
        time.sleep(1.0)
        out = registry_cli(cfg, "canary", "v2", "--percent", "10")
        assert "canary started: 10% of /predict to v2" in out
        wait_for_version(http, x, "v2", present=True)
        start, target = time.monotonic(), len(load.answers) + 2000
        while len(load.answers) < target and time.monotonic() - start < 120:
            time.sleep(0.2)
        split = load.count_from(start)
        registry_cli(cfg, "canary", "v2", "--percent", "50")
        time.sleep(3.0)
        ramped = time.monotonic()
        time.sleep(3.0)
        half = load.count_from(ramped)
        registry_cli(cfg, "rollout", "end")
        wait_for_version(http, x, "v2", present=False)
        time.sleep(1.0)
    assert load.failures == [], load.failures[:5]
    total = split["v1"] + split["v2"]
    share = split["v2"] / total
    print(f"\n[rollout] canary 10%: {split['v2']} of {total} answers from v2 ({share:.1%}); at 50%: "
          f"{half['v2']} of {half['v1'] + half['v2']}; {len(load.answers)} requests, 0 failed")
    assert total >= 1000 and 0.07 <= share <= 0.13, split
    assert 0.35 <= half["v2"] / (half["v1"] + half["v2"]) <= 0.65, half
    assert set(split) == {"v1", "v2"}
    # every answer names the version that computed it: it equals that version's offline prediction
    offline = {v: predictor.predict_proba(torch.as_tensor(x)).argmax(axis=1) for v, predictor in app["offline"].items()}
    wrong = [(row, version, label) for _, row, version, label in load.answers if offline[version][row] != label]
    assert wrong == [], wrong[:5]
    assert read_rollout(cfg.registry.path, cfg.registry.model_name) is None
    decisions = read_decisions(cfg.registry.path, cfg.registry.model_name)
    assert decisions[-1]["action"] == "ended" and decisions[-1]["candidate"] == "v2"


def labelled_round(http: httpx.Client, x: np.ndarray, y: np.ndarray, start: int, size: int) -> dict[str, Any]:
    """One batch request and its feedback; returns both answers."""
    rows = np.arange(start, start + size) % len(x)
    answer = predict(http, x[rows])
    response = http.post("/feedback", json={"request_id": answer["request_id"], "labels": y[rows].tolist()})
    assert response.status_code == 200, response.text
    return {"answer": answer, "feedback": response.json()}


def run_gate(http: httpx.Client, x: np.ndarray, y: np.ndarray, size: int, limit: int) -> tuple[dict, list[dict]]:
    """Labelled rounds until the gate decides (or ``limit`` rounds); returns the decision and every round."""
    rounds = []
    for k in range(limit):
        rounds.append(labelled_round(http, x, y, k * size, size))
        if "decision" in rounds[-1]["feedback"]:
            return rounds[-1]["feedback"]["decision"], rounds
    raise AssertionError(f"no decision after {limit} labelled rounds: {http.get('/rollout').json()}")


def test_shadow_records_agreement_and_the_gate_promotes_a_better_candidate(app) -> None:
    http, cfg, x, y = app["http"], app["cfg"], app["x"], app["y"]
    reg = cfg.registry
    urls = metrics_urls()
    before = scrape(urls, "rollout")
    out = registry_cli(cfg, "shadow", "v2", "--min-labelled", "300", "--tolerance", "0.02")
    assert "shadow started: every /predict, as a shadow, to v2" in out
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the replica has loaded the shadow once /rollout counts its answers
        predict(http, x[:1])
        status = http.get("/rollout").json()
        if status["rollout"] and "v2" in status["versions"]:
            break
        time.sleep(0.2)
    decision, rounds = run_gate(http, x, y, size=20, limit=100)
    assert {r["answer"]["version"] for r in rounds} == {"v1"}, "a shadow must never answer the client"
    assert all(r["feedback"]["shadow"]["version"] == "v2" for r in rounds[1:])
    assert decision["action"] == "promote", decision
    figures = decision["figures"]
    assert figures["candidate"]["labelled"] >= 300 and figures["current"]["labelled"] >= 300
    assert figures["candidate"]["accuracy"] >= figures["current"]["accuracy"] - 0.02
    agreement = figures["agreement"]
    assert agreement["compared"] >= 300 and 0.0 < agreement["rate"] <= 1.0
    assert figures["candidate"]["latency_p50_ms"] is not None
    assert read_latest(reg.path, reg.model_name) == "v2"
    assert read_rollout(reg.path, reg.model_name) is None
    recorded = read_decisions(reg.path, reg.model_name)[-1]
    assert recorded["action"] == "promote" and recorded["moved"] == "latest -> v2" and recorded["figures"] == figures
    wait_for_version(http, x, "v2", present=True, timeout_s=10)
    wait_for_version(http, x, "v1", present=False, timeout_s=10)
    labelled = figures["candidate"]["labelled"]
    # the same agreement reaches Prometheus through Ray's metrics export (reported every few seconds)
    compared = "ray_mlp_rollout_compared_total"
    deadline = time.monotonic() + 60
    while True:
        after = scrape(urls, "rollout")
        moved = {agreed: total(after, compared, mode="shadow", agreed=agreed)
                 - total(before, compared, mode="shadow", agreed=agreed) for agreed in ("true", "false")}
        if sum(moved.values()) >= agreement["compared"] or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert sum(moved.values()) >= agreement["compared"] and moved["true"] >= agreement["agreed"], moved
    shadowed = (total(after, "ray_mlp_rollout_routed_total", mode="shadow", role="current")
                - total(before, "ray_mlp_rollout_routed_total", mode="shadow", role="current"))
    assert shadowed >= len(rounds), shadowed
    print(f"\n[rollout] shadow of v2: agreement {agreement['rate']:.3f} over {agreement['compared']} instances; "
          f"accuracy v2 {figures['candidate']['accuracy']:.3f} vs v1 {figures['current']['accuracy']:.3f}; "
          f"v2 p50 {figures['candidate']['latency_p50_ms']:.2f} ms; promoted after {labelled} labelled instances")


def test_the_gate_rolls_back_a_worse_canary_within_the_labelled_budget(app) -> None:
    """Driven as a user would: ``mlp-registry canary`` then ``python -m serve.client replay`` of the test set."""
    http, cfg, x = app["http"], app["cfg"], app["x"]
    reg = cfg.registry
    assert read_latest(reg.path, reg.model_name) == "v2"  # promoted by the shadow test
    registry_cli(cfg, "canary", "v3", "--percent", "50", "--min-labelled", "100")
    wait_for_version(http, x, "v3", present=True)
    done = subprocess.run([sys.executable, "-m", "serve.client", "--url", str(http.base_url).rstrip("/"), "replay",
                           "--limit", "2000", "--batch-size", "10"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = next(line for line in done.stdout.splitlines() if line.startswith(("rollback ", "promote ")))
    assert summary.startswith("rollback v3 after "), summary
    sent = int(summary.split(" after ")[1].split()[0])
    decision = read_decisions(reg.path, reg.model_name)[-1]
    assert decision["action"] == "rollback" and decision["candidate"] == "v3" and decision["moved"] is None
    figures = decision["figures"]
    assert figures["candidate"]["accuracy"] < figures["current"]["accuracy"] - 0.02
    # the documented budget: the gate decides once each version has min_labelled (100) labelled instances;
    # the decision lands on the batch of 10 that brings the second version there
    assert 100 <= figures["candidate"]["labelled"] < 110 or 100 <= figures["current"]["labelled"] < 110, figures
    assert min(figures["candidate"]["labelled"], figures["current"]["labelled"]) >= 100
    assert sent == figures["candidate"]["labelled"] + figures["current"]["labelled"]
    assert read_latest(reg.path, reg.model_name) == "v2"
    assert read_rollout(reg.path, reg.model_name) is None
    wait_for_version(http, x, "v3", present=False, timeout_s=10)
    print(f"\n[rollout] canary of v3 (shuffled labels) rolled back after {sent} labelled instances: accuracy "
          f"{figures['candidate']['accuracy']:.3f} vs {figures['current']['accuracy']:.3f}")


def test_a_serve_config_rollout_starts_with_a_deploy_and_ends_when_removed(app) -> None:
    """``user_config.rollout`` as in cluster/serve_config.yaml: a redeploy with it starts the shadow (origin:
    the Serve config), a redeploy without it ends it; latest is untouched."""
    from serve.app import MLPService, RolloutLedger
    from serve.options import deployment_options

    http, cfg, x = app["http"], app["cfg"], app["x"]
    reg, config = cfg.registry, cfg.to_dict()

    def deploy(user_config: dict[str, Any]) -> None:
        options = {**deployment_options(cfg.serve), "user_config": user_config}
        serve.run(MLPService.options(**options).bind(config, RolloutLedger.bind(config)), name="rollout",
                  route_prefix="/")

    deploy({"version": "latest", "checkpoint": None,
            "rollout": {"candidate": "v1", "mode": "shadow", "min_labelled": 1000}})
    running = read_rollout(reg.path, reg.model_name)
    assert running is not None and running.candidate == "v1" and running.origin.startswith("serve-config:")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        predict(http, x[:4])
        if "v1" in http.get("/rollout").json()["versions"]:
            break
        time.sleep(0.2)
    status = http.get("/rollout").json()
    assert status["rollout"]["origin"] == running.origin and "v1" in status["versions"], status
    deploy({"version": "latest", "checkpoint": None})
    assert read_rollout(reg.path, reg.model_name) is None
    assert read_decisions(reg.path, reg.model_name)[-1]["reason"] == "removed from the Serve config"
    assert read_latest(reg.path, reg.model_name) == "v2"
