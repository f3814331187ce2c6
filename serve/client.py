"""``python -m serve.client`` (console script ``mlp-client``): talk to a running endpoint.

    python -m serve.client image digit.png          # upload a PNG/JPEG, print the prediction
    python -m serve.client sample --index 7         # one test-set image as JSON, with its true label
    python -m serve.client batch --count 16         # a batch of test-set images
    python -m serve.client score                    # accuracy over the whole test set
    python -m serve.client replay                   # labelled test set through /predict + /feedback until the gate decides
    python -m serve.client rollout                  # the running canary or shadow and its live figures
    python -m serve.client model | health | reload

The test set is the served model's own dataset (asked from ``GET /model``)
unless ``--dataset`` says otherwise. Plain HTTP with httpx: no Ray needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import httpx

from mlp.config import DATASETS, DataConfig
from serve.endpoint import EndpointError, check_answer, predict_image, predict_json, replay, replay_line, score


def _test_set(client: httpx.Client, dataset: Optional[str], data_dir: Optional[str]):
    from mlp.data import load_test

    dataset = dataset or check_answer(client.get("/model"))["dataset"]
    return load_test(DataConfig(dataset=dataset, dir=data_dir))


def _line(pred: dict[str, Any], truth: Optional[str] = None) -> str:
    confidence = max(pred["probabilities"])
    text = f"{pred['label']}  {pred['class_name']:<12} p={confidence:.3f}"
    return text + (f"  (true: {truth})" if truth is not None else "")


class NoDecision(RuntimeError):
    """``replay`` sent its whole budget and the gate did not decide."""


def _replay_progress(totals: dict[str, Any]) -> None:
    if totals["requests"] % 20 == 0:
        print(replay_line(totals), flush=True)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serve.client", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="endpoint base URL")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="upload PNG/JPEG files")
    image.add_argument("files", nargs="+", type=Path)
    image.add_argument("--invert", choices=("auto", "true", "false"), default="auto")
    for name, help_text in (("sample", "one test-set image"), ("batch", "a batch of test-set images"),
                            ("score", "accuracy on the whole test set"),
                            ("replay", "send the labelled test set through /predict and /feedback until the "
                                       "rollout gate decides (exit 3 if it has not)")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--dataset", choices=DATASETS, help="default: the served model's dataset")
        cmd.add_argument("--data-dir", help="folder with the IDX files (see mlp.data)")
        if name == "sample":
            cmd.add_argument("--index", type=int, default=0)
        elif name == "batch":
            cmd.add_argument("--start", type=int, default=0)
            cmd.add_argument("--count", type=int, default=16)
        elif name == "replay":
            cmd.add_argument("--limit", type=int, default=20_000, help="stop after N labelled instances")
            cmd.add_argument("--batch-size", type=int, default=10, help="instances per request")
        else:
            cmd.add_argument("--limit", type=int, default=0, help="score only the first N images (0 = all)")
            cmd.add_argument("--batch-size", type=int, default=500)
            cmd.add_argument("--concurrency", type=int, default=2)
    for name, help_text in (("model", "what is being served"), ("health", "liveness and readiness"),
                            ("reload", "re-read the registry now"),
                            ("rollout", "the running canary or shadow, live figures per version, last decision")):
        sub.add_parser(name, help=help_text)
    return parser


def run(args: argparse.Namespace, client: httpx.Client) -> None:
    if args.command == "image":
        for path in args.files:
            print(f"{path}: {_line(predict_image(client, path, args.invert))}")
    elif args.command in ("sample", "batch"):
        x, y = _test_set(client, args.dataset, args.data_dir)
        first, count = (args.index, 1) if args.command == "sample" else (args.start, args.count)
        body = predict_json(client, {"instances": x[first:first + count].tolist()})
        names = check_answer(client.get("/model"))["class_names"]
        print(f"model {body['version']}")
        for i, pred in enumerate(body["predictions"], start=first):
            print(f"#{i}: {_line(pred, names[int(y[i])])}")
    elif args.command == "score":
        x, y = _test_set(client, args.dataset, args.data_dir)
        if args.limit:
            x, y = x[:args.limit], y[:args.limit]
        result = score(client, x, y, args.batch_size, args.concurrency)
        print(f"accuracy {result['accuracy']:.4f} on {result['images']} images "
              f"({result['images_per_s']:,.0f} images/s)")
    elif args.command == "replay":
        x, y = _test_set(client, args.dataset, args.data_dir)
        result = replay(client, x.reshape(len(x), -1), y, args.batch_size, args.limit, _replay_progress)
        decision = result["decision"]
        if decision is None:
            raise NoDecision(f"no decision after {result['sent']} labelled instances "
                             f"({result['requests']} requests: {result['by_version']}); see GET /rollout")
        print(f"{decision['action']} {decision['candidate']} after {result['sent']} labelled instances "
              f"({result['requests']} requests: {result['by_version']}): {decision['reason']}")
    elif args.command == "rollout":
        print(json.dumps(check_answer(client.get("/rollout")), indent=2))
    elif args.command == "health":
        print(json.dumps({"healthz": check_answer(client.get("/healthz")), "readyz": check_answer(client.get("/readyz"))}))
    elif args.command == "model":
        print(json.dumps(check_answer(client.get("/model")), indent=2))
    else:
        print(json.dumps(check_answer(client.post("/admin/reload"))))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    with httpx.Client(base_url=args.url, timeout=args.timeout) as client:
        try:
            run(args, client)
        except NoDecision as err:
            print(f"python -m serve.client: {err}", file=sys.stderr)
            return 3
        except (EndpointError, httpx.HTTPError, OSError) as err:
            print(f"python -m serve.client: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
