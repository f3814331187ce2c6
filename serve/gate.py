"""The rollout gate: live figures per version, and the rule that promotes or rolls back a candidate.

Ray-free and clock-free, so the rule is tested on its own (tests/unit/test_gate.py) and the ledger
(``serve.ledger``) only feeds it. The rule, with the rollout's ``min_labelled`` (N) and ``tolerance`` (t):

* nothing is decided before both the served version and the candidate have N labelled instances;
* **rollback** when the candidate's live accuracy is below the served version's by more than t,
  or its error rate (answers that failed: 5xx, timeouts) is above the served version's by more than t;
* **promote** otherwise: the candidate is no worse than the served version, within t.

In a shadow rollout both versions predict every request, so one labelled request counts for both;
in a canary each labelled request counts for the version that answered it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from mlp.registry.rollouts import Rollout

LATENCY_KEEP = 2048  # latencies kept per version for the median and p95: recent ones


@dataclass
class VersionFigures:
    """What the gate knows about one version during a rollout."""

    requests: int = 0
    errors: int = 0
    labelled: int = 0
    correct: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def answered(self, error: bool, latency_ms: Optional[float]) -> None:
        self.requests += 1
        self.errors += int(error)
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)
            if len(self.latencies_ms) > 2 * LATENCY_KEEP:
                del self.latencies_ms[:-LATENCY_KEEP]

    def label(self, correct: int, total: int) -> None:
        self.correct += correct
        self.labelled += total

    @property
    def accuracy(self) -> Optional[float]:
        return self.correct / self.labelled if self.labelled else None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def latency(self, quantile: float) -> Optional[float]:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms[-LATENCY_KEEP:])
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def to_dict(self) -> dict[str, Any]:
        accuracy = self.accuracy
        p50, p95 = self.latency(0.5), self.latency(0.95)
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 4),
                "labelled": self.labelled, "correct": self.correct,
                "accuracy": None if accuracy is None else round(accuracy, 4),
                "latency_p50_ms": None if p50 is None else round(p50, 3),
                "latency_p95_ms": None if p95 is None else round(p95, 3)}


@dataclass(frozen=True)
class Verdict:
    """The gate's decision and the sentence that explains it (recorded in the registry with the figures)."""

    action: str  # promote | rollback
    reason: str


def judge(rollout: Rollout, current: VersionFigures, candidate: VersionFigures) -> Optional[Verdict]:
    """The rule of this module's docstring; None while either version has fewer than N labelled instances."""
    need = rollout.min_labelled
    if current.labelled < need or candidate.labelled < need:
        return None
    t = rollout.tolerance
    cur_acc, cand_acc = current.accuracy or 0.0, candidate.accuracy or 0.0
    figures = (f"accuracy {cand_acc:.4f} vs {cur_acc:.4f} over {candidate.labelled} and {current.labelled} "
               f"labelled instances, error rate {candidate.error_rate:.4f} vs {current.error_rate:.4f}")
    if cand_acc < cur_acc - t:
        return Verdict("rollback", f"the candidate is less accurate by more than the tolerance {t:g}: {figures}")
    if candidate.error_rate > current.error_rate + t:
        return Verdict("rollback", f"the candidate fails more often by more than the tolerance {t:g}: {figures}")
    return Verdict("promote", f"the candidate is no worse than the served version within {t:g}: {figures}")
