"""The benchmark peer: the server a user would write instead of Ray Serve.

A plain FastAPI app holding the same ``Predictor`` and doing the same
per-request work as the Serve deployment (``serve.web.parse_request`` ->
model -> ``json_response``), run by uvicorn with one worker process per core.
No batching, no autoscaling, no hot swap: it is the practical baseline for
"how fast can this model answer HTTP on this machine".

    MLP_PEER_MODEL=~/mlp/registry/mlp/$(cat ~/mlp/registry/mlp/latest) python benchmarks/peer_fastapi.py --port 8100

``bench_serve.py`` starts and stops it itself.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from mlp.config import ServeConfig
from serve.inputs import InputError
from serve.predictor import load_predictor
from serve.web import error_response, json_response, parse_request, prediction_body

MODEL_ENV = "MLP_PEER_MODEL"

app = FastAPI(title="MLP inference (plain FastAPI peer)")
_limits = ServeConfig()
_predictor = load_predictor(os.environ[MODEL_ENV]) if MODEL_ENV in os.environ else None
torch.set_num_threads(1)  # one worker per core already uses every core


@app.post("/predict")
async def predict(request: Request) -> Response:
    assert _predictor is not None, f"set {MODEL_ENV} to a model folder"
    try:
        parsed = await parse_request(request, _limits, _predictor.info.dataset)
    except InputError as err:
        return error_response(err)
    predictions = _predictor.predict(parsed.x)
    return json_response(prediction_body(predictions, parsed.single, _predictor.version))


@app.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=f"model folder (registry version or checkpoint); or ${MODEL_ENV}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="default: one per core")
    args = parser.parse_args()
    if args.model:
        os.environ[MODEL_ENV] = os.path.abspath(os.path.expanduser(args.model))
    if MODEL_ENV not in os.environ:
        parser.error(f"--model or ${MODEL_ENV} is required")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # workers import "peer_fastapi:app"
    uvicorn.run("peer_fastapi:app", host=args.host, port=args.port, workers=args.workers,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
