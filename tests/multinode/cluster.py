"""A real two-node Ray cluster on one machine, each node with its own private disk.

The head node is ``ray start --head --block`` in a session of its own; the
second node is ``ray start --block`` in a mount namespace of its own, where a
private tmpfs covers its node-local folder (``MLP_HOME``). Both nodes use the
*same* ``MLP_HOME`` path, like ``~/mlp`` on two real machines, so a file one
node writes there is absent on the other; the host (where pytest and drivers
run) is the head machine. Both nodes also see one shared folder (what NFS
gives). Only ``MLP_HOME`` is private: ``/tmp``, ``/dev/shm`` and ``~`` stay shared,
so each node's download cache (``MLP_CACHE_DIR``) is put under ``MLP_HOME/.cache``,
where it is one per machine as ``~/.cache/mlp`` would be.

Safe beside other Ray clusters on the machine:

* Ports: every port ``ray start`` lets us choose, and the Serve ports that
  environment variables choose, come from one claimed block (``ports.py``).
  ``serve_http_port`` / ``serve_grpc_port`` are for ``http_options`` / ``grpc_options``.
* Token auth: the cluster has its own token file (``RAY_AUTH_TOKEN_PATH`` with
  ``RAY_AUTH_MODE=token``); ``~/.ray/auth_token`` is neither read nor written.
* Temp dirs: each node has its own ``--temp-dir``; nothing goes to ``/tmp/ray``,
  where someone's ``ray.init(address="auto")`` would find this cluster.
* Processes: each node is a session of its own, and drivers carry a marker in
  their environment (``procs.py``); ``stop`` ends exactly those processes, by
  pid, and fails if any is left.

Nothing here calls ``ray.init``: drivers are subprocesses (``run_driver``), and
cluster state comes from Ray's State API over HTTP, so the pytest process can
hold its own local cluster at the same time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from .node import Node
from .ports import PortBlock, claim_port_block, node_port_plan
from .procs import MARKER, cluster_pids, find_raylet, kill_pids, proc_stat, signal_group

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTED = "Ray runtime started."  # what `ray start` prints when its node is up
NODE_ENV = {
    # `ray start` drains a node on SIGTERM (up to 30 s); a test cluster stops at once.
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    # The GCS declares a node dead after 5 failed health checks, 3 s apart by default. 1 s apart,
    # a lost node is reported in about 5 s; a slow reply still has the default 10 s timeout.
    "RAY_health_check_period_ms": "1000",
}


def node_ip_address() -> str:
    """The address Ray picks for this machine (the one with a route out), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("203.0.113.1", 53))  # a UDP connect sends nothing; it only picks a route
            return sock.getsockname()[0]
        except OSError:
            return "127.0.0.1"


class TwoNodeCluster:
    """Start with ``start()`` (or ``with``); ``stop()`` ends it and checks nothing is left.

    ``env`` goes to both nodes and to drivers; ``head_env`` / ``worker_env`` to one node.
    """

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 1, env: Mapping[str, str] | None = None,
                 head_env: Mapping[str, str] | None = None, worker_env: Mapping[str, str] | None = None,
                 object_store_mb: int = 256, worker_home_mb: int = 1024, startup_timeout_s: float = 120) -> None:
        self.cluster_id = secrets.token_hex(6)
        self.cpus = {"head": head_cpus, "worker": worker_cpus}
        self.user_env = dict(env or {})
        self.node_user_env = {"head": dict(head_env or {}), "worker": dict(worker_env or {})}
        self.object_store_mb, self.worker_home_mb = object_store_mb, worker_home_mb
        self.startup_timeout_s = startup_timeout_s
        # A short base path: Ray's unix sockets live under the temp dirs (108-byte limit).
        self.base = Path(tempfile.mkdtemp(prefix="mlpmn-", dir="/tmp"))
        self.shared = self.base / "shared"
        self.home = self.base / "home"
        self.token_path = self.base / "auth_token"
        self.ip = node_ip_address()
        self._ports: PortBlock | None = None
        self.head: Node | None = None
        self.worker: Node | None = None
        self.gcs_port = self.dashboard_port = self.client_port = 0
        self.serve_http_port = self.serve_grpc_port = 0

    @property
    def address(self) -> str:
        """The GCS address (``ip:port``): ``RAY_ADDRESS`` for drivers, ``--address`` for ``ray start``."""
        return f"{self.ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """Dashboard, State API and Jobs API (``ray job submit --address``); needs the token."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    # ---- environments ----------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        """This process's environment minus Ray settings and MLP_HOME, plus the cluster's own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "MLP_HOME"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path),
                   RAY_USAGE_STATS_ENABLED="0", MLP_HOME=str(self.home), **{MARKER: self.cluster_id},
                   # Per machine, like ~/.cache/mlp: a node that serves a bucket downloads it itself.
                   MLP_CACHE_DIR=str(self.home / ".cache" / "mlp"),
                   # Temp files that outlive a killed process (the dashboard's pymp-* folders) go with base.
                   TMPDIR=str(self.base / "tmp"))
        return env

    def driver_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Everything a driver subprocess (``python -m mlp.train ...``) needs to join this cluster.

        ``RAY_ADDRESS``, ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN_PATH``, ``MLP_HOME`` (the head's:
        the host is the head machine), ``PYTHONPATH``, the fixture's ``env``, then ``extra``.
        """
        assert self.head is not None, "cluster not started"
        env = {**self._base_env(), **self.head.serve_env, **self.user_env, "RAY_ADDRESS": self.address}
        env.update(extra or {})
        return env

    # ---- start -----------------------------------------------------------------------------

    def _make_node(self, name: str, ports: PortBlock) -> Node:
        node_ports, serve_env = node_port_plan(ports, worker=name == "worker")
        env = {**self._base_env(), **serve_env, **NODE_ENV, "MLP_MULTINODE_NODE": name,
               # Ray's own processes that call the State API without an address (Ray Train's
               # PlacementGroupCleaner) auto-detect the cluster; on a machine running several
               # clusters that fails ("Found multiple active Ray instances") or finds another one.
               # On a real machine there is one; here we name ours.
               "RAY_API_SERVER_ADDRESS": self.dashboard_url,
               **self.user_env, **self.node_user_env[name]}
        return Node(name=name, home=self.home, private_home=name == "worker", temp_dir=self.base / f"r{name[0]}",
                    log_path=self.base / f"{name}.log", env=env, ports=node_ports, serve_env=serve_env)

    def _ray_start(self, node: Node, *more: str) -> list[str]:
        argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
                "--node-ip-address", self.ip, "--num-cpus", str(self.cpus[node.name]), "--num-gpus", "0",
                "--object-store-memory", str(self.object_store_mb * 1024 * 1024),
                "--temp-dir", str(node.temp_dir), "--disable-usage-stats", *more]
        for option, port in node.ports.items():
            argv += [f"--{option}", str(port)]
        return argv

    def _launch(self, node: Node, argv: list[str]) -> None:
        if shutil.which("setpriv"):
            # Should this process die without stop() (a killed CI job), the node gets SIGTERM
            # and ends its own processes. exec keeps one pid through setpriv, unshare and sh.
            argv = ["setpriv", "--pdeathsig", "TERM", *argv]
        with open(node.log_path, "wb") as log:
            # A session (and process group) of its own: a signal to the group reaches only this node.
            node.proc = subprocess.Popen(argv, env=node.env, cwd=self.base, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        node.start_pid = node.proc.pid

    def _check_running(self, node: Node) -> None:
        if not node.running:
            raise RuntimeError(f"{node.name} `ray start` exited ({node.proc.returncode}):\n{node.log_tail()}")

    def _wait_raylet(self, node: Node, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_running(node)
            found = find_raylet(node.start_pid)
            if found is not None:
                node.raylet_pid, node.node_id = found
                return
            time.sleep(0.2)
        raise TimeoutError(f"{node.name} raylet did not start in time:\n{node.log_tail()}")

    def _wait_started(self, node: Node, deadline: float) -> None:
        while STARTED not in node.log_path.read_text(errors="replace"):
            self._check_running(node)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} `ray start` did not finish starting:\n{node.log_tail()}")
            time.sleep(0.2)

    def _wait_gcs(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_running(self.head)
            try:
                socket.create_connection((self.ip, self.gcs_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"head GCS did not listen on {self.address} in time:\n{self.head.log_tail()}")

    def start(self) -> Self:
        """Start both nodes and wait until the cluster reports both alive (or raise, leaving nothing)."""
        try:
            self._start(time.monotonic() + self.startup_timeout_s)
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def _start(self, deadline: float) -> None:
        for folder in (self.shared, self.home, self.base / "tmp"):
            folder.mkdir()
        # The cluster's own token; `ray start` would otherwise use ~/.ray/auth_token (it never writes it).
        with os.fdopen(os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(secrets.token_hex(32))
        self._ports = ports = claim_port_block()
        self.gcs_port, self.dashboard_port, self.client_port = ports.take(), ports.take(), ports.take()
        self.serve_http_port, self.serve_grpc_port = ports.take(), ports.take()
        self.head, self.worker = self._make_node("head", ports), self._make_node("worker", ports)

        self._launch(self.head, self._ray_start(
            self.head, "--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(self.client_port)))
        # The second node may start as soon as the GCS answers (it retries until the head has
        # published its session), so the two nodes start side by side.
        self._wait_gcs(deadline)
        # A new mount namespace whose mounts do not propagate to the host; in it a tmpfs covers MLP_HOME.
        mount = 'mount -t tmpfs -o "size=$1,mode=0755" mlp-node-home "$2" && shift 2 && exec "$@"'
        self._launch(self.worker, ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh",
                                   f"{self.worker_home_mb}m", str(self.home),
                                   *self._ray_start(self.worker, "--address", self.address)])
        self._wait_raylet(self.head, deadline)
        self._wait_raylet(self.worker, deadline)
        self._wait_states({self.head.node_id: "ALIVE", self.worker.node_id: "ALIVE"}, deadline,
                          f"worker log:\n{self.worker.log_tail()}")
        # `ray start` finishes its own start-up a few seconds after its node is alive; until then it
        # sits in a GCS call that delays its SIGTERM handler (by 30 s once the GCS is gone).
        self._wait_started(self.head, deadline)
        self._wait_started(self.worker, deadline)

    # ---- drivers and cluster state ---------------------------------------------------------

    def run_driver(self, code: str, *args: str, timeout_s: float = 120, check: bool = True,
                   env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``python -c code args...`` as a driver of this cluster, from the repo root."""
        proc = subprocess.run([sys.executable, "-c", code, *args], env=self.driver_env(env), cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def driver_json(self, code: str, *args: str, timeout_s: float = 120) -> Any:
        """Run a driver; the last line it prints, parsed as JSON."""
        return json.loads(self.run_driver(code, *args, timeout_s=timeout_s).stdout.strip().splitlines()[-1])

    def run_cli(self, *argv: str, timeout_s: float = 300, env: Mapping[str, str] | None = None
                ) -> subprocess.CompletedProcess:
        """Run ``python -m argv...`` (a project CLI: ``mlp.train``, ``tune.sweep``, ...) as a driver; never raises
        for its exit code. stdout and stderr are captured apart (a test reads the error line from stderr)."""
        return subprocess.run([sys.executable, "-m", *argv], env=self.driver_env(env), cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout_s, check=False)

    def start_cli(self, *argv: str, log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """Start ``python -m argv...`` as a driver in the background (stdout and stderr to ``log_path``).

        The caller stops it (``stop_cli``); ``stop()`` ends it too, as it carries the cluster's marker.
        """
        with open(log_path, "wb") as log:
            return subprocess.Popen([sys.executable, "-m", *argv], env=self.driver_env(env), cwd=REPO_ROOT,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    @staticmethod
    def wait_log(proc: subprocess.Popen, log_path: Path, pattern: re.Pattern[str], timeout_s: float = 180) -> str:
        """Wait until ``log_path`` (a ``start_cli`` log) matches ``pattern``; the matched text.

        RuntimeError (with the log's tail) when the process exits first or ``timeout_s`` passes.
        """
        deadline = time.monotonic() + timeout_s
        while not (found := pattern.search(log_path.read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                state = (f"exited ({proc.returncode})" if proc.returncode is not None
                         else f"still running after {timeout_s:g} s")
                raise RuntimeError(f"{pattern.pattern!r} not in the log; the process {state}:\n"
                                   f"{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.2)
        return found.group(0)

    @staticmethod
    def stop_cli(proc: subprocess.Popen, timeout_s: float = 60) -> tuple[int, float]:
        """SIGTERM a ``start_cli`` process, SIGKILL it after ``timeout_s``; (exit code, seconds it took to exit)."""
        started = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        return proc.returncode, time.monotonic() - started

    def _api_get(self, path: str) -> Any:
        """GET a dashboard API path with the cluster's token; the JSON answer."""
        request = urllib.request.Request(f"{self.dashboard_url}{path}",
                                         headers={"authorization": f"Bearer {self.token_path.read_text()}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.load(reply)

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes from Ray's State API (what ``ray list nodes`` shows): node_id, state, ..."""
        return self._api_get("/api/v0/nodes?limit=1000&detail=false")["data"]["result"]["result"]

    def tasks(self, limit: int = 10000) -> list[dict[str, Any]]:
        """Tasks the cluster has recorded, actor method calls included (what ``ray list tasks`` shows): name,
        state, node_id, actor_id, job_id, ... Which node ran a piece of work, read from Ray itself."""
        return self._api_get(f"/api/v0/tasks?limit={limit}&detail=false")["data"]["result"]["result"]

    def actors(self, limit: int = 10000) -> list[dict[str, Any]]:
        """Actors the cluster has recorded, dead ones included (what ``ray list actors`` shows): class_name,
        state, node_id, job_id, ..."""
        return self._api_get(f"/api/v0/actors?limit={limit}&detail=false")["data"]["result"]["result"]

    def serve_details(self) -> dict[str, Any]:
        """Serve's state from its REST API (what ``serve status`` reads): proxies, applications, and each
        deployment's replicas with their ``replica_id``, ``state``, ``node_id``."""
        return self._api_get("/api/serve/applications/")

    def serve_replicas(self, app: str = "mlp", deployment: str = "MLPService") -> list[dict[str, Any]]:
        """Every replica of ``deployment`` in ``app`` (empty when the application does not exist); the app's
        other deployment, its one-replica RolloutLedger, is not one that answers requests."""
        application = self.serve_details().get("applications", {}).get(app) or {}
        return list((application.get("deployments", {}).get(deployment) or {}).get("replicas", []))

    def node_states(self) -> dict[str, str]:
        """``{node_id: "ALIVE" | "DEAD"}`` for every node the cluster has seen."""
        return {node["node_id"]: node["state"] for node in self.nodes()}

    def _wait_states(self, want: Mapping[str, str], deadline: float, context: str = "") -> dict[str, str]:
        while True:
            try:
                states = self.node_states()
            except (OSError, ValueError, KeyError):  # the dashboard may still be starting
                states = {}
            if all(states.get(node) == state for node, state in want.items()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes not {dict(want)} in time (now {states}) {context}")
            time.sleep(0.2)

    def wait_node_dead(self, node_id: str, timeout_s: float = 60) -> tuple[float, dict[str, str]]:
        """Wait until the cluster reports ``node_id`` dead; TimeoutError past ``timeout_s``.

        Returns the seconds waited and every node's state at that moment.
        """
        start = time.monotonic()
        states = self._wait_states({node_id: "DEAD"}, start + timeout_s)
        return time.monotonic() - start, states

    def kill_worker_raylet(self, sig: int = signal.SIGKILL) -> None:
        """Lose the second node: kill its raylet by pid (its ``ray start`` then ends the node's other processes)."""
        assert self.worker is not None and self.worker.raylet_pid, "cluster not started"
        os.kill(self.worker.raylet_pid, sig)

    # ---- stop ------------------------------------------------------------------------------

    @property
    def _sessions(self) -> set[int]:
        """The sessions (and process groups) of the two `ray start` processes."""
        return {node.start_pid for node in (self.worker, self.head) if node is not None and node.start_pid}

    def live_pids(self) -> list[int]:
        """Processes of this cluster still running: nodes, Ray workers, drivers given driver_env()."""
        return cluster_pids(self.cluster_id, self._sessions)

    def _signal_all(self, sig: int) -> None:
        live, groups = self.live_pids(), self._sessions
        for group in groups:
            signal_group(group, live, sig)
        # Ray's workers and any driver still running are in process groups of their own.
        others = [pid for pid in live if (stat := proc_stat(pid)) is not None and stat[2] not in groups]
        kill_pids(others, self.cluster_id, groups, sig)

    def _wait_gone(self, timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while True:
            for node in (self.worker, self.head):
                if node is not None and node.proc is not None:
                    node.proc.poll()  # reap our children
            left = self.live_pids()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def stop(self, timeout_s: float = 30, check: bool = True) -> None:
        """SIGTERM every process of the cluster, SIGKILL what is left after ``timeout_s``.

        Raises RuntimeError (when ``check``) if any process survives; removes the base
        folder otherwise (kept when ``MLP_MULTINODE_KEEP=1``, for the logs).
        """
        worker = self.worker
        if worker is not None and worker.running:
            # The worker first, while the GCS still answers it; then everything else.
            signal_group(worker.start_pid, self.live_pids(), signal.SIGTERM)
            try:
                worker.proc.wait(timeout=timeout_s / 2)
            except subprocess.TimeoutExpired:
                pass
        self._signal_all(signal.SIGTERM)
        left = self._wait_gone(timeout_s)
        if left:
            self._signal_all(signal.SIGKILL)
            left = self._wait_gone(10)
        if self._ports is not None:
            self._ports.release()
            self._ports = None
        if left and check:
            raise RuntimeError(f"cluster {self.cluster_id}: processes still running: {left}")
        if not left and os.environ.get("MLP_MULTINODE_KEEP") != "1":
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
