"""Losing a node while two replicas (one per node) serve under load: few requests fail, then none.

The cluster: head 1 CPU + worker 1 CPU, started with the project's Ray settings
(HAProxy ingress on every node). ``python -m serve`` runs two 1-CPU replicas, one
per node; client threads send one test sample per request, continuously, to the
head node's ingress (the one that survives: a load balancer would stop sending
to a lost node's). The test kills the worker node's raylet by pid in the middle
of the load. Kills the worker node: one test per module.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import httpx

from mlp.distributed import rayenv

from .cluster import TwoNodeCluster

two_nodes_options = {"env": dict(rayenv.CLUSTER_ENV)}
CLIENTS = 2
SERVING = re.compile(r"^serving \S+ \(.*\) at http://", re.M)  # python -m serve, once it answers
AFTER_DEAD_S = 6.0  # load kept up after the cluster reports the node dead
PROMOTE = r"""
import json, sys, tempfile, torch
from mlp import registry
from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.loop import fit, prepare

# A model to serve, trained by the plain loop (no Ray: the training path is tested elsewhere).
cfg = Config.from_dict({"data": {"dataset": "synthetic", "synthetic_size": 2000}, "train": {"epochs": 2},
                        "registry": {"path": sys.argv[1]}})
with tempfile.TemporaryDirectory() as folder:
    model, optimizer, data, state = prepare(cfg, torch.device("cpu"))
    fit(cfg, model, optimizer, data, state, lambda m, model, opt, s: save_checkpoint(folder, model, cfg, s, opt))
    version = registry.promote(cfg.registry.path, "mlp", folder, {"epochs": state.epoch},
                               registry.make_provenance(cfg, folder))
print(json.dumps({"version": version.name}))
"""


class Load:
    """``CLIENTS`` threads POSTing test samples until stopped; records (sent at, answered at, status or error)."""

    def __init__(self, url: str) -> None:
        from mlp.config import DataConfig
        from mlp.data import load_test

        x, _ = load_test(DataConfig(dataset="synthetic"))
        self.bodies = [json.dumps(row) for row in x[:100].tolist()]
        self.url = url
        self.log: list[tuple[float, float, int | str, str]] = []  # (sent, answered, status or error, version or why)
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(CLIENTS)]

    def _client(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=15) as client:
            i = k
            while not self.stopped.is_set():
                sent = time.monotonic()
                try:
                    reply = client.post("/predict", content=self.bodies[i % len(self.bodies)],
                                        headers={"content-type": "application/json"})
                    outcome = reply.status_code
                    version = reply.json().get("version") if reply.is_success else reply.text[:120]
                except (httpx.HTTPError, ValueError) as err:
                    outcome, version = type(err).__name__, str(err)[:120]
                self.log.append((sent, time.monotonic(), outcome, version))
                i += CLIENTS

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_serving_survives_losing_the_worker_node_under_load(two_nodes: TwoNodeCluster, tmp_path: Path) -> None:
    registry = str(two_nodes.shared / "registry")
    version = two_nodes.driver_json(PROMOTE, registry)["version"]
    log = tmp_path / "serve.log"
    proc = two_nodes.start_cli("serve", "--registry.path", registry, "--serve.port", str(two_nodes.serve_http_port),
                               "--serve.min_replicas", "2", "--serve.max_replicas", "2", "--serve.replica_cpus", "1",
                               log_path=log)
    head, worker = two_nodes.head.node_id, two_nodes.worker.node_id
    try:
        two_nodes.wait_log(proc, log, SERVING)
        running = [r for r in two_nodes.serve_replicas() if r["state"] == "RUNNING"]
        assert sorted(r["node_id"] for r in running) == sorted([head, worker])
        # The head node's ingress, the one the clients use, reaches both replicas.
        answering, ready = set(), f"http://127.0.0.1:{two_nodes.serve_http_port}/readyz"
        for _ in range(100):
            answering.add(httpx.get(ready, timeout=30).json()["replica"])
            if len(answering) == 2:
                break
        assert answering == {r["replica_id"] for r in running}

        with Load(f"http://127.0.0.1:{two_nodes.serve_http_port}") as load:
            time.sleep(4)  # steady load on both replicas first
            killed_at = time.monotonic()
            two_nodes.kill_worker_raylet(signal.SIGKILL)
            dead_s, _ = two_nodes.wait_node_dead(worker, timeout_s=60)
            dead_at = killed_at + dead_s
            time.sleep(AFTER_DEAD_S)
        after_loss = two_nodes.serve_replicas()
    finally:
        code, stop_s = two_nodes.stop_cli(proc)

    requests = load.log
    failures = [(sent - killed_at, done - killed_at, outcome, why) for sent, done, outcome, why in requests
                if outcome != 200]
    recovery_s = max((done for _, done, _, _ in failures), default=0.0)
    print(f"\n{len(requests)} requests sent, {len(failures)} failed; node reported dead {dead_s:.1f} s after the "
          f"kill; recovery (last failure answered) {recovery_s:.1f} s after the kill; python -m serve stopped in "
          f"{stop_s:.1f} s")
    for sent, done, outcome, why in failures[:20]:
        print(f"  failed: sent {sent:+.2f} s, answered {done:+.2f} s after the kill: {outcome} {why!r}")

    before = [r for r in requests if r[0] < killed_at]
    later = [r for r in requests if r[0] >= dead_at]
    assert len(before) >= 20 and len(later) >= 20, "the clients did not keep sending"
    assert len(failures) <= 0.01 * len(requests)
    assert [outcome for _, _, outcome, _ in later] == [200] * len(later)  # after recovery, every request answers
    assert {v for _, _, outcome, v in requests if outcome == 200} == {version}
    # The head's replica kept serving; none runs on the lost node (its replacement has no room to start).
    assert [r["node_id"] for r in after_loss if r["state"] == "RUNNING"] == [head]
    assert code == 0, log.read_text()[-3000:]
