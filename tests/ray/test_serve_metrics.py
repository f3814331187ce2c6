"""The endpoint's Prometheus metrics, read from Ray's real metrics export port while a real Serve app answers.

One application (``metrics``) serves ``v1`` (an untrained model: the metrics do not depend on the weights)
from a temporary registry. The test scrapes every alive node's ``/metrics`` (``MetricsExportPort`` in
``ray.nodes()``), sends good single and 64-instance requests plus malformed (400) and wrong-length (422)
ones, then polls the scrape until every series named in serve/metrics.py has moved by at least what was
sent. Only series of this application are counted, so requests other tests sent in the session do not
matter; deltas against the scrape taken before the load, so neither does anything recorded earlier.
Ray exports a worker's metrics every few seconds: the poll allows 60 s.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import httpx
import pytest
from ray import serve

from served import Samples, deploy_untrained, metrics_urls, scrape, total  # tests/ is on sys.path while pytest runs

APP = "metrics"
GOOD = 20  # single instances, one request each
BATCH = 64  # instances in one request
MALFORMED = 3  # -> 400, reason malformed
WRONG_LENGTH = 2  # -> 422, reason invalid_input
POLL_S = 60.0

@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-metrics")
    url = deploy_untrained(tmp, APP)
    with httpx.Client(base_url=url, timeout=30) as http:
        yield http
    serve.shutdown()


def expectations(version: str) -> dict[str, tuple[Callable[[Samples], float], float]]:
    """What must have grown, by at least how much: a reading of the scrape and the minimum increase."""
    def reading(name: str, **labels: str) -> Callable[[Samples], float]:
        return lambda s: total(s, name, **labels)

    def above_32(s: Samples) -> float:  # observations of the 64-instance call: buckets le=64 and up
        return (total(s, "ray_mlp_batch_size_bucket", version=version, le="+Inf")
                - total(s, "ray_mlp_batch_size_bucket", version=version, le="32.0"))

    predict = {"route": "/predict"}
    return {
        "200 answers by v1": (reading("ray_mlp_requests_total", **predict, status="200", version=version),
                              GOOD + 1),
        "400 answers": (reading("ray_mlp_requests_total", **predict, status="400", version="-"), MALFORMED),
        "422 answers": (reading("ray_mlp_requests_total", **predict, status="422", version="-"), WRONG_LENGTH),
        "refused malformed": (reading("ray_mlp_refused_total", **predict, reason="malformed"), MALFORMED),
        "refused invalid_input": (reading("ray_mlp_refused_total", **predict, reason="invalid_input"),
                                  WRONG_LENGTH),
        "latency count, v1": (reading("ray_mlp_request_latency_ms_count", **predict, version=version), GOOD + 1),
        "latency count, refused": (reading("ray_mlp_request_latency_ms_count", **predict, version="-"),
                                   MALFORMED + WRONG_LENGTH),
        "latency +Inf bucket, v1": (reading("ray_mlp_request_latency_ms_bucket", **predict, version=version,
                                            le="+Inf"), GOOD + 1),
        "batch-size count": (reading("ray_mlp_batch_size_count", version=version), 2),
        "batch sizes above 32": (above_32, 1),
    }


def post_json(http: httpx.Client, content: bytes | str) -> httpx.Response:
    return http.post("/predict", content=content, headers={"content-type": "application/json"})


def test_requests_refusals_latency_batch_size_and_version_reach_prometheus(endpoint):
    http = endpoint
    version = http.get("/readyz").json()["version"]
    assert version == "v1"
    urls = metrics_urls()
    before = scrape(urls, APP)

    row = [0.5] * 784
    for i in range(GOOD):
        resp = post_json(http, json.dumps(row if i % 2 else [row[k:k + 28] for k in range(0, 784, 28)]))
        assert resp.status_code == 200 and resp.json()["version"] == version, resp.text
    resp = post_json(http, json.dumps({"instances": [row] * BATCH}))
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == BATCH, resp.text
    for _ in range(MALFORMED):
        assert post_json(http, b'{"instances": [0.1,').status_code == 400
    for _ in range(WRONG_LENGTH):
        assert post_json(http, json.dumps(row[:-1])).status_code == 422

    wanted = expectations(version)
    deadline = time.monotonic() + POLL_S
    while True:
        after = scrape(urls, APP)
        moved = {what: read(after) - read(before) for what, (read, _) in wanted.items()}
        short = {what: delta for what, delta in moved.items() if delta < wanted[what][1]}
        served = total(after, "ray_mlp_served_version", version=version, role="current")
        if (not short and served == 1) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not short, f"moved less than sent after {POLL_S:g} s: {short} (all deltas: {moved})"
    assert served == 1, [s for s in after if s[0] == "ray_mlp_served_version"]
    # Every series carries the tags Serve adds; nothing answered by a version that was not served.
    assert all(tags.get("deployment") and tags.get("replica") for _, tags, _ in after)
    versions = {tags["version"] for name, tags, _ in after if name == "ray_mlp_requests_total"}
    assert versions <= {version, "-"}, versions
