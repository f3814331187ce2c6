"""A live rollout of a candidate version, as the registry records it: ``rollout.json`` and ``rollouts.jsonl``.

``rollout.json`` (in the model's folder) says which version runs beside the served one and how:

* ``canary``: ``percent`` of ``POST /predict`` requests are answered by the candidate;
* ``shadow``: every request is also computed by the candidate; the client gets the served version's answer.

Serve replicas read it once a second, like ``latest`` and the aliases, so ``mlp-registry canary``,
``shadow`` and ``rollout end`` reach a running app without a redeploy. The gate (``serve.gate``)
judges the candidate on labelled feedback (``POST /feedback``) and ends the rollout with a
decision: ``promote`` points the served reference (``latest`` or an alias) at the candidate,
``rollback`` leaves it where it is. Every decision, with its figures, is appended to
``rollouts.jsonl`` (``read_decisions``; ``mlp-registry rollout show``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from mlp.registry.layout import PathLike, RegistryError, model_location, read_json_lines
from mlp.registry.pointers import version_of

ROLLOUT = "rollout.json"
DECISIONS = "rollouts.jsonl"
DECISIONS_KEEP = 200
MODES = ("canary", "shadow")
DEFAULT_MIN_LABELLED = 200
DEFAULT_TOLERANCE = 0.02


@dataclass(frozen=True)
class Rollout:
    """One candidate on live traffic. ``id`` changes with the candidate, so the gate's counts start afresh,
    and stays when only ``percent`` (or the mode) changes, so a ramp-up keeps the evidence gathered."""

    candidate: str  # vN
    mode: str = "canary"
    percent: float = 10.0  # canary: share of requests the candidate answers
    min_labelled: int = DEFAULT_MIN_LABELLED  # labelled instances each version needs before the gate decides
    tolerance: float = DEFAULT_TOLERANCE  # accuracy the candidate may lose, and error rate it may add
    id: str = ""
    started_at: str = ""
    origin: str = "cli"  # who started it: cli, pipeline, or serve-config:<digest of the Serve config's rollout>

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RegistryError(f"rollout mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0.0 <= float(self.percent) <= 100.0:
            raise RegistryError(f"--percent must be within 0 and 100, got {self.percent}")
        if int(self.min_labelled) < 1:
            raise RegistryError(f"--min-labelled must be at least 1, got {self.min_labelled}")
        if not 0.0 <= float(self.tolerance) < 1.0:
            raise RegistryError(f"--tolerance must be within 0 and 1 (an accuracy difference), got {self.tolerance}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Rollout":
        if not isinstance(data, dict) or not isinstance(data.get("candidate"), str):
            raise RegistryError(f"{where} should hold a JSON object with a 'candidate' version; remove it with "
                                f"`mlp-registry rollout end` and start the rollout again")
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        try:
            return cls(**known)
        except (TypeError, ValueError) as err:
            raise RegistryError(f"{where}: {err}") from None


def read_rollout(root: PathLike, model_name: str) -> Optional[Rollout]:
    """The running rollout, or None. One small read: what each replica polls."""
    location = model_location(root, model_name) / ROLLOUT
    try:
        text = location.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise RegistryError(f"{location} is not valid JSON; remove it with `mlp-registry rollout end`") from None
    return Rollout.from_dict(data, str(location))


def start_rollout(root: PathLike, model_name: str, version: str, mode: str, percent: float,
                  min_labelled: int = DEFAULT_MIN_LABELLED, tolerance: float = DEFAULT_TOLERANCE,
                  origin: str = "cli") -> Rollout:
    """Start (or change) the rollout of ``version`` (``vN``, ``latest`` or an alias, stored as the ``vN``).

    The same candidate keeps its ``id``: changing the percentage or the mode keeps the gate's evidence.
    """
    candidate = version_of(root, model_name, version)
    current = read_rollout(root, model_name)
    same = current is not None and current.candidate == candidate
    rollout = Rollout(candidate=candidate, mode=mode, percent=float(percent), min_labelled=int(min_labelled),
                      tolerance=float(tolerance), id=current.id if same else secrets.token_hex(6),
                      started_at=current.started_at if same else _now(), origin=origin)
    (model_location(root, model_name) / ROLLOUT).write_text(json.dumps(rollout.to_dict(), indent=2) + "\n")
    return rollout


CONFIG_ORIGIN = "serve-config:"
CONFIG_KEYS = ("candidate", "mode", "percent", "min_labelled", "tolerance")


def sync_configured_rollout(root: PathLike, model_name: str, spec: Any) -> Optional[str]:
    """Make the registry's rollout follow a Serve config's ``user_config.rollout`` (``spec``; None: absent).

    Applied once per distinct spec: a spec already running, or already decided by the gate, is left
    alone (a replica restarting with the same YAML must not restart a finished rollout). Removing the
    spec ends a rollout that a Serve config started, not one started with ``mlp-registry``. Returns
    what it did, for the replica's log (None: nothing). A bad spec raises ``RegistryError`` naming the key.
    """
    current = read_rollout(root, model_name)
    if spec is None:
        if current is None or not current.origin.startswith(CONFIG_ORIGIN):
            return None
        end_rollout(root, model_name, expected_id=current.id)
        record_decision(root, model_name, {"action": "ended", "reason": "removed from the Serve config",
                                           "rollout": current.id, "mode": current.mode,
                                           "candidate": current.candidate, "origin": current.origin})
        return f"ended rollout {current.id} of {current.candidate}: no longer in the Serve config"
    if not isinstance(spec, dict) or not isinstance(spec.get("candidate"), str):
        raise RegistryError("user_config.rollout must be a mapping with a 'candidate' version, e.g. "
                            "{candidate: v4, mode: canary, percent: 10}")
    unknown = sorted(set(spec) - set(CONFIG_KEYS))
    if unknown:
        raise RegistryError(f"user_config.rollout: unknown key(s) {unknown} (known: {', '.join(CONFIG_KEYS)})")
    origin = CONFIG_ORIGIN + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    if current is not None and current.origin == origin:
        return None
    if any(entry.get("origin") == origin for entry in read_decisions(root, model_name)):
        return None
    try:
        rollout = start_rollout(root, model_name, spec["candidate"], spec.get("mode", "canary"),
                                spec.get("percent", 10.0), spec.get("min_labelled", DEFAULT_MIN_LABELLED),
                                spec.get("tolerance", DEFAULT_TOLERANCE), origin=origin)
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise RegistryError(f"user_config.rollout: {err}") from None
    return f"rollout {rollout.id} of {rollout.candidate} ({rollout.mode}) from the Serve config"


def end_rollout(root: PathLike, model_name: str, expected_id: Optional[str] = None) -> Optional[Rollout]:
    """Remove the rollout file; returns what it held (None if none ran).

    With ``expected_id``, only that rollout is ended: a gate deciding on an old rollout never ends a newer one.
    """
    current = read_rollout(root, model_name)
    if current is None or (expected_id is not None and current.id != expected_id):
        return None
    (model_location(root, model_name) / ROLLOUT).delete()
    return current


def record_decision(root: PathLike, model_name: str, decision: dict[str, Any]) -> None:
    """Append one gate decision (or a manual end) with its figures; the file keeps the newest ``DECISIONS_KEEP``."""
    location = model_location(root, model_name) / DECISIONS
    entries = [*read_decisions(root, model_name), {"at": _now(), **decision}][-DECISIONS_KEEP:]
    location.write_text("".join(json.dumps(entry) + "\n" for entry in entries))  # an object store cannot append


def read_decisions(root: PathLike, model_name: str) -> list[dict[str, Any]]:
    """Every recorded rollout decision, oldest first; a damaged line is skipped."""
    return [entry for entry in read_json_lines(model_location(root, model_name) / DECISIONS) if isinstance(entry, dict)]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
