"""The product on two nodes with separate disks: train, sweep, promote and serve across both nodes.

One cluster (head 1 CPU + worker 1 CPU, both started with the project's Ray
settings, ``mlp.rayenv.CLUSTER_ENV``, and an S3 server's credentials, as
docs/cluster.md tells a real cluster to) serves every test here. Everything runs
as the real CLIs with ``RAY_ADDRESS`` set, never ``ray.init`` in pytest.

* Two flavours of shared storage (``storage`` fixture): the folder both nodes
  mount, and an ``s3://`` bucket. Per flavour: a 2-worker SPREAD run whose two
  ranks land on the two nodes (``--promote``), a sweep whose trials run on both
  nodes and promotes its winner, two replicas (one per node) serving it, and
  1,000 single-sample requests over HTTP whose answers equal the offline
  predictions of the promoted version.
* A node-local ``run.storage_path`` (the default, ``$MLP_HOME/runs``) is refused
  in seconds, naming the worker node and the path, with nothing written.
* Requests the cluster can never hold (a GPU, more workers than CPUs) exit 2 naming the resource.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlp.distributed import rayenv
from mlp.registry.storage import Location

from .cluster import TwoNodeCluster

S3_BUCKET = "mlp-test"  # tests/conftest.py's session server creates it
SMALL = ("--data.dataset", "synthetic", "--data.synthetic_size", "2000")
PREFLIGHT = re.compile(r"preflight \((train|sweep)\) passed in ([0-9.]+) s")
REQUESTS = 1000
SERVING = re.compile(r"^serving \S+ \(.*\) at http://", re.M)  # python -m serve, once it answers
OFFLINE = r"""
import json, sys
from mlp.config import DataConfig
from mlp.data import load_test
from serve.predictor import ModelSource, load_predictor

predictor = load_predictor(ModelSource(sys.argv[1], "mlp", sys.argv[2]))
x, y = load_test(DataConfig(dataset="synthetic"))
labels = predictor.predict_proba(x).argmax(axis=1).tolist()
print(json.dumps({"version": predictor.version, "labels": labels, "truth": y.tolist(),
                  "test_accuracy": predictor.info.metrics.get("test_accuracy")}))
"""


@pytest.fixture(scope="module")
def two_nodes_env(s3_env: dict[str, str]) -> dict[str, str]:
    """Both nodes start like a real cluster's: the project's Ray settings and the S3 credentials."""
    return {**rayenv.CLUSTER_ENV, **s3_env}


@pytest.fixture(scope="module", params=["shared-folder", "s3"])
def storage(request: pytest.FixtureRequest, two_nodes: TwoNodeCluster, s3_env: dict[str, str]) -> Iterator[dict]:
    """Where runs and the registry live, for one flavour; the pytest process can read it too (for S3, with
    the server's credentials) and collects the flavour's results in ``found`` for the later stages."""
    tag = uuid.uuid4().hex[:8]
    root = str(two_nodes.shared / tag) if request.param == "shared-folder" else f"s3://{S3_BUCKET}/{tag}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_env.items():
            patch.setenv(key, value)
        yield {"flavour": request.param, "runs": f"{root}/runs", "registry": f"{root}/registry", "found": {}}


def read_json(uri: str) -> Any:
    return json.loads(Location.of(uri).read_text())


def preflight_seconds(stdout: str, purpose: str) -> float:
    found = [float(s) for p, s in PREFLIGHT.findall(stdout) if p == purpose]
    assert found, f"no 'preflight ({purpose}) passed' line in:\n{stdout[-2000:]}"
    return found[0]


def failed(proc: Any) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


# ---------------------------------------------------------------- requests the cluster refuses

def test_node_local_storage_is_refused_naming_the_worker_node(two_nodes: TwoNodeCluster) -> None:
    name = f"local-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    # run.storage_path left at its default: $MLP_HOME/runs, a different disk on each node.
    proc = two_nodes.run_cli("mlp.train", *SMALL, "--train.epochs", "1", "--scaling.num_workers", "2",
                             "--scaling.placement_strategy", "SPREAD", "--run.name", name, timeout_s=60)
    seconds = time.monotonic() - started
    print(f"\nnode-local storage refused in {seconds:.1f} s (exit {proc.returncode})")
    assert proc.returncode == 2, failed(proc)
    error = proc.stderr.strip().splitlines()[-1]
    runs = two_nodes.home / "runs"
    assert error.startswith("mlp-train: error: preflight: run.storage_path:"), error
    assert f"node {two_nodes.worker.node_id}" in error and str(runs) in error
    assert "not shared between the nodes" in error
    assert two_nodes.head.node_id not in proc.stderr  # the head sees its own probe: only the worker is named
    # Nothing written: no run folder (nor the runs folder the probe created) on either disk.
    assert not (runs / name).exists() and not runs.exists()
    assert not two_nodes.worker.exists(f"runs/{name}") and not two_nodes.worker.exists("runs")


@pytest.mark.parametrize("argv, expected", [
    (("mlp.train", "--scaling.use_gpu", "true"),
     r"mlp-train: error: preflight: scaling\.use_gpu: the request needs 1 worker x 1 GPU, but no node of this "
     r"cluster has a GPU \(nodes: .*\)\. Run without --scaling\.use_gpu, or add GPU nodes\."),
    (("mlp.train", "--scaling.num_workers", "3"),
     r"mlp-train: error: preflight: scaling\.num_workers: the request needs 3 workers x 1 CPU .*, but the nodes "
     r"hold at most 2 \(nodes: [0-9.]+: 1 CPU; [0-9.]+: 1 CPU\)\. Lower --scaling\.num_workers to 2"),
    # The sweep sizes its trials from the cluster's CPUs before its preflight runs: refused there, same exit code.
    (("tune.sweep", "--tune.workers_per_trial", "3", "--tune.num_samples", "1"),
     r"mlp-sweep: error: config tune\.workers_per_trial: one trial needs 3 CPU, the cluster has 2 CPU"),
], ids=["gpu", "workers", "sweep-workers"])
def test_impossible_request_exits_2_naming_the_resource(two_nodes: TwoNodeCluster, argv: tuple[str, ...],
                                                        expected: str) -> None:
    shared = two_nodes.shared / f"impossible-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    # Ray would wait forever for these; timeout_s makes a hang fail the test instead of the suite.
    proc = two_nodes.run_cli(*argv, *SMALL, "--run.storage_path", str(shared), timeout_s=30)
    print(f"\n{' '.join(argv)}: exit {proc.returncode} in {time.monotonic() - started:.1f} s")
    assert proc.returncode == 2, failed(proc)
    error = proc.stderr.strip().splitlines()[-1]
    assert re.match(expected, error), error
    assert not shared.exists()  # refused before anything is written


# ---------------------------------------------------------------- the life cycle, per storage flavour

def test_train_runs_one_rank_on_each_node(two_nodes: TwoNodeCluster, storage: dict) -> None:
    name = "train-spread"
    proc = two_nodes.run_cli("mlp.train", *SMALL, "--train.epochs", "2", "--scaling.num_workers", "2",
                             "--scaling.placement_strategy", "SPREAD", "--run.name", name, "--promote",
                             "--run.storage_path", storage["runs"], "--registry.path", storage["registry"])
    assert proc.returncode == 0, failed(proc)
    print(f"\n[{storage['flavour']}] preflight (train) passed in {preflight_seconds(proc.stdout, 'train')} s")
    run = f"{storage['runs']}/{name}"
    summary, ranks = read_json(f"{run}/summary.json"), read_json(f"{run}/ranks.json")
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["node_id"] for r in ranks} == {two_nodes.head.node_id, two_nodes.worker.node_id}
    assert summary["ranks"] == ranks
    assert [m["epoch"] for m in map(json.loads, Location.of(f"{run}/metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert summary["promoted"] == f"{storage['registry']}/mlp/v1"
    assert Location.of(f"{storage['registry']}/mlp/v1/model.pt").is_file()


def test_sweep_runs_trials_on_both_nodes_and_promotes(two_nodes: TwoNodeCluster, storage: dict) -> None:
    name = "sweep"
    # Two trials of 1 CPU at once: one fits each node. They must outlast the start of a trial actor on a busy
    # machine (seconds): a trial that finishes first hands its actor (Tune reuses actors) to the other trial.
    # A low learning rate keeps the winner imperfect, so that serving it checks real predictions.
    proc = two_nodes.run_cli("tune.sweep", "--data.dataset", "synthetic", "--data.synthetic_size", "20000",
                             "--train.epochs", "8", "--tune.num_samples", "2", "--tune.early_stopping", "false",
                             "--tune.space.optim.lr", "loguniform:0.0003:0.001", "--run.name", name,
                             "--run.storage_path", storage["runs"], "--registry.path", storage["registry"])
    assert proc.returncode == 0, failed(proc)
    print(f"\n[{storage['flavour']}] preflight (sweep) passed in {preflight_seconds(proc.stdout, 'sweep')} s")
    sweep = f"{storage['runs']}/{name}"
    trials = read_json(f"{sweep}/trials.json")
    print(f"[{storage['flavour']}] trials per node: "
          + ", ".join(f"{t['trial_id']}@{'head' if t['node_id'] == two_nodes.head.node_id else 'worker'}"
                      for t in trials))
    assert len(trials) == 2 and all(t["status"] == "finished" for t in trials)
    assert {t["node_id"] for t in trials} == {two_nodes.head.node_id, two_nodes.worker.node_id}
    promoted = read_json(f"{sweep}/sweep_summary.json")["promoted"]
    assert promoted["version"] == "v2"  # after the training run's v1
    assert Location.of(f"{storage['registry']}/mlp/latest").read_text().strip() == "v2"
    storage["found"]["version"] = promoted["version"]


def start_serve(two_nodes: TwoNodeCluster, storage: dict, log: Path) -> subprocess.Popen:
    """``python -m serve`` with two 1-CPU replicas: one fits each node."""
    return two_nodes.start_cli("serve", "--registry.path", storage["registry"],
                               "--serve.port", str(two_nodes.serve_http_port), "--serve.min_replicas", "2",
                               "--serve.max_replicas", "2", "--serve.replica_cpus", "1", log_path=log)


def ingress_ports(two_nodes: TwoNodeCluster) -> list[int]:
    """The HTTP port of each node's Serve ingress: the head's http_options port, the worker's own."""
    return [two_nodes.serve_http_port, int(two_nodes.worker.serve_env["RAY_SERVE_WORKER_PROXY_HTTP_PORT"])]


def replicas_answering(ports: list[int], want: int, tries: int = 100) -> set[str]:
    """Replica ids that answer ``GET /model`` through the nodes' ingresses (until ``want`` are seen)."""
    seen: set[str] = set()
    for i in range(tries):
        reply = httpx.get(f"http://127.0.0.1:{ports[i % len(ports)]}/model", timeout=30)
        assert reply.status_code == 200, reply.text
        seen.add(reply.json()["replica"])
        if len(seen) >= want:
            break
    return seen


def test_two_replicas_one_per_node_serve_the_offline_predictions(two_nodes: TwoNodeCluster, storage: dict,
                                                                 tmp_path: Path) -> None:
    version = storage["found"].get("version")
    if version is None:
        pytest.skip("the sweep of this flavour promoted nothing (see its failure)")
    started = time.monotonic()
    proc = start_serve(two_nodes, storage, tmp_path / "serve.log")
    try:
        # What the promoted version predicts offline, computed while the replicas start.
        offline = two_nodes.driver_json(OFFLINE, storage["registry"], version)
        two_nodes.wait_log(proc, tmp_path / "serve.log", SERVING)
        print(f"\n[{storage['flavour']}] deployed in {time.monotonic() - started:.1f} s")
        replicas = [r for r in two_nodes.serve_replicas() if r["state"] == "RUNNING"]
        assert sorted(r["node_id"] for r in replicas) == sorted([two_nodes.head.node_id, two_nodes.worker.node_id])
        ports = ingress_ports(two_nodes)
        # Both replicas answer over HTTP, through either node's ingress.
        assert replicas_answering(ports, want=2) == {r["replica_id"] for r in replicas}

        x, y = offline_inputs()
        began, answers = time.monotonic(), []
        with httpx.Client(timeout=30) as client:
            for i in range(REQUESTS):  # one test sample per request, alternating the two nodes' ingresses
                reply = client.post(f"http://127.0.0.1:{ports[i % 2]}/predict", content=json.dumps(x[i]),
                                    headers={"content-type": "application/json"})
                answers.append((reply.status_code, reply.json() if reply.status_code == 200 else reply.text))
        seconds = time.monotonic() - began
        statuses = [status for status, _ in answers]
        print(f"[{storage['flavour']}] {REQUESTS} requests in {seconds:.1f} s: "
              f"{statuses.count(200)} answered 200, {REQUESTS - statuses.count(200)} failed")
        assert statuses == [200] * REQUESTS, [a for a in answers if a[0] != 200][:5]
        assert {body["version"] for _, body in answers} == {version} == {offline["version"]}
        served = [body["label"] for _, body in answers]
        assert served == offline["labels"][:REQUESTS]  # the same prediction for every sample
        served_accuracy = sum(a == b for a, b in zip(served, y)) / REQUESTS
        offline_accuracy = sum(a == b for a, b in zip(offline["labels"], offline["truth"])) / len(y)
        print(f"[{storage['flavour']}] served accuracy {served_accuracy:.4f}, offline {offline_accuracy:.4f}, "
              f"registry test_accuracy {offline['test_accuracy']:.4f}")
        assert served_accuracy == offline_accuracy == pytest.approx(offline["test_accuracy"], abs=1e-9)
        if storage["flavour"] == "s3":  # the worker's replica downloaded the version into its own disk's cache
            found = two_nodes.worker.run("find", str(two_nodes.home / ".cache"), "-path", f"*/mlp/{version}/model.pt")
            assert found.stdout.strip(), "the worker node has no cached copy of the served version"
    finally:
        code, stop_s = two_nodes.stop_cli(proc)
        print(f"[{storage['flavour']}] python -m serve stopped in {stop_s:.1f} s (exit {code})")
    assert code == 0
    assert two_nodes.serve_replicas() == []


def offline_inputs() -> tuple[list[list[float]], list[int]]:
    """The synthetic test set (what ``load_test`` gives every node) as JSON-ready rows and labels."""
    from mlp.config import DataConfig
    from mlp.data import load_test

    x, y = load_test(DataConfig(dataset="synthetic"))
    assert len(x) == REQUESTS
    return x.tolist(), y.tolist()
