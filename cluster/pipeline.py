"""``mlp-pipeline``: the whole life cycle in one command: sweep (or train), promote, serve.

1. ``tune.sweep.run_sweep`` searches the space and promotes the winner into the
   registry (``--skip-sweep``: one ``mlp.train`` run with ``--promote`` instead);
2. ``serve`` deploys ``latest`` from that registry and checks it answers.

Locally it then serves until Ctrl-C. Under ``ray job submit`` (or with
``--detach``) it leaves the Serve application running on the cluster and exits,
so the job finishes while the endpoint stays up. Each stage is the same code
its own command runs; this module only chains them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional, Sequence

from mlp.cli import make_parser, parse_config, run_command
from mlp.config import Config

log = logging.getLogger("mlp.pipeline")


def train_and_promote(cfg: Config, skip_sweep: bool) -> dict[str, Any]:
    """Stage 1: a sweep (default) or a single training run; either way the result lands in the registry."""
    if skip_sweep:
        from mlp.train import print_summary, run_training

        summary = run_training(cfg, promote=True)
        print_summary(summary)
        return summary
    from tune.sweep import check_space, run_sweep

    check_space(cfg)
    return run_sweep(cfg, promote=True)


def running_as_job() -> bool:
    """True under ``ray job submit`` or with an explicit cluster address: the cluster outlives us."""
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser(
        "mlp-pipeline",
        "Sweep the MLP with Ray Tune, promote the best model, and serve it with Ray Serve.\n"
        "Every option of mlp-sweep and mlp-serve applies (one config tree, one --config file).",
        sections=("tune", "model", "optim", "data", "train", "scaling", "run", "registry", "serve"),
    )
    parser.add_argument("--skip-sweep", action="store_true",
                        help="train once with the given config instead of sweeping, then promote and serve")
    parser.add_argument("--no-serve", action="store_true", help="stop after promotion")
    parser.add_argument("--detach", action="store_true",
                        help="leave the endpoint running on the cluster and exit (default under ray job submit)")
    cfg, args = parse_config(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    code = run_command(parser.prog, lambda: train_and_promote(cfg, args.skip_sweep))
    if code or args.no_serve:
        return code
    from serve.__main__ import deploy, serve_until_interrupted
    from serve.predictor import ModelSource

    ModelSource.from_config(cfg).resolve()  # the promotion above must have produced a servable model
    url = deploy(cfg)
    print(f"serving the promoted model at {url}: curl -s {url}/model ; POST {url}/predict", flush=True)
    if args.detach or running_as_job():
        print("the endpoint keeps running on the cluster; `serve shutdown` stops it")
        return 0
    serve_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main())
