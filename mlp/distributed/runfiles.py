"""A training run's own files, in one place on the run's storage, with one writer at a time.

Layout, beside Ray Train's ``checkpoint_*`` folders under ``<run.storage_path>/<run.name>/``::

    metrics.jsonl   one JSON line per epoch, each epoch exactly once
    ranks.json      which node each worker rank ran on
    attempt.json    the attempt that owns the run now (token, Ray job, driver pid and host)
    summary.json    the final result, written by the driver

Nothing here is written by a worker on its own disk: ``RunRecorder`` runs in
Ray Train's controller and writes through ``mlp.registry.storage``, so the files land
on the run's storage whatever node rank 0 is on. ``metrics.jsonl`` is rebuilt
whole from the history stored in each reported checkpoint, so a resumed run
ends with every epoch once, whatever a previous attempt wrote.

Two attempts of one run must never write at once (a driver killed with
SIGKILL leaves its controller and workers alive for a moment). ``begin_attempt``
waits for the previous attempt's Ray job to be gone, then takes the run by
writing a new token; the recorder and rank 0 check the token before writing,
so a straggler that is still alive writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Optional

from mlp.console import CommandError
from mlp.registry.storage import Location, join

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ATTEMPT_FILE = "attempt.json"
RANKS_FILE = "ranks.json"
NODE_KEYS = ("node_id", "node_ip", "peak_rss_mb", "start_private_mb", "peak_private_mb")  # what each worker adds about itself; not an epoch metric


class RunBusyError(CommandError, RuntimeError):
    """Another live process is training this run; two writers would corrupt it."""


@dataclass(frozen=True)
class Attempt:
    """Who owns a run now; a new token is taken by every driver that starts or resumes it."""

    token: str
    job_id: Optional[str]
    pid: int
    host: str
    started: float

    @classmethod
    def new(cls) -> "Attempt":
        import ray

        job_id = ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
        return cls(uuid.uuid4().hex, job_id, os.getpid(), socket.gethostname(), time.time())


class RunFiles:
    """Paths and readers/writers of one run's files on any storage."""

    def __init__(self, storage_path: str, name: str) -> None:
        self.dir = Location.of(join(storage_path, name))

    @property
    def metrics(self) -> Location:
        return self.dir / METRICS_FILE

    @property
    def summary(self) -> Location:
        return self.dir / SUMMARY_FILE

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        self.metrics.write_text("".join(json.dumps(m) + "\n" for m in history))

    def read_summary(self) -> Optional[dict[str, Any]]:
        return json.loads(self.summary.read_text()) if self.summary.is_file() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.summary.write_text(json.dumps(summary, indent=2, default=str))

    def read_ranks(self) -> list[dict[str, Any]]:
        path = self.dir / RANKS_FILE
        return json.loads(path.read_text()) if path.is_file() else []

    def write_ranks(self, ranks: list[dict[str, Any]]) -> None:
        (self.dir / RANKS_FILE).write_text(json.dumps(ranks, indent=2))

    def read_attempt(self) -> Optional[Attempt]:
        path = self.dir / ATTEMPT_FILE
        if not path.is_file():
            return None
        return Attempt(**json.loads(path.read_text()))

    def owns(self, token: str) -> bool:
        """True while ``token`` is the run's current attempt (no attempt file: nobody fences it)."""
        current = self.read_attempt()
        return current is None or current.token == token

    def begin_attempt(self, wait_s: float = 60.0) -> Attempt:
        """Take the run for this driver, after the previous attempt's processes are gone."""
        previous = self.read_attempt()
        attempt = Attempt.new()
        if previous is not None and previous.job_id and previous.job_id != attempt.job_id:
            wait_for_job_actors(previous, wait_s)
        self.dir.makedirs()
        (self.dir / ATTEMPT_FILE).write_text(json.dumps(asdict(attempt), indent=2))
        return attempt


# The actors of a Train run that write into its folder. Ray Train's PlacementGroupCleaner is
# detached on purpose (it outlives the job to free its resources) and writes nothing, so it is not waited for.
WRITER_ACTORS = ("TrainController", "RayTrainWorker")


def _alive_writers(job_id: str) -> Optional[int]:
    """Train controllers and workers of ``job_id`` still alive, through Ray's public State API.

    None when it cannot tell (a cluster without the dashboard that serves the State API).
    """
    try:
        import ray
        from ray.util.state import list_actors

        # The address of the cluster this driver is on: without it the State API picks the
        # newest cluster on the machine, which need not be ours.
        alive = list_actors(address=ray.get_runtime_context().gcs_address,
                            filters=[("job_id", "=", job_id), ("state", "=", "ALIVE")],
                            raise_on_missing_output=False, timeout=10)
        return sum(actor.class_name in WRITER_ACTORS for actor in alive)
    except Exception as err:  # no dashboard (State API) on this cluster: fall back on the token fence
        log.warning("cannot check whether the previous attempt (job %s) still runs: %s; "
                    "its writes are fenced off by the attempt token", job_id, err)
        return None


def wait_for_job_actors(previous: Attempt, wait_s: float) -> None:
    """Block until the previous attempt's controller and workers have exited.

    A driver killed with SIGKILL takes its Ray job down, but its Train
    controller and workers live on for a moment and would keep writing; a
    driver that is still running means the run is busy.
    """
    deadline, said = time.monotonic() + wait_s, False
    while (alive := _alive_writers(str(previous.job_id))):
        if not said:
            print(f"waiting for {alive} Train actor(s) of the previous attempt (Ray job {previous.job_id}) "
                  f"to exit before resuming", flush=True)
            said = True
        if time.monotonic() > deadline:
            raise RunBusyError(
                f"this run is being trained by Ray job {previous.job_id} (driver pid {previous.pid} on "
                f"{previous.host}); {alive} of its Train actors are still alive after {wait_s:.0f}s. Wait for it "
                f"to finish or stop it (ray job stop / Ctrl-C), or use another --run.name")
        time.sleep(0.2)


def node_of_this_process() -> dict[str, str]:
    """The node id and IP of the calling Ray worker, as each rank reports them."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}


def epoch_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """A rank's report without the node fields: what one line of ``metrics.jsonl`` holds."""
    return {k: v for k, v in report.items() if k not in NODE_KEYS}


def checkpoint_history(checkpoint: Any) -> Optional[list[dict[str, Any]]]:
    """The per-epoch history saved in a reported Ray checkpoint's ``state.json``."""
    path = f"{checkpoint.path.rstrip('/')}/state.json"
    try:
        with checkpoint.filesystem.open_input_stream(path) as stream:
            return json.loads(stream.read()).get("history")
    except (OSError, ValueError) as err:
        log.warning("cannot read %s: %s", path, err)
        return None
