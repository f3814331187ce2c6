"""The README's `ray job submit` steps, run as written, on a fresh ``HOME``.

Why: on Ray 2.60, ``ray start`` in token mode needs a token that already exists
(``ray get-auth-token --generate`` writes ``~/.ray/auth_token``); a ``ray start --head``
before it runs a cluster without authentication, and a token-mode client then fails.
The README once had the steps in that broken order. This test takes the commands from
the README's code block itself (so it fails when the docs drift), runs them in the
order shown on a ``HOME`` with no ``~/.ray``, and checks that the job succeeds, that the
token file appeared in that ``HOME``, and that clients without the right token are
refused by the cluster.

What the test changes in the docs' commands, and only that:

* ``ray start`` gets ``--block`` (so it is one process whose group the test can stop by
  pid), ports from the harness's claimed block instead of Ray's defaults (a real
  cluster and other tests' clusters may run on this machine), and ``--temp-dir`` under
  the test's folder (nothing in ``/tmp/ray``, where someone's ``ray.init(address="auto")``
  would find this cluster). A port the docs name (``--dashboard-port 8265``) is mapped to
  a claimed one, in ``ray start`` and in the ``ray job submit --address`` alike.
* the job's entrypoint keeps the README's command and options, followed by options
  that make it short (synthetic data, one epoch): later options win.
* the environment: the caller's, without any ``RAY_*``/``MLP_*`` setting, with the fresh
  ``HOME``, this Python first on ``PATH``, and the harness's node settings (stop at once
  on SIGTERM, no usage report, the State API address, the cluster marker).

Processes are owned by the harness's ``TwoNodeCluster`` (its marker, base folder and
stop-by-pid); here it holds only the head node that the docs' ``ray start`` runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from .cluster import NODE_ENV, REPO_ROOT, STARTED, TwoNodeCluster
from .node import Node
from .ports import PortBlock, claim_port_block, node_port_plan
from .procs import MARKER, find_raylet, proc_stat

README = REPO_ROOT / "README.md"
SECTION = "### On a cluster: `ray job submit`"
# Appended to the README's entrypoint: a short run of the same command (argparse: the last value wins).
SHORT_RUN = ("--data.dataset", "synthetic", "--data.synthetic_size", "2000", "--train.epochs", "1")
# Ray's defaults for the ports a `ray start --head` in the docs may leave out; the docs' client
# addresses name them then.
RAY_DEFAULT_PORTS = {"port": 6379, "dashboard-port": 8265, "ray-client-server-port": 10001}
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 300
CLIENT_TIMEOUT_S = 60


# ---- the docs' commands ----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One command of a docs code block: its text (continuations joined) and its words."""

    text: str
    assignments: dict[str, str]  # leading ``VAR=value`` words (``RAY_AUTH_MODE=token ray start ...``)
    argv: list[str]  # the command's words, without the assignments and the comment


def code_block(markdown: str, heading: str) -> str:
    """The first fenced code block under ``heading`` (before the next heading); AssertionError if none."""
    lines = markdown.splitlines()
    assert heading in lines, f"README.md has no heading {heading!r}"
    block: list[str] | None = None
    for line in lines[lines.index(heading) + 1:]:
        if block is None:
            if line.startswith("#"):
                break
            if line.startswith("```"):
                block = []
        elif line.startswith("```"):
            return "\n".join(block)
        else:
            block.append(line)
    raise AssertionError(f"no code block under {heading!r} in README.md")


def shell_steps(block: str) -> list[Step]:
    """The commands of a shell code block, as a shell reads them: ``\\`` continues a line, ``#`` starts a comment."""
    steps, pending = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = (pending + line).strip(), ""
        words = shlex.split(text, comments=True)
        if not words:
            continue
        assignments: dict[str, str] = {}
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            assignments[key] = value
        steps.append(Step(text=text, assignments=assignments, argv=words))
    assert not pending, "the code block ends inside a continued line"
    return steps


def option_value(argv: list[str], option: str) -> str | None:
    """The value of ``--option VALUE`` or ``--option=VALUE`` in ``argv``, else None."""
    for index, word in enumerate(argv):
        if word == option and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith(option + "="):
            return word.partition("=")[2]
    return None


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option``'s value replaced (either spelling), or with ``option value`` appended."""
    out, index, found = [], 0, False
    while index < len(argv):
        word = argv[index]
        if word == option and index + 1 < len(argv):
            out += [option, value]
            index, found = index + 2, True
            continue
        out.append(f"{option}={value}" if word.startswith(option + "=") else word)
        found = found or word.startswith(option + "=")
        index += 1
    return out if found else [*out, option, value]


# ---- running them ----------------------------------------------------------------------------


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A user's shell on a machine with this checkout installed: no Ray or project settings, ``home`` as ``HOME``.

    This Python's folder goes first on ``PATH``, so ``ray`` and ``python`` are this
    installation's whatever ``HOME`` does to version managers' shims.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "MLP_"))}
    env["HOME"] = str(home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of ``path``, None when it does not exist."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def dashboard_get(url: str, path: str, token: str) -> Any:
    """GET a dashboard API path with ``token`` (none when empty); the JSON answer."""
    request = urllib.request.Request(f"{url}{path}", headers={"authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


@dataclass
class DocsRun:
    """Runs the docs' steps in their order, as one user's shell would, with the changes the module docstring lists."""

    owner: TwoNodeCluster
    ports: PortBlock
    home: Path
    env: dict[str, str] = field(init=False)
    port_map: dict[int, int] = field(default_factory=dict)  # a port the docs name -> the claimed one
    dashboard_url: str = ""
    outputs: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)  # "get-auth-token", "submit"
    submit_argv: list[str] = field(default_factory=list)  # the job submission as run (for other clients)

    def __post_init__(self) -> None:
        self.home.mkdir()
        (self.owner.base / "tmp").mkdir()
        self.env = clean_env(self.home, {MARKER: self.owner.cluster_id, "RAY_USAGE_STATS_ENABLED": "0",
                                         "TMPDIR": str(self.owner.base / "tmp")})

    def run(self, steps: list[Step]) -> None:
        """Each step in turn; a kind of step this test does not know fails the test (the docs changed)."""
        for step in steps:
            env = {**self.env, **step.assignments}
            match step.argv:
                case ["export", *assignments]:
                    for word in assignments:
                        key, eq, value = word.partition("=")
                        assert eq, f"`{step.text}`: only `export VAR=value` is understood here"
                        self.env[key] = value
                case ["ray", "get-auth-token", *_]:
                    # As written, redirection included: it runs on the machine unchanged.
                    self.outputs["get-auth-token"] = self._shell(["bash", "-c", step.text], env, CLIENT_TIMEOUT_S)
                case ["ray", "start", *options]:
                    self._start_head(step, options, env)
                case ["ray", "job", "submit", *_]:
                    self.submit_argv = self._submission(step)
                    self.outputs["submit"] = self._shell(self.submit_argv, env, JOB_TIMEOUT_S)
                case _:
                    pytest.fail(f"the README's cluster block has a step this test cannot run: `{step.text}`")

    def _shell(self, argv: list[str], env: Mapping[str, str], timeout_s: float) -> subprocess.CompletedProcess:
        """Run a client command from the checkout (``--working-dir .`` means it), output captured."""
        return subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s,
                              check=False)

    def _start_head(self, step: Step, options: list[str], env: dict[str, str]) -> None:
        """The docs' ``ray start --head`` on claimed ports, plus ``--block`` and ``--temp-dir``, in a session of
        its own (the harness's launcher), until it is up."""
        assert "--head" in options, f"`{step.text}`: the block starts no head node"
        assert self.owner.head is None, "the block starts a second head node"
        node_ports, serve_env = node_port_plan(self.ports, worker=False)
        chosen = {"port": self.ports.take(), "dashboard-port": self.ports.take(),
                  "ray-client-server-port": self.ports.take(), **node_ports}
        argv = ["ray", "start", *options]
        for option, port in chosen.items():
            named = option_value(argv, f"--{option}")
            docs_port = int(named) if named is not None else RAY_DEFAULT_PORTS.get(option)
            if docs_port is not None:
                self.port_map[docs_port] = port
            argv = with_option(argv, f"--{option}", str(port))
        node = Node(name="head", home=self.home / "mlp", private_home=False, temp_dir=self.owner.base / "rh",
                    log_path=self.owner.base / "head.log", env={
                        **env, **serve_env, **NODE_ENV,
                        # Ray Train's own State API calls find this cluster by name, not by auto-detection
                        # (cluster.py: several clusters run on this machine).
                        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{chosen['dashboard-port']}"},
                    ports=node_ports)
        self.owner.head = node
        self.dashboard_url = node.env["RAY_API_SERVER_ADDRESS"]
        self.owner._launch(node, [*argv, "--block", "--temp-dir", str(node.temp_dir)])
        self._wait_head(node)

    def _wait_head(self, node: Node) -> None:
        """Until ``ray start`` reports the node up and the dashboard answers the cluster's token."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not node.running:
                pytest.fail(f"`ray start` exited ({node.proc.returncode}):\n{node.log_tail()}")
            if STARTED in node.log_path.read_text(errors="replace"):
                try:
                    # Without a token file (docs that start the head first) the request goes without one.
                    token = self.token_path.read_text().strip() if self.token_path.exists() else ""
                    dashboard_get(self.dashboard_url, "/api/version", token)
                    found = find_raylet(node.start_pid)
                    if found is not None:
                        node.raylet_pid, node.node_id = found
                        return
                except (OSError, ValueError):
                    pass  # the dashboard is still starting
            if time.monotonic() > deadline:
                pytest.fail(f"the head did not come up in {START_TIMEOUT_S} s:\n{node.log_tail()}")
            time.sleep(0.5)

    def _submission(self, step: Step) -> list[str]:
        """The docs' ``ray job submit``: address on the claimed port, the entrypoint shortened."""
        address = option_value(step.argv, "--address")
        assert address is not None, f"`{step.text}` names no --address"
        url = urlsplit(address)
        assert url.port in self.port_map, (
            f"`{step.text}`: port {url.port} is not one the block's `ray start` listens on ({sorted(self.port_map)})")
        argv = with_option(step.argv, "--address",
                           urlunsplit(url._replace(netloc=f"{url.hostname}:{self.port_map[url.port]}")))
        assert "--" in argv, f"`{step.text}` has no `-- entrypoint`"
        entrypoint = argv[argv.index("--") + 1:]
        assert entrypoint[:3] == ["python", "-m", "mlp.train"], f"the README's job is no longer mlp.train: {entrypoint}"
        return [*argv, *SHORT_RUN]

    @property
    def token_path(self) -> Path:
        return self.home / ".ray" / "auth_token"


@pytest.fixture
def docs_run() -> Iterator[DocsRun]:
    """A ``DocsRun`` on a fresh ``HOME``; afterwards every process it started is stopped by pid.

    ``TwoNodeCluster.stop`` ends the ``ray start --block`` session and every process carrying
    its marker (the job's driver runs in a session of its own), and fails if any survives.
    """
    owner = TwoNodeCluster()
    ports: PortBlock | None = None
    children: list[int] = []
    try:
        ports = claim_port_block()
        yield DocsRun(owner=owner, ports=ports, home=owner.base / "user")
    finally:
        head = owner.head
        if head is not None and head.start_pid:
            children = _children(head.start_pid)
        try:
            owner.stop()
        finally:
            if ports is not None:
                ports.release()
        left = [pid for pid in children if (stat := proc_stat(pid)) is not None and stat[0] != "Z"]
        assert not left, f"processes `ray start` launched are still running: {left}"


def _children(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (``ray start``: gcs_server, raylet, dashboard, ...)."""
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and (stat := proc_stat(int(entry))) is not None and stat[1] == parent]


def submit_as_other_user(run: DocsRun, home: Path, extra: Mapping[str, str]) -> subprocess.CompletedProcess:
    """The same submission from another user's shell: its own fresh ``HOME`` (no token file), plus ``extra``."""
    home.mkdir()
    env = clean_env(home, {MARKER: run.owner.cluster_id, "RAY_USAGE_STATS_ENABLED": "0", **extra})
    return subprocess.run(run.submit_argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT_S, check=False)


def test_readme_cluster_steps_run_on_a_fresh_home(docs_run: DocsRun) -> None:
    """The README's token, `ray start` and `ray job submit` steps work in their order; the cluster needs the token."""
    steps = shell_steps(code_block(README.read_text(), SECTION))
    real_token = Path.home() / ".ray" / "auth_token"  # compared by its metadata only, never read
    real_before = file_identity(real_token)

    docs_run.run(steps)

    assert "submit" in docs_run.outputs, "the README's cluster block submits no job"
    assert docs_run.owner.head is not None, "the README's cluster block starts no cluster"
    generated = docs_run.outputs.get("get-auth-token")
    assert generated is not None and generated.returncode == 0, generated
    assert docs_run.token_path.is_file() and docs_run.token_path.read_text().strip(), \
        "`ray get-auth-token --generate` wrote no ~/.ray/auth_token in the fresh HOME"
    token = docs_run.token_path.read_text().strip()
    assert file_identity(real_token) == real_before, "this machine's own ~/.ray/auth_token changed"

    submitted = docs_run.outputs["submit"]
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, f"`ray job submit` failed ({submitted.returncode}):\n{output[-6000:]}"
    job_id = re.search(r"Job '(raysubmit_\w+)' submitted successfully", output)
    assert job_id, f"no submission id in the output:\n{output[-3000:]}"
    job = dashboard_get(docs_run.dashboard_url, f"/api/jobs/{job_id.group(1)}", token)
    assert job["status"] == "SUCCEEDED", job
    # The job trained with the README's options in the node's default storage (~/mlp/runs).
    summaries = list((docs_run.home / "mlp" / "runs").glob("*/summary.json"))
    assert len(summaries) == 1, f"runs written: {summaries}"
    summary = json.loads(summaries[0].read_text())
    workers = int(option_value(docs_run.submit_argv, "--scaling.num_workers") or 1)
    assert len(summary["ranks"]) == workers, summary["ranks"]

    # Another user in token mode without a token: refused by the client itself, before any request,
    # with the message the README quotes.
    no_token = submit_as_other_user(docs_run, docs_run.owner.base / "no-token", {"RAY_AUTH_MODE": "token"})
    refusal = no_token.stdout + no_token.stderr
    assert no_token.returncode != 0, refusal[-3000:]
    assert "Token authentication is enabled but Ray couldn't find an authentication token" in refusal, refusal[-3000:]
    # Without token mode the client sends no token: the cluster itself refuses (HTTP 401).
    plain = submit_as_other_user(docs_run, docs_run.owner.base / "plain", {})
    refusal = plain.stdout + plain.stderr
    assert plain.returncode != 0, refusal[-3000:]
    assert "Authentication required" in refusal and "Missing authentication token" in refusal, refusal[-3000:]
    # A token that is not the cluster's: the cluster refuses it (HTTP 403).
    wrong = submit_as_other_user(docs_run, docs_run.owner.base / "wrong", {"RAY_AUTH_MODE": "token",
                                                                    "RAY_AUTH_TOKEN": "0" * len(token)})
    refusal = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0, refusal[-3000:]
    assert "Authentication failed" in refusal and "Invalid authentication token" in refusal, refusal[-3000:]
    # Neither started a job: the cluster still lists only the README's.
    jobs = dashboard_get(docs_run.dashboard_url, "/api/jobs/", token)
    assert [entry["submission_id"] for entry in jobs] == [job_id.group(1)], jobs
