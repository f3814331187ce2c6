"""Talking to a running endpoint over plain HTTP (httpx, no Ray): predictions, errors, a scored test set,
and a labelled replay for the rollout gate.

Shared by ``mlp client`` and the pipeline's verification.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import httpx


class EndpointError(RuntimeError):
    """The endpoint answered with an error; the message is its JSON error text."""


def check_answer(resp: httpx.Response) -> dict[str, Any]:
    """The JSON body of an answer; an ``EndpointError`` with the server's error text for a 4xx or 5xx."""
    try:
        body = resp.json()
    except ValueError:
        body = {"error": resp.text.strip()}
    if resp.status_code >= 400:
        raise EndpointError(f"HTTP {resp.status_code}: {body.get('error', body)}")
    return body


def predict_json(client: httpx.Client, instances: Any) -> dict[str, Any]:
    """POST one instance (a flat list) or ``{"instances": [...]}``."""
    return check_answer(client.post("/predict", content=json.dumps(instances),
                              headers={"content-type": "application/json"}))


def predict_image(client: httpx.Client, path: Path, invert: str = "auto") -> dict[str, Any]:
    with path.open("rb") as handle:
        return check_answer(client.post("/predict", params={"invert": invert}, files={"file": (path.name, handle)}))


def score(client: httpx.Client, x, y, batch_size: int, concurrency: int) -> dict[str, Any]:
    """Accuracy of the endpoint over (x, y), sent as ``batch_size`` batches, ``concurrency`` at a time."""
    starts = range(0, len(x), batch_size)

    def send(start: int) -> list[int]:
        body = predict_json(client, {"instances": x[start:start + batch_size].tolist()})
        return [p["label"] for p in body["predictions"]]

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        labels = [label for part in pool.map(send, starts) for label in part]
    seconds = time.perf_counter() - began
    correct = sum(int(a == b) for a, b in zip(labels, y.tolist()))
    return {"images": len(labels), "accuracy": correct / len(labels), "seconds": seconds,
            "images_per_s": len(labels) / seconds}


def replay_line(totals: dict[str, Any]) -> str:
    """``replay``'s progress as one line: instances sent so far and which versions answered them."""
    return f"replay: {totals['sent']} labelled instances sent, answered by {totals['by_version']}"


def replay(client: httpx.Client, x, y, batch_size: int, limit: int,
           progress: Callable[[dict[str, Any]], None] = lambda _: None) -> dict[str, Any]:
    """Send a labelled set through the live endpoint: each batch to ``/predict``, then its true labels to
    ``/feedback``, until the rollout gate decides or ``limit`` instances were sent (wrapping around (x, y)).

    Returns ``{"sent", "requests", "by_version", "decision"}``; ``decision`` is None when the gate had not
    decided (too few labels, or no rollout running). ``progress`` gets the running totals after every batch.
    """
    sent, requests, by_version = 0, 0, {}
    while sent < limit:
        rows = [(sent + k) % len(x) for k in range(min(batch_size, limit - sent))]
        answer = predict_json(client, {"instances": x[rows].tolist()})
        feedback = check_answer(client.post("/feedback", json={"request_id": answer["request_id"],
                                                               "labels": [int(v) for v in y[rows].tolist()]}))
        sent, requests = sent + len(rows), requests + 1
        by_version[answer["version"]] = by_version.get(answer["version"], 0) + 1
        totals = {"sent": sent, "requests": requests, "by_version": dict(by_version),
                  "decision": feedback.get("decision")}
        progress(totals)
        if totals["decision"] is not None:
            return totals
    return {"sent": sent, "requests": requests, "by_version": by_version, "decision": None}
