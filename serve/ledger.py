"""The app's rollout ledger: one Serve replica that every ``MLPService`` replica reports its answers to.

Feedback (``POST /feedback``) can reach any replica, not the one that answered the request, so the
answers and the live figures per version live here, once per application. Replicas send their answers
in batches (every ``FLUSH_INTERVAL_S``, never one call per request); feedback that arrives before its
answer's batch waits for it up to ``FEEDBACK_WAIT_S``.

On each labelled request the gate (``serve.gate.judge``) looks at the running rollout; once it decides,
this replica applies the decision to the registry: ``promote`` points the reference the app serves
(``latest`` or an alias) at the candidate, ``rollback`` leaves it, both end the rollout and record the
decision with its figures (``mlp.registry.rollouts``). Replicas see the change within a second.

The figures are in memory: a restarted ledger starts counting again (the decision log is on storage).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from ray import serve

from mlp import registry
from mlp.config import Config
from mlp.registry.rollouts import Rollout, end_rollout, read_rollout, record_decision
from serve.gate import VersionFigures, Verdict, judge
from serve.inputs import request_id_time

log = logging.getLogger("ray.serve")
FLUSH_INTERVAL_S = 0.25
FEEDBACK_WAIT_S = 3.0
ANSWERS_KEEP = 100_000  # answers that can still get feedback; the oldest are forgotten first
ROLLOUT_READ_S = 1.0  # the rollout file is read at most this often (feedback can arrive thousands a second)
LEDGER_NAME = "RolloutLedger"


@dataclass
class Answer:
    """One answered prediction request, as a replica reports it."""

    rollout: str  # the rollout id it was answered under ("" without a rollout)
    version: str
    predicted: list[int]
    shadow_version: Optional[str] = None
    shadow_predicted: Optional[list[int]] = None
    labelled: bool = False


class Ledger:
    """The ledger's state and rules, without Serve: the deployment below wraps it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.answers: OrderedDict[str, Answer] = OrderedDict()
        self.figures: dict[tuple[str, str], VersionFigures] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.decisions: list[dict[str, Any]] = []
        self.agreement: dict[str, list[int]] = {}  # rollout id -> [instances both versions predicted, agreed]
        self._rollout: Optional[Rollout] = None
        self._rollout_read_at = 0.0
        self._deciding: set[str] = set()

    def _of(self, rollout: str, version: str) -> VersionFigures:
        return self.figures.setdefault((rollout, version), VersionFigures())

    def record(self, entries: list[dict[str, Any]]) -> None:
        """A replica's batch of answers: ``{request_id, rollout, version, predicted, error, latency_ms,
        shadow: {version, predicted, latency_ms} | None}``."""
        for entry in entries:
            rollout = entry.get("rollout", "")
            self._of(rollout, entry["version"]).answered(bool(entry.get("error")), entry.get("latency_ms"))
            shadow = entry.get("shadow")
            if shadow is not None:
                self._of(rollout, shadow["version"]).answered(bool(shadow.get("error")), shadow.get("latency_ms"))
                if shadow.get("predicted") and entry.get("predicted"):
                    counts = self.agreement.setdefault(rollout, [0, 0])
                    counts[0] += len(entry["predicted"])
                    counts[1] += sum(a == b for a, b in zip(entry["predicted"], shadow["predicted"]))
            if entry.get("predicted") is None:
                continue
            request_id = entry["request_id"]
            self.answers[request_id] = Answer(rollout, entry["version"], list(entry["predicted"]),
                                              shadow["version"] if shadow else None,
                                              list(shadow["predicted"]) if shadow and shadow.get("predicted") else None)
            while len(self.answers) > ANSWERS_KEEP:
                self.answers.popitem(last=False)
            event = self.arrived.pop(request_id, None)
            if event is not None:
                event.set()

    async def feedback(self, request_id: str, labels: list[int]) -> dict[str, Any]:
        """Score one answered request against its true labels; may decide the rollout. A 4xx dict if refused."""
        answer = self.answers.get(request_id)
        unknown = {"error": f"no answered request {request_id!r} (unknown, or older than the last "
                            f"{ANSWERS_KEEP:,} answers)", "status": 404}
        if answer is None and abs(time.time() - request_id_time(request_id)) > FEEDBACK_WAIT_S + 30.0:
            return unknown  # not issued lately: no answer of it can still be on its way
        if answer is None:  # its replica may not have flushed it yet
            event = self.arrived.setdefault(request_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), FEEDBACK_WAIT_S)
            except asyncio.TimeoutError:
                self.arrived.pop(request_id, None)
                return unknown
            answer = self.answers[request_id]
        if answer.labelled:
            return {"error": f"request {request_id!r} already has feedback", "status": 409}
        if len(labels) != len(answer.predicted):
            return {"error": f"request {request_id!r} had {len(answer.predicted)} instance(s) but the feedback "
                             f"gives {len(labels)} label(s)", "status": 409}
        answer.labelled = True
        correct = sum(int(p == y) for p, y in zip(answer.predicted, labels))
        self._of(answer.rollout, answer.version).label(correct, len(labels))
        result: dict[str, Any] = {"request_id": request_id, "version": answer.version, "labelled": len(labels),
                                  "correct": correct}
        if answer.shadow_predicted is not None and answer.shadow_version is not None:
            shadow_correct = sum(int(p == y) for p, y in zip(answer.shadow_predicted, labels))
            self._of(answer.rollout, answer.shadow_version).label(shadow_correct, len(labels))
            result["shadow"] = {"version": answer.shadow_version, "correct": shadow_correct}
        if answer.rollout:
            decision = await self._judge(answer.rollout)
            if decision is not None:
                result["decision"] = decision
        return result

    def rollout(self) -> Optional[Rollout]:
        """The running rollout, read from the registry at most once per ``ROLLOUT_READ_S``."""
        if time.monotonic() - self._rollout_read_at >= ROLLOUT_READ_S:
            try:
                self._rollout = read_rollout(self.cfg.registry.path, self.cfg.registry.model_name)
            except (OSError, ValueError) as err:
                log.warning("cannot read the rollout: %s", err)
            self._rollout_read_at = time.monotonic()
        return self._rollout

    async def _judge(self, rollout_id: str) -> Optional[dict[str, Any]]:
        rollout = self.rollout()
        if rollout is None or rollout.id != rollout_id or rollout_id in self._deciding:
            return None
        current_version = next((v for (r, v) in self.figures if r == rollout_id and v != rollout.candidate), None)
        if current_version is None:
            return None
        current = self._of(rollout_id, current_version)
        candidate = self._of(rollout_id, rollout.candidate)
        verdict = judge(rollout, current, candidate)
        if verdict is None:
            return None
        self._deciding.add(rollout_id)
        figures = {"current": current.to_dict(), "candidate": candidate.to_dict(),
                   "agreement": self.agreement_of(rollout_id)}
        decision = await asyncio.to_thread(self._apply, rollout, current_version, verdict, figures)
        self._rollout_read_at = 0.0  # read the file again: the rollout has ended
        return decision

    def _apply(self, rollout: Rollout, current_version: str, verdict: Verdict,
               figures: dict[str, Any]) -> dict[str, Any]:
        """Write the decision to the registry: move the served reference (promote), end the rollout, record it."""
        reg, source = self.cfg.registry, self.cfg.serve.version
        moved: Optional[str] = None
        if verdict.action == "promote":
            if source == registry.LATEST:
                registry.set_latest(reg.path, reg.model_name, rollout.candidate, how="gate")
                moved = f"latest -> {rollout.candidate}"
            elif not registry.is_version_number(source) and not self.cfg.serve.checkpoint:
                registry.set_alias(reg.path, reg.model_name, source, rollout.candidate)
                moved = f"alias {source} -> {rollout.candidate}"
        decision = {"action": verdict.action, "reason": verdict.reason, "rollout": rollout.id,
                    "mode": rollout.mode, "origin": rollout.origin, "candidate": rollout.candidate,
                    "current": current_version,
                    "serving": source, "moved": moved, "min_labelled": rollout.min_labelled,
                    "tolerance": rollout.tolerance, "figures": figures}
        if verdict.action == "promote" and moved is None:
            decision["note"] = (f"the app serves the pinned {source}: point serve.version at "
                                f"{rollout.candidate} to serve it")
        end_rollout(reg.path, reg.model_name, expected_id=rollout.id)
        record_decision(reg.path, reg.model_name, decision)
        self.decisions.append(decision)
        log.warning("rollout %s of %s: %s (%s)", rollout.id, rollout.candidate, verdict.action, verdict.reason)
        return decision

    def status(self) -> dict[str, Any]:
        """``GET /rollout``: the running rollout, the live figures of every version under it, the last decision."""
        rollout = self.rollout()
        rollout_id = rollout.id if rollout is not None else ""
        versions = {v: f.to_dict() for (r, v), f in self.figures.items() if r == rollout_id}
        return {"rollout": rollout.to_dict() if rollout is not None else None, "versions": versions,
                "agreement": self.agreement_of(rollout_id), "last_decision": self.decisions[-1] if self.decisions else None}

    def agreement_of(self, rollout_id: str) -> Optional[dict[str, Any]]:
        """A shadow rollout's agreement: instances both versions predicted, how many got the same class, the rate."""
        compared, agreed = self.agreement.get(rollout_id, (0, 0))
        if not compared:
            return None
        return {"compared": compared, "agreed": agreed, "rate": round(agreed / compared, 4)}


@serve.deployment(name=LEDGER_NAME, num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=10_000)
class RolloutLedger:
    """The Serve deployment around ``Ledger``: one replica per application."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.ledger = Ledger(Config.from_dict(config))

    # async, so every call runs on the replica's event loop, where ``feedback`` waits on its events
    async def record(self, entries: list[dict[str, Any]]) -> None:
        self.ledger.record(entries)

    async def feedback(self, request_id: str, labels: list[int]) -> dict[str, Any]:
        return await self.ledger.feedback(request_id, labels)

    async def status(self) -> dict[str, Any]:
        return self.ledger.status()
