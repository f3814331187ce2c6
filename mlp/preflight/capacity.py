"""Will the request ever fit the cluster? The pure half of the preflight (``mlp.preflight.checks``).

A request's bundles (``scaling.num_workers`` x ``{CPU, GPU}``, ``serve.min_replicas``
x ``{CPU}``, one trial's ``tune.workers_per_trial`` x ``{CPU, GPU}``) are packed
onto the alive nodes' *total* resources, each bundle whole on one node as a
placement group requires. Busy resources are not counted: they free up. Only
``detect_autoscaling`` reads Ray (GCS); everything else is tested without Ray.

Autoscaling: a request that fits only once nodes are added is a note ("will
wait for the autoscaler"), not a failure. Signals, in order:
``MLP_PREFLIGHT_AUTOSCALING=1|0`` forces either answer; node groups in the
cluster config in GCS (what Ray Train reads for its maximum cluster size;
a request that cannot fit even at every group's ``max_count`` still fails);
the autoscaler v2 flag in GCS (``ray up``, KubeRay); autoscaler v1's status in
GCS naming real node types (a manual cluster's read-only autoscaler names its
nodes ``node_<id>``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Sequence

from mlp.config import Config
from mlp.console import CommandError

Purpose = Literal["train", "sweep", "serve"]
Bundle = Mapping[str, float]
AUTOSCALING_ENV = "MLP_PREFLIGHT_AUTOSCALING"
_UNIT = 10_000  # Ray counts resources in 1e-4 units; integers let 3 x 0.1 CPU fit a 0.3 CPU node
_SEARCH_STEPS = 100_000  # placement search budget for mixed bundles; past it we do not refuse
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class PreflightError(CommandError, RuntimeError):
    """The cluster cannot run the request; ``problems`` holds one line per problem, each naming the fix."""

    exit_code = 2

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)

    def lines(self) -> list[str]:
        return [f"preflight: {problem}" for problem in self.problems]


# ---------------------------------------------------------------- packing (pure)

def _units(bundle: Bundle) -> dict[str, int]:
    return {k: u for k, v in bundle.items() if (u := round(v * _UNIT)) > 0}


def _holds(free: Mapping[str, int], need: Mapping[str, int]) -> bool:
    return all(free.get(k, 0) >= v for k, v in need.items())


def _total(bundles: Sequence[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0) + v
    return out


def capacity(bundle: Bundle, nodes: Sequence[Bundle], strategy: str = "PACK") -> int:
    """How many copies of ``bundle`` the nodes hold at once, each copy whole on one node."""
    need = _units(bundle)
    if not need:
        return 10**9
    per_node = [min(f.get(k, 0) // v for k, v in need.items()) for f in map(_units, nodes)]
    if strategy == "STRICT_SPREAD":
        return sum(1 for n in per_node if n > 0)
    if strategy == "STRICT_PACK":
        return max(per_node, default=0)
    return sum(per_node)


def fits(bundles: Sequence[Bundle], nodes: Sequence[Bundle], strategy: str = "PACK") -> bool:
    """Can all ``bundles`` be placed at once on nodes with these total resources?

    Each bundle sits whole on one node, as in a placement group. PACK and SPREAD
    are soft in Ray (any placement will do); STRICT_PACK puts every bundle on
    one node, STRICT_SPREAD each on its own node.
    """
    need = [u for u in map(_units, bundles) if u]
    if not need:
        return True
    free = [_units(n) for n in nodes]
    if strategy == "STRICT_PACK":
        return any(_holds(f, _total(need)) for f in free)
    if all(b == need[0] for b in need):
        return capacity(bundles[0], nodes, strategy) >= len(need)
    if not _holds(_total(free), _total(need)):
        return False
    need.sort(key=lambda b: (-max(b.values()), sorted(b.items())))  # big first; equal bundles adjacent
    try:
        return _search(need, free, one_per_node=strategy == "STRICT_SPREAD")
    except (_OutOfSteps, RecursionError):
        return True  # undecided: never refuse a request that may fit


class _OutOfSteps(Exception):
    pass


def _search(need: list[dict[str, int]], free: list[dict[str, int]], one_per_node: bool) -> bool:
    """Depth-first placement of mixed bundles. It looks for the lexicographically first placement, so it
    may skip two symmetries: a bundle never goes to an earlier node than its equal predecessor, and of
    nodes left in the same state only the first is tried."""
    used = [False] * len(free)
    steps = 0

    def place(i: int, start: int) -> bool:
        nonlocal steps
        if i == len(need):
            return True
        steps += 1
        if steps > _SEARCH_STEPS:
            raise _OutOfSteps
        tried: set[Any] = set()
        for j in range(start if i and need[i] == need[i - 1] else 0, len(free)):
            state = (tuple(sorted(free[j].items())), used[j])
            if (one_per_node and used[j]) or state in tried or not _holds(free[j], need[i]):
                continue
            tried.add(state)
            for k, v in need[i].items():
                free[j][k] -= v
            was, used[j] = used[j], True
            found = place(i + 1, j)
            for k, v in need[i].items():
                free[j][k] += v
            used[j] = was
            if found:
                return True
        return False

    return place(0, 0)


# ---------------------------------------------------------------- requests and verdicts (pure)

@dataclass(frozen=True)
class NodeInfo:
    """An alive node (or, for an autoscaler's maximum, one node of a group) and its total resources."""

    node_id: str
    ip: str
    resources: dict[str, float]

    @property
    def label(self) -> str:
        return f"node {self.node_id} ({self.ip})" if self.ip else self.node_id


def _shape(bundle: Bundle) -> str:
    text = " + ".join(f"{v:g} {k}" for k, v in bundle.items() if v)
    return f"({text})" if "+" in text else text


@dataclass(frozen=True)
class Request:
    """``count`` copies of ``bundle`` (plus ``extra`` bundles) placed at once, and the keys that set them."""

    noun: str  # "worker", "replica", "trial worker"
    count: int
    bundle: dict[str, float]
    count_key: str  # the config key that sets ``count``
    resource_keys: dict[str, str]  # resource -> the config key that sets its amount
    strategy: str = "PACK"
    extra: tuple[dict[str, float], ...] = ()  # e.g. a trial's own actor beside its workers

    def bundles(self, count: Optional[int] = None) -> list[dict[str, float]]:
        return [*self.extra, *[self.bundle] * (self.count if count is None else count)]

    def amount(self) -> str:
        plus = "".join(f" plus {_shape(b)}" for b in self.extra)
        return f"{self.count} {self.noun}{'' if self.count == 1 else 's'} x {_shape(self.bundle)}{plus}"


@dataclass(frozen=True)
class Misfit:
    """Why a request does not fit, as ``key: need, but have. fix``."""

    key: str
    need: str
    have: str
    fix: str

    def message(self) -> str:
        return f"{self.key}: {self.need}, but {self.have}. {self.fix}"


def describe_nodes(nodes: Sequence[NodeInfo], limit: int = 8) -> str:
    parts = [f"{n.ip or n.node_id}: " + (", ".join(f"{n.resources[k]:g} {k}" for k in ("CPU", "GPU")
                                                   if n.resources.get(k)) or "no CPU") for n in nodes[:limit]]
    more = f"; and {len(nodes) - limit} more" if len(nodes) > limit else ""
    return f"(nodes: {'; '.join(parts) or 'none'}{more})"


def fit_problem(req: Request, nodes: Sequence[NodeInfo]) -> Optional[Misfit]:
    """None when ``req`` fits ``nodes``; else the key to change, what is missing, and the fix."""
    shapes = [n.resources for n in nodes]
    if fits(req.bundles(), shapes, req.strategy):
        return None
    where = describe_nodes(nodes)
    for res, amount in req.bundle.items():
        key = req.resource_keys.get(res, req.count_key)
        largest = max((s.get(res, 0.0) for s in shapes), default=0.0)
        if largest <= 0 < amount:
            fix = ("Run without --scaling.use_gpu, or add GPU nodes." if key == "scaling.use_gpu"
                   else f"Change --{key}, or add nodes with {res}.")
            return Misfit(key, f"the request needs {req.count} {req.noun}{'s' * (req.count != 1)} x {amount:g} "
                          f"{res}", f"no node of this cluster has a {res} {where}", fix)
        if round(largest * _UNIT) < round(amount * _UNIT):
            return Misfit(key, f"one {req.noun} needs {amount:g} {res}", f"the largest node has {largest:g} {res} "
                          f"{where}", f"Lower --{key} to at most {largest:g}, or add nodes with more {res}.")
    if capacity(req.bundle, shapes) == 0:
        return Misfit(req.count_key, f"one {req.noun} needs {_shape(req.bundle)} on one node",
                      f"no node has all of it {where}", "Lower what each one reserves, or add such nodes.")
    most = (next((k for k in range(req.count - 1, 0, -1) if fits(req.bundles(k), shapes, req.strategy)), 0)
            if req.extra else capacity(req.bundle, shapes, req.strategy))
    return Misfit(req.count_key, f"the request needs {req.amount()} ({_PLACED.get(req.strategy, _PLACED['PACK'])})",
                  f"the nodes hold at most {most} {where}", _count_fix(req, most))


_PLACED = {"PACK": "each whole on one node", "STRICT_PACK": "all on one node",
           "STRICT_SPREAD": "each on its own node"}


def _count_fix(req: Request, most: int) -> str:
    lower = f"Lower --{req.count_key}" + (f" to {most}" if most else "")
    if "CPU" in req.resource_keys:
        lower += f" or --{req.resource_keys['CPU']}"
    if req.strategy.startswith("STRICT") and req.resource_keys.get("CPU") == "scaling.cpus_per_worker":
        return f"{lower}, or use --scaling.placement_strategy {req.strategy[len('STRICT_'):]}."
    return f"{lower}, or add nodes."


@dataclass(frozen=True)
class Autoscaling:
    """Whether the cluster may grow, why we think so, and (when GCS knows them) the node groups it may add."""

    autoscales: bool
    reason: str
    groups: tuple[NodeInfo, ...] = ()  # one node of each group
    max_counts: tuple[int, ...] = ()  # per group; -1 = unlimited


def assess(req: Request, nodes: Sequence[NodeInfo], scaling: Autoscaling) -> tuple[Optional[str], Optional[str]]:
    """(problem, note): a request that cannot fit fails; on an autoscaling cluster one that fits later is a note."""
    misfit = fit_problem(req, nodes)
    if misfit is None:
        return None, None
    if not scaling.autoscales:
        return misfit.message(), None
    if scaling.groups:
        copies = len(req.bundles())  # more nodes of a group than bundles cannot help
        grown = [*nodes, *[g for g, m in zip(scaling.groups, scaling.max_counts)
                           for _ in range(copies if m < 0 else min(m, copies))]]
        at_max = fit_problem(req, grown)
        if at_max is not None:
            return (f"{at_max.key}: {at_max.need}, but even at the autoscaler's maximum ({scaling.reason}) "
                    f"{at_max.have}. {at_max.fix}"), None
    return None, (f"{misfit.key}: {misfit.need}, but {misfit.have} now. The cluster autoscales "
                  f"({scaling.reason}), so the request waits until the autoscaler adds nodes that hold it, "
                  f"forever if no node type can ({misfit.fix})")


# ---------------------------------------------------------------- autoscaler detection (reads GCS)

def detect_autoscaling(env: Mapping[str, str] = os.environ) -> Autoscaling:
    """The signals of the module docstring, in order; the GCS ones need a connected Ray."""
    setting = env.get(AUTOSCALING_ENV, "auto").strip().lower()
    if setting in _NO:
        return Autoscaling(False, f"{AUTOSCALING_ENV}={setting}")
    if setting not in _YES and setting != "auto":
        raise PreflightError([f"{AUTOSCALING_ENV}: must be auto, 1 or 0, got {setting!r}"])
    groups, counts = _gcs_node_groups()
    if setting in _YES:
        return Autoscaling(True, f"{AUTOSCALING_ENV}={setting}", groups, counts)
    if groups:
        return Autoscaling(True, "node groups in the cluster config in GCS", groups, counts)
    reason = _autoscaler_in_gcs()
    return Autoscaling(reason is not None, reason or "no autoscaler with node types in GCS")


def _gcs_node_groups() -> tuple[tuple[NodeInfo, ...], tuple[int, ...]]:
    """Node groups the platform reported to GCS (``ReportClusterConfig``); empty when none did."""
    from mlp.distributed.ray_compat import cluster_config

    try:
        return node_groups(cluster_config())
    except Exception:  # noqa: BLE001 - a config of another shape means "unknown"
        return (), ()


def node_groups(config: Any) -> tuple[tuple[NodeInfo, ...], tuple[int, ...]]:
    """(one node of each group, its max_count) from an ``autoscaler_pb2.ClusterConfig`` (or None)."""
    groups = [g for g in (config.node_group_configs if config else []) if g.max_count != 0]
    return (tuple(NodeInfo(f"node group {g.name}", "", {k: float(v) for k, v in g.resources.items()})
                  for g in groups), tuple(int(g.max_count) for g in groups))


def _autoscaler_in_gcs() -> Optional[str]:
    from mlp.distributed.ray_compat import autoscaler_status

    v2, v1_status = autoscaler_status()
    return "autoscaler v2 is enabled in GCS" if v2 else autoscaler_v1_reason(v1_status)


def autoscaler_v1_reason(status: Optional[bytes]) -> Optional[str]:
    """Autoscaler v1 writes its status to GCS on every cluster; only a real one names node types
    (``ray.worker.default``); a manual cluster's read-only one calls each node ``node_<id>``."""
    report = (json.loads(status) if status else {}).get("autoscaler_report") or {}
    types = set((report.get("node_type_mapping") or {}).values()) | set(report.get("pending_launches") or {})
    named = sorted(str(t) for t in types if not str(t).startswith("node_"))
    return f"the autoscaler manages node types {', '.join(named)}" if named else None


# ---------------------------------------------------------------- what each purpose asks for

def requests_for(cfg: Config, purpose: Purpose) -> list[Request]:
    """What ``purpose`` asks the cluster for, from the config alone."""
    if purpose == "train":
        # A streamed table needs a CPU beside the workers for Ray Data's read tasks, or they never run.
        reader = ({"CPU": 1.0},) if cfg.data.ingest == "stream" else ()
        return [Request("worker", cfg.scaling.num_workers, _worker(cfg), "scaling.num_workers",
                        _WORKER_KEYS, _strategy(cfg), reader)]
    if purpose == "sweep":
        return [sweep_request(cfg)]
    if purpose == "serve":
        return [Request("replica", cfg.serve.min_replicas, {"CPU": cfg.serve.replica_cpus}, "serve.min_replicas",
                        {"CPU": "serve.replica_cpus"})]
    raise ValueError(f"purpose must be train, sweep or serve, got {purpose!r}")


_WORKER_KEYS = {"CPU": "scaling.cpus_per_worker", "GPU": "scaling.use_gpu"}


def _worker(cfg: Config, cpus: Optional[float] = None) -> dict[str, float]:
    return {"CPU": cpus or cfg.scaling.cpus_per_worker, **({"GPU": 1.0} if cfg.scaling.use_gpu else {})}


def _strategy(cfg: Config) -> str:
    return str(getattr(cfg.scaling, "placement_strategy", "PACK")).upper()


def sweep_request(cfg: Config, trial_resources: Optional[Bundle] = None,
                  worker_cpus: Optional[float] = None) -> Request:
    """One trial. For a TorchTrainer trial pass its plan's ``trial_resources`` and ``worker_cpus``:
    the trial's own actor then needs a bundle beside its workers."""
    extra = (dict(trial_resources),) if trial_resources and worker_cpus else ()
    return Request("trial worker", cfg.tune.workers_per_trial, _worker(cfg, worker_cpus), "tune.workers_per_trial",
                   _WORKER_KEYS, _strategy(cfg), extra)
