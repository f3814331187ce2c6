"""What the endpoint's per-request bookkeeping costs, in microseconds of one replica's CPU.

Each ``POST /predict`` a replica answers now also: counts it in Ray's metrics (``serve.metrics``: the
routed counter, the request counter, the latency histogram, and one batch-size observation per model
call), draws a ``request_id``, queues one answer record for the rollout ledger, and writes the id into
the JSON body; in a shadow rollout it also counts the agreement. This times each of those pieces in a
tight loop, in a Ray worker (metrics only record inside one), against the JSON encoding of the answer
itself as the yardstick. Run side by side in one process; medians of ``--rounds`` rounds.

    python benchmarks/bench_request_path.py --rounds 5 --calls 20000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import ray

RESULTS = Path(__file__).resolve().parent / "results" / "request_path.json"


@ray.remote(num_cpus=1)
def measure(rounds: int, calls: int) -> dict[str, float]:
    """Microseconds per call of each piece, median over ``rounds`` rounds of ``calls`` calls."""
    import numpy as np

    from serve.inputs import new_request_id
    from serve.metrics import ServeMetrics
    from serve.web import json_response, prediction_body

    metrics = ServeMetrics()
    answers: list[dict[str, Any]] = []
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=1).astype(np.float32)
    predictions = [{"label": int(probs[0].argmax()), "class_name": "Ankle boot", "probabilities": probs[0].tolist()}]

    def record_metrics() -> None:  # what one single-instance request records in the replica
        metrics.routed("none", "current")
        metrics.batched("v1", 1)
        metrics.answered("/predict", 200, "v1", 0.0012)

    def record_answer() -> None:
        answers.append({"request_id": "x", "rollout": "", "version": "v1", "predicted": [3], "error": False,
                        "latency_ms": 1.2, "shadow": None})
        if len(answers) > 1000:
            answers.clear()

    pieces: dict[str, Callable[[], Any]] = {
        "answer JSON without request_id (yardstick)": lambda: json_response(prediction_body(predictions, True, "v1")),
        "answer JSON with request_id": lambda: json_response(prediction_body(predictions, True, "v1",
                                                                             "18e2f0a9c1b-3f9a1c2d4e5f")),
        "request_id": new_request_id,
        "metrics (4 records)": record_metrics,
        "ledger answer record": record_answer,
        "shadow agreement count": lambda: metrics.agreement("shadow", 1, 1),
    }
    out: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(rounds):
        for name, piece in pieces.items():  # every piece in every round: drift hits them alike
            began = time.perf_counter()
            for _ in range(calls):
                piece()
            out[name].append((time.perf_counter() - began) / calls * 1e6)
    return {name: statistics.median(values) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=1, include_dashboard=False)  # its own cluster, whatever else runs here
    try:
        figures = ray.get(measure.remote(args.rounds, args.calls))
    finally:
        ray.shutdown()
    yardstick = figures["answer JSON without request_id (yardstick)"]
    added = (figures["answer JSON with request_id"] - yardstick + figures["request_id"]
             + figures["metrics (4 records)"] + figures["ledger answer record"])
    for name, micros in figures.items():
        print(f"{name:<45} {micros:8.2f} us")
    print(f"{'added per request (no rollout)':<45} {added:8.2f} us")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({**figures, "added_per_request_us": added, "rounds": args.rounds,
                                   "calls": args.calls}, indent=2))


if __name__ == "__main__":
    main()
