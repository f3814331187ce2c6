"""Prove what an endpoint serves: score it over HTTP on the whole test set, against the model offline.

``verify_endpoint`` sends every test image to ``POST /predict`` (batches, a few
at a time, as any client would), keeps each request's latency, and compares
the served predictions with the promoted version loaded here with
``serve.predictor.load_predictor``. The endpoint passes when every answer
comes from the expected version and every served label equals the offline
label, except where the offline probabilities tie (a tie may break either way
when float sums run in a different order). Nothing else checks served
accuracy against offline accuracy on every deploy; ``mlp-pipeline`` does.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional, Union

import httpx
import numpy as np

from mlp.config import DataConfig
from serve.endpoint import predict_json
from serve.predictor import ModelSource, Predictor, load_predictor

TIE_TOLERANCE = 1e-5  # offline probabilities closer than this are a tie: either label is right


class Progress:
    """A one-line progress bar on a terminal; on a log (CI, ``ray job logs``) a line every 10%."""

    def __init__(self, total: int, label: str, stream: Optional[IO[str]] = None, width: int = 30) -> None:
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        self.done, self.started, self.lock = 0, time.perf_counter(), threading.Lock()
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.next_tenth = 1

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            if self.live:
                self.stream.write("\r" + self._bar())
                if self.done >= self.total:
                    self.stream.write("\n")
            elif self.done * 10 >= self.next_tenth * self.total:
                self.next_tenth = self.done * 10 // max(self.total, 1) + 1
                self.stream.write(self._bar() + "\n")
            self.stream.flush()

    def _bar(self) -> str:
        share = self.done / self.total if self.total else 1.0
        filled = int(share * self.width)
        return (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"({share:.0%}, {time.perf_counter() - self.started:.1f}s)")


@dataclass
class Verification:
    """What the endpoint answered for the whole test set, beside the promoted model offline."""

    version: str
    images: int
    served_accuracy: float
    offline_accuracy: float
    mismatches: list[int]  # test indices where served and offline labels differ beyond a tie
    first_mismatch: Optional[dict[str, Any]]
    other_versions: dict[str, int]  # answers from a version other than ``version``: count per version
    max_probability_diff: float
    latencies_ms: list[float] = field(repr=False)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.other_versions

    def problem(self) -> str:
        """One sentence naming what failed, or an empty string."""
        parts = []
        if self.mismatches:
            first = self.first_mismatch or {}
            parts.append(f"{len(self.mismatches)} of {self.images} served predictions differ from {self.version}'s "
                         f"offline predictions (first: test image {first.get('index')}, served label "
                         f"{first.get('served')}, offline {first.get('offline')}; served accuracy "
                         f"{self.served_accuracy:.4f} vs offline {self.offline_accuracy:.4f})")
        if self.other_versions:
            parts.append(f"answers came from {dict(self.other_versions)} instead of {self.version} only")
        return "; ".join(parts)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("latencies_ms")
        data["mismatches"] = len(self.mismatches)
        data.update(ok=self.ok, problem=self.problem(), p50_ms=self.percentile_ms(50),
                    p99_ms=self.percentile_ms(99), requests=len(self.latencies_ms))
        return data


def load_test_set(predictor: Predictor, data_dir: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
    """The served model's own test set (its saved data config), found in ``data_dir`` when given."""
    from mlp.data import load_test

    saved = predictor.cfg.data
    x, y = load_test(DataConfig(**{**dataclasses.asdict(saved), "dir": data_dir or saved.dir}))
    return x.numpy(), y.numpy()


def verify_endpoint(url: str, source: Union[ModelSource, Path], data_dir: Optional[str] = None,
                    batch_size: int = 64, concurrency: int = 4, timeout_s: float = 60.0,
                    progress: Optional[Progress] = None) -> Verification:
    """Score ``url`` on the whole test set and compare with ``source`` (the registry version the
    endpoint should serve, or a checkpoint folder) loaded offline."""
    offline = load_predictor(source)
    x, y = load_test_set(offline, data_dir)
    expected = offline.predict_proba(x)
    served = np.zeros_like(expected)
    versions: list[str] = [""] * len(x)
    latencies: list[float] = []
    starts = list(range(0, len(x), batch_size))
    progress = progress or Progress(len(x), "verify")

    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        def send(start: int) -> None:
            began = time.perf_counter()
            body = predict_json(client, {"instances": x[start:start + batch_size].tolist()})
            latencies.append((time.perf_counter() - began) * 1000)
            rows = body["predictions"]
            served[start:start + len(rows)] = [row["probabilities"] for row in rows]
            versions[start:start + len(rows)] = [body["version"]] * len(rows)
            progress.advance(len(rows))

        began = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, starts))
        seconds = time.perf_counter() - began
    return compare(offline.version, expected, served, versions, y, latencies, seconds)


def compare(version: str, expected: np.ndarray, served: np.ndarray, versions: list[str], y: np.ndarray,
            latencies_ms: list[float], seconds: float) -> Verification:
    """Served against offline probabilities: label disagreements that are not ties, and foreign versions."""
    served_labels, offline_labels = served.argmax(axis=1), expected.argmax(axis=1)
    rows = np.arange(len(expected))
    tie = expected[rows, served_labels] >= expected.max(axis=1) - TIE_TOLERANCE
    mismatches = np.flatnonzero((served_labels != offline_labels) & ~tie).tolist()
    first = None
    if mismatches:
        i = mismatches[0]
        first = {"index": i, "served": int(served_labels[i]), "offline": int(offline_labels[i])}
    others: dict[str, int] = {}
    for name in versions:
        if name != version:
            others[name] = others.get(name, 0) + 1
    return Verification(
        version=version, images=len(expected),
        served_accuracy=float((served_labels == y).mean()), offline_accuracy=float((offline_labels == y).mean()),
        mismatches=mismatches, first_mismatch=first, other_versions=others,
        max_probability_diff=float(np.abs(served - expected).max()) if len(expected) else 0.0,
        latencies_ms=latencies_ms, seconds=seconds)


def wait_until_serving(url: str, version: str, timeout_s: float = 30.0, in_a_row: int = 5) -> bool:
    """True once ``/model`` says ``version`` ``in_a_row`` times running (every replica has swapped)."""
    deadline, streak = time.monotonic() + timeout_s, 0
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                streak = streak + 1 if client.get("/model").json().get("version") == version else 0
            except (httpx.HTTPError, ValueError):
                streak = 0
            if streak >= in_a_row:
                return True
            time.sleep(0.2)
    return False
