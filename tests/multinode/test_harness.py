"""The two-node harness does what multi-node tests rely on: two real nodes, private disks, one shared folder.

A driver subprocess pins one task to each node; the tasks write to their node's
``MLP_HOME`` and to the shared folder, then each node lists what it sees. The
last test kills the second node's raylet, so it stays last in this module.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from .cluster import TwoNodeCluster

two_nodes_options = {
    "env": {"MLP_PROBE_BOTH": "both"},
    "head_env": {"MLP_PROBE_NODE": "head-env"},
    "worker_env": {"MLP_PROBE_NODE": "worker-env"},
}

PROBE = r"""
import json, os, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

nodes = {"head": sys.argv[1], "worker": sys.argv[2]}
shared = sys.argv[3]
ray.init(logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=1)
def write(name):
    node_id = ray.get_runtime_context().get_node_id()
    for folder in (os.environ["MLP_HOME"], shared):
        with open(os.path.join(folder, f"{name}.txt"), "w") as handle:
            handle.write(node_id)
    return node_id

@ray.remote(num_cpus=1)
def look():
    home = os.environ["MLP_HOME"]
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "home": sorted(os.listdir(home)),
        "shared": {n: open(os.path.join(shared, n)).read() for n in sorted(os.listdir(shared))},
        "env": [os.environ.get("MLP_PROBE_BOTH"), os.environ.get("MLP_PROBE_NODE")],
    }

def on(node_id):
    return NodeAffinitySchedulingStrategy(node_id, soft=False)

wrote = dict(zip(nodes, ray.get([write.options(scheduling_strategy=on(i)).remote(n) for n, i in nodes.items()])))
seen = dict(zip(nodes, ray.get([look.options(scheduling_strategy=on(i)).remote() for i in nodes.values()])))
print(json.dumps({"wrote": wrote, "seen": seen}))
"""


@pytest.fixture(scope="module")
def probe(two_nodes: TwoNodeCluster) -> dict:
    """What the pinned tasks wrote and saw (run once per module)."""
    return two_nodes.driver_json(PROBE, two_nodes.head.node_id, two_nodes.worker.node_id, str(two_nodes.shared))


def test_two_distinct_nodes_run_the_pinned_tasks(two_nodes: TwoNodeCluster, probe: dict) -> None:
    head, worker = two_nodes.head, two_nodes.worker
    assert head.node_id != worker.node_id
    assert probe["wrote"] == {"head": head.node_id, "worker": worker.node_id}
    assert {probe["seen"]["head"]["node_id"], probe["seen"]["worker"]["node_id"]} == {head.node_id, worker.node_id}
    assert head.raylet_pid != worker.raylet_pid and head.start_pid != worker.start_pid
    assert two_nodes.node_states() == {head.node_id: "ALIVE", worker.node_id: "ALIVE"}


def test_each_node_gets_the_fixture_env(probe: dict) -> None:
    assert probe["seen"]["head"]["env"] == ["both", "head-env"]
    assert probe["seen"]["worker"]["env"] == ["both", "worker-env"]


def test_shared_folder_is_seen_by_both_nodes_and_the_host(two_nodes: TwoNodeCluster, probe: dict) -> None:
    expected = {"head.txt": two_nodes.head.node_id, "worker.txt": two_nodes.worker.node_id}
    assert probe["seen"]["head"]["shared"] == expected
    assert probe["seen"]["worker"]["shared"] == expected
    assert {p.name: p.read_text() for p in Path(two_nodes.shared).iterdir()} == expected


def test_mlp_home_is_private_to_each_node(two_nodes: TwoNodeCluster, probe: dict) -> None:
    head, worker = two_nodes.head, two_nodes.worker
    assert head.home == worker.home  # one path, two disks: like ~/mlp on two machines
    # Each node's tasks see only their own file.
    assert probe["seen"]["head"]["home"] == ["head.txt"]
    assert probe["seen"]["worker"]["home"] == ["worker.txt"]
    # The host is the head machine: it sees the head's file, not the worker's.
    assert sorted(p.name for p in head.home.iterdir()) == ["head.txt"]
    assert head.read_text("head.txt") == head.node_id
    # Inside the worker's mount namespace: its own file only.
    assert worker.listdir() == ["worker.txt"]
    assert worker.read_text("worker.txt") == worker.node_id
    assert not worker.exists("head.txt")


def test_cluster_uses_its_own_token(two_nodes: TwoNodeCluster) -> None:
    url = f"{two_nodes.dashboard_url}/api/version"
    token = two_nodes.token_path.read_text()
    assert two_nodes.driver_env()["RAY_AUTH_TOKEN_PATH"] == str(two_nodes.token_path)
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer " + "0" * 64}, timeout=10).status_code == 403
    reply = httpx.get(url, headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert reply.status_code == 200 and reply.json()["ray_version"]


def test_killing_the_worker_raylet_loses_the_node(two_nodes: TwoNodeCluster) -> None:
    worker = two_nodes.worker
    two_nodes.kill_worker_raylet()
    waited_s, alive = two_nodes.wait_node_dead(worker.node_id, timeout_s=60)  # TimeoutError past 60 s
    assert waited_s < 60
    assert alive == {two_nodes.head.node_id: "ALIVE", worker.node_id: "DEAD"}
    # Its `ray start --block` notices and ends the node's other processes.
    assert worker.proc.wait(timeout=30) != 0
