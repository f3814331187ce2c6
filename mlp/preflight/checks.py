"""Preflight: prove within seconds, before anything is written, that the cluster can run a request.

Why: Ray waits rather than fails. ``--scaling.use_gpu`` on a cluster without a
GPU, or more workers than the nodes can hold, leaves a job pending forever,
and a node-local ``run.storage_path`` shows up only at the first checkpoint.
``check_cluster`` finds these up front and raises ``PreflightError`` (exit code
2 through ``mlp.console.run_command``): one line per problem, naming the key and the fix.

* **Fit** (``mlp.preflight.capacity``, pure and tested without Ray): the request's
  bundles are packed onto the alive nodes' total resources; on an autoscaling
  cluster what fits only later is a note, not a failure.
* **Storage**: one zero-CPU task pinned to every node that can host a bundle
  writes and reads back ``<run.storage_path>/.preflight/<token>/<node id>`` and
  reads the probe the driver wrote first (a node-local path on two machines
  passes the first and fails the second); the driver then looks for every
  node's probe and removes the folder. For ``serve`` every node instead reads
  the model file it will load (``registry.path`` or ``serve.checkpoint``).

What it is not: a reservation. Other jobs can take resources after the check.
"""

from __future__ import annotations

import logging
import os
import posixpath
import socket
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence, Union

from mlp.preflight.capacity import (Autoscaling, NodeInfo, PreflightError, Purpose, Request, assess, capacity,
                          detect_autoscaling, requests_for, sweep_request)
from mlp.config import Config
from mlp.registry.storage import Location, join, local_path, resolve

__all__ = ["PreflightError", "PreflightReport", "check_cluster", "sweep_request"]

log = logging.getLogger(__name__)

TIMEOUT_ENV = "MLP_PREFLIGHT_TIMEOUT_S"
PROBE_DIR = ".preflight"
DRIVER_PROBE = "driver"
STORAGE_FIX = ("Point --run.storage_path at a folder every node mounts and can write (NFS) "
               "or a URI like s3://bucket/runs.")
MODEL_FIX = {"registry.path": "Put --registry.path on storage every node mounts (NFS) or a URI like "
                              "s3://bucket/registry.",
             "serve.checkpoint": "Point --serve.checkpoint at a folder every node can read."}


# ---------------------------------------------------------------- storage probe (runs on each node)

@dataclass(frozen=True)
class Probe:
    """What every node is asked to check."""

    token: str
    root: Optional[str]  # <storage>/.preflight/<token>; None when the purpose writes no run files
    shared: bool  # the driver's probe is there to be read
    model: Optional[str]  # the model file serve will load


def probe_node(probe: Probe, node_id: str) -> dict[str, str]:
    """Run the checks on this node: ``{check: error}``, ``""`` for a check that passed."""
    results: dict[str, str] = {}
    if probe.root is not None:
        mine = Location(probe.root) / node_id
        # Folders the write below creates on this node (on a node-local path: up to the storage path
        # itself); measured first, so that this node removes exactly those again.
        created = _missing_levels(Location(probe.root))
        results["write"] = _attempt(lambda: _expect(mine, probe.token, write=True))
        if probe.shared:
            results["shared"] = _attempt(lambda: _expect(Location(probe.root) / DRIVER_PROBE, probe.token))
        if not probe.shared or results["shared"]:  # the driver will not see this copy: only this node can remove it
            _remove(mine, empty_parents=max(2, created))
    if probe.model is not None:
        results["model"] = _attempt(lambda: _read_head(str(probe.model)))
    return results


def _expect(location: Location, token: str, write: bool = False) -> None:
    if write:
        location.write_text(token)
    if location.read_text() != token:
        raise ValueError(f"{location} holds something other than this check's probe")


def _read_head(uri: str) -> None:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        stream.read(64)


def _remove(location: Location, empty_parents: int) -> None:
    """Remove a probe file or folder, then up to ``empty_parents`` folders above it that it left empty
    (on an object store too: pyarrow leaves an empty marker for the parent of what it deletes)."""
    _attempt(location.delete)
    for _ in range(empty_parents):
        location = Location(posixpath.dirname(location.uri))
        folder = local_path(location.uri)
        try:
            if folder is not None:
                os.rmdir(folder)  # fails, harmlessly, while another check's probe is still there
            elif not location.children():
                location.delete()
            else:
                return
        except Exception:  # best effort: a probe left behind is harmless, a cleanup error must not mask the check
            return


def _missing_levels(location: Location, most: int = 8) -> int:
    """How many folders from ``location`` upwards do not exist yet: the probe creates them, then removes them."""
    levels = 0
    try:
        while levels < most and not location.exists():
            levels += 1
            location = Location(posixpath.dirname(location.uri))
    except Exception:  # unreadable storage: the probe itself reports it
        pass
    return levels


def _attempt(step: Callable[[], Any]) -> str:
    try:
        step()
        return ""
    except Exception as err:
        return _one_line(err)


def _one_line(err: BaseException) -> str:
    """One line of error text (a Ray task error's last line is the worker's exception)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if len(lines) > 1 else f"{type(err).__name__}: {lines[0] if lines else ''}")[:300]


# ---------------------------------------------------------------- storage probe (driver)

@dataclass
class NodeCheck:
    node_id: str
    ip: str
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


_PASSED = {"write": "wrote and read back a probe", "shared": "saw the driver's probe", "model": "read the model"}
_FAILED = {"write": "cannot write and read back {root}/{node}: {err}. " + STORAGE_FIX,
           "shared": "does not see the probe the driver wrote to {root}/" + DRIVER_PROBE + " ({err}): the storage "
                     "path is not shared between the nodes. " + STORAGE_FIX,
           "model": "cannot read the model {model}: {err}. {fix}"}


@lru_cache(maxsize=1)
def _remote_probe() -> Any:
    import ray

    return ray.remote(probe_node)


def _run_probes(nodes: Sequence[NodeInfo], probe: Probe, timeout_s: float) -> dict[str, Union[dict[str, str], str]]:
    """One zero-CPU task pinned to each node; a node that does not answer in time gets a message instead."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = {_remote_probe().options(
        num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False),
    ).remote(probe, n.node_id): n.node_id for n in nodes}
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    out: dict[str, Union[dict[str, str], str]] = {}
    for ref in ready:
        try:
            out[refs[ref]] = ray.get(ref)
        except Exception as err:
            out[refs[ref]] = f"could not run the storage probe: {_one_line(err)}"
    for ref in pending:
        ray.cancel(ref, force=True)
        out[refs[ref]] = (f"did not finish the storage probe within {timeout_s:g} s (a hung mount, or a runtime env "
                          f"still installing?); check `ray status`, or raise {TIMEOUT_ENV}")
    return out


def _judge(node: NodeInfo, result: Union[dict[str, str], str], probe: Probe, model_key: str) -> NodeCheck:
    check = NodeCheck(node.node_id, node.ip)
    if isinstance(result, str):
        check.problems.append(f"{'run.storage_path' if probe.root else model_key}: {node.label} {result}")
        return check
    for name, err in result.items():
        if not err:
            check.passed.append(_PASSED[name])
            continue
        text = _FAILED[name].format(root=probe.root, node=node.node_id, err=err, model=probe.model,
                                    fix=MODEL_FIX.get(model_key, ""))
        check.problems.append(f"{model_key if name == 'model' else 'run.storage_path'}: {node.label} {text}")
    return check


def check_storage(nodes: Sequence[NodeInfo], storage: Optional[str], model: Optional[tuple[str, str]],
                  timeout_s: float) -> tuple[list[NodeCheck], list[str]]:
    """Probe ``storage`` (the run storage path) and/or ``model`` ((key, model file)) from every node.

    Returns each node's result and the driver's own problems; removes every probe it wrote.
    """
    token, host = uuid.uuid4().hex[:12], socket.gethostname()
    root = str(Location.of(storage) / PROBE_DIR / token) if storage else None
    created = _missing_levels(Location.of(storage)) if storage else 0  # removed again afterwards
    driver = []
    if root is not None:
        err = _attempt(lambda: (Location(root) / DRIVER_PROBE).write_text(token))
        if err:
            driver.append(f"run.storage_path: the driver ({host}) cannot write {root}/{DRIVER_PROBE}: {err}. "
                          f"{STORAGE_FIX}")
    probe = Probe(token, root, root is not None and not driver, model[1] if model else None)
    try:
        results = _run_probes(nodes, probe, timeout_s)
        checks = [_judge(n, results[n.node_id], probe, model[0] if model else "") for n in nodes]
        seen = set(Location(root).children()) if probe.shared and root else set()
        for node, check in zip(nodes, checks):
            if probe.shared and not check.problems and node.node_id not in seen:
                check.problems.append(f"run.storage_path: the driver ({host}) does not see the probe {node.label} "
                                      f"wrote to {root}/{node.node_id}: the storage path is not shared between "
                                      f"the nodes. {STORAGE_FIX}")
    finally:
        if root is not None:
            # and .preflight/ when no other check uses it, and the folders the probe created above it
            _remove(Location(root), empty_parents=1 + created)
    return checks, driver


# ---------------------------------------------------------------- entry point

@dataclass
class PreflightReport:
    """What was checked and passed, and what will wait; ``seconds`` is the whole check's wall time."""

    purpose: str
    seconds: float
    autoscaling: str  # the detection's reason
    nodes: list[NodeCheck]  # the nodes probed (those that can host a bundle)
    passed: list[str]
    notes: list[str]  # requests that wait for the autoscaler, ceilings Serve cannot pass

    def summary(self) -> str:
        return (f"preflight ({self.purpose}) passed in {self.seconds:.1f} s, {len(self.nodes)} node(s) probed: "
                + "; ".join(self.passed))


def alive_nodes() -> list[NodeInfo]:
    import ray

    return [NodeInfo(n["NodeID"], n.get("NodeManagerAddress", "?"), dict(n.get("Resources") or {}))
            for n in ray.nodes() if n.get("Alive")]


def model_file(cfg: Config) -> tuple[str, str]:
    """(config key, model file) that serve will load; FileNotFoundError (naming the fix) when there is none."""
    if cfg.serve.checkpoint:
        return "serve.checkpoint", join(cfg.serve.checkpoint, "model.pt")
    from mlp.registry import locate_version

    # Where the version lives on the registry's storage (never a download to this driver's disk).
    folder = locate_version(cfg.registry.path, cfg.registry.model_name, cfg.serve.version)
    return "registry.path", str(folder / "model.pt")


def _fit_all(cfg: Config, requests: Sequence[Request], nodes: list[NodeInfo],
             scaling: Autoscaling) -> tuple[list[str], list[str], list[str]]:
    problems, notes, passed = [], [], []
    for req in requests:
        problem, note = assess(req, nodes, scaling)
        problems += [problem] if problem else []
        notes += [note] if note else []
        passed += [] if problem or note else [f"{req.amount()} fit on {len(nodes)} node(s)"]
    if any(r.count_key == "serve.min_replicas" for r in requests):
        most = capacity({"CPU": cfg.serve.replica_cpus}, [n.resources for n in nodes])
        if most < cfg.serve.max_replicas:
            notes.append(f"serve.max_replicas: the nodes hold at most {most} replicas of {cfg.serve.replica_cpus:g} "
                         f"CPU now, so Serve cannot scale to {cfg.serve.max_replicas} unless nodes are added")
    return problems, notes, passed


def check_cluster(cfg: Config, purpose: Purpose, *, requests: Optional[Sequence[Request]] = None,
                  timeout_s: Optional[float] = None) -> PreflightReport:
    """Check that the connected cluster can run ``purpose`` for ``cfg``; raise ``PreflightError`` if not.

    ``requests`` replaces what is derived from ``cfg`` (e.g. ``[sweep_request(cfg, plan.trial_resources,
    plan.worker_cpus)]``). Needs a connected Ray. Writes only its probes, and removes them.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("check_cluster needs a connected Ray: call mlp.distributed.init_ray() first")
    started = time.perf_counter()
    nodes, scaling = alive_nodes(), detect_autoscaling()
    requests = list(requests) if requests is not None else requests_for(cfg, purpose)
    problems, notes, passed = _fit_all(cfg, requests, nodes, scaling)
    if problems:  # no probe: a request that can never run writes nothing anywhere
        raise PreflightError(problems)
    model = None
    if purpose == "serve":
        try:
            model = model_file(cfg)
        except FileNotFoundError as err:
            problems.append(f"{'serve.checkpoint' if cfg.serve.checkpoint else 'registry.path'}: {err}")
    # Only nodes that can host a bundle run workers or replicas; when none can, probe them all.
    hosts = [n for n in nodes if any(capacity(r.bundle, [n.resources]) for r in requests)] or nodes
    storage = None if purpose == "serve" else cfg.run.storage_path
    timeout_s = timeout_s or float(os.environ.get(TIMEOUT_ENV, "30"))
    checks, driver = check_storage(hosts, storage, model, timeout_s) if storage or model else ([], [])
    problems += driver + [p for c in checks for p in c.problems]
    if checks and not problems:
        passed.append(f"{len(checks)} node(s) " + ", ".join(dict.fromkeys(p for c in checks for p in c.passed))
                      + f" ({storage or model[1]})")  # type: ignore[index]
    for note in notes:
        log.warning("preflight: %s", note)
    if problems:
        raise PreflightError(problems)
    report = PreflightReport(purpose, time.perf_counter() - started, scaling.reason, checks, passed, notes)
    log.info("%s", report.summary())
    return report
