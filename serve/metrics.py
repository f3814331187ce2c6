"""The endpoint's Prometheus metrics, recorded through Ray's metrics system (``ray.serve.metrics``).

Ray exports them from every node's metrics agent (``ray start --metrics-export-port``; Prometheus
service discovery: ``/tmp/ray/prom_metrics_service_discovery.json``) under the names below with a
``ray_`` prefix, a ``_total`` suffix on counters, and the tags Serve adds (``application``,
``deployment``, ``replica``). ``cluster/grafana_dashboard.json`` charts them; docs/serve.md lists them.

One ``ServeMetrics`` per replica: creating a metric registers it with the core worker, so it is
done once, not per request. Recording is a local call into Ray's core worker (no RPC per request).
"""

from __future__ import annotations

from typing import Optional

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500, 5000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
# A refused request's reason, by status: a small fixed set, so the series stay few.
REASONS = {400: "malformed", 401: "unauthorized", 403: "forbidden", 404: "unknown_request", 405: "method",
           408: "timeout", 413: "too_large", 415: "unsupported_media", 422: "invalid_input", 429: "overloaded",
           503: "unavailable", 504: "timeout"}


def refusal_reason(status: int) -> str:
    """The ``reason`` tag of a refused request: its status's name here, or ``http_<status>``."""
    return REASONS.get(status, f"http_{status}")


class ServeMetrics:
    """Every metric the endpoint records, with the one call per event the replica makes."""

    def __init__(self) -> None:
        self.requests = Counter("mlp_requests", description="Requests answered, by route, HTTP status and the "
                                "model version that computed the answer ('-' when none did).",
                                tag_keys=("route", "status", "version"))
        self.latency = Histogram("mlp_request_latency_ms", description="Time from the request reaching the "
                                 "replica to its answer, in milliseconds, by route and version.",
                                 boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route", "version"))
        self.batch = Histogram("mlp_batch_size", description="Instances in one model call (requests that "
                               "arrived together, each with one or more instances).",
                               boundaries=BATCH_BOUNDARIES, tag_keys=("version",))
        self.served = Gauge("mlp_served_version", description="1 for the version this replica serves as "
                            "current (role=current) and for a rollout's candidate (role=candidate).",
                            tag_keys=("version", "role"))
        self.refused = Counter("mlp_refused", description="Requests refused before the model ran, by reason "
                               "(malformed, unauthorized, too_large, unsupported_media, invalid_input, ...).",
                               tag_keys=("route", "reason"))
        self.compared = Counter("mlp_rollout_compared", description="Instances a rollout computed with both "
                                "versions (shadow), by mode and whether the two predicted the same class.",
                                tag_keys=("mode", "agreed"))
        self.canary = Counter("mlp_rollout_routed", description="Prediction requests by the rollout role that "
                              "answered them (current or candidate) and the rollout mode (none, canary, shadow).",
                              tag_keys=("mode", "role"))
        self._shown: dict[tuple[str, str], bool] = {}

    def answered(self, route: str, status: int, version: Optional[str], seconds: float) -> None:
        """One request's answer: counted by status and version, timed."""
        shown = version or "-"
        self.requests.inc(tags={"route": route, "status": str(status), "version": shown})
        self.latency.observe(seconds * 1000.0, tags={"route": route, "version": shown})

    def refusal(self, route: str, status: int) -> None:
        """A request refused before any model ran (its answer is counted by ``answered`` too)."""
        self.refused.inc(tags={"route": route, "reason": refusal_reason(status)})

    def batched(self, version: str, size: int) -> None:
        self.batch.observe(size, tags={"version": version})

    def routed(self, mode: str, role: str) -> None:
        self.canary.inc(tags={"mode": mode, "role": role})

    def agreement(self, mode: str, agreed: int, compared: int) -> None:
        """``compared`` instances were predicted by both versions; ``agreed`` of them got the same class."""
        if agreed:
            self.compared.inc(agreed, tags={"mode": mode, "agreed": "true"})
        if compared - agreed:
            self.compared.inc(compared - agreed, tags={"mode": mode, "agreed": "false"})

    def serving(self, current: Optional[str], candidate: Optional[str]) -> None:
        """Set the served-version gauge: 1 for what is served now, 0 for what no longer is."""
        now = {(v, role) for v, role in ((current, "current"), (candidate, "candidate")) if v}
        for key in set(self._shown) | now:
            value = key in now
            if self._shown.get(key) != value:
                self.served.set(1.0 if value else 0.0, tags={"version": key[0], "role": key[1]})
                self._shown[key] = value
