"""``mlp pipeline`` (also ``mlp-pipeline``): the whole life cycle in one command: sweep (or train), promote, serve, verify.

1. ``tune.tuner.run_sweep`` searches the space and promotes the winner into the
   registry (``--skip-sweep``: one ``mlp.distributed.run`` run with ``--promote`` instead);
2. ``serve`` deploys ``latest`` from that registry;
3. ``cluster.verify`` scores the live endpoint over HTTP on the whole test set
   and checks that every served prediction equals the promoted version's
   offline prediction. On a mismatch ``latest`` is rolled back to the previous
   version (the endpoint follows it within a second) and the command exits 1,
   naming the mismatch;
4. ``pipeline_report.md`` (stage times, served beside offline accuracy, a
   latency histogram, the winner's learning curves, the sweep plot) is written
   into the sweep's folder and its path printed.

Locally it then serves until Ctrl-C; ``--stop-after-verify`` ends after the
report (scripts, CI). Under ``ray job submit`` (or with ``--detach``) it leaves
the Serve application running on the cluster and exits, so the job finishes
while the endpoint stays up. Each stage is the same code its own command
runs; this module only chains them (``cluster.stages``).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

from mlp.console import console_script, run_command
from mlp.options import make_parser, parse_config


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser(
        "mlp-pipeline",
        "Sweep the MLP with Ray Tune, promote the best model, serve it with Ray Serve, and verify over HTTP\n"
        "that the endpoint's predictions on the whole test set equal the promoted model's (rolling back\n"
        "`latest` if not). Writes pipeline_report.md into the sweep's folder.\n"
        "Every option of mlp-sweep and mlp-serve applies (one config tree, one --config file).",
        sections=("tune", "model", "optim", "data", "train", "scaling", "run", "registry", "track", "serve"),
    )
    parser.add_argument("--skip-sweep", action="store_true",
                        help="train once with the given config instead of sweeping, then promote and serve")
    parser.add_argument("--no-serve", action="store_true", help="stop after promotion (and the report)")
    parser.add_argument("--stop-after-verify", action="store_true",
                        help="exit after verification and the report instead of serving until Ctrl-C "
                             "(for scripts and CI; exit 1 if verification failed)")
    parser.add_argument("--detach", action="store_true",
                        help="leave the endpoint running on the cluster and exit after the report "
                             "(default under ray job submit)")
    parser.add_argument("--verify-batch-size", type=int, default=64, metavar="N",
                        help="test images per verification request (default 64)")
    gate = parser.add_argument_group(
        "gated rollout", "In place of a direct swap: when a version is already served, the new one goes live "
        "beside it as a canary or a shadow, the labelled test set is replayed through the live endpoint "
        "(POST /predict + /feedback), and the gate promotes it or rolls it back (docs/serve.md). A rollback "
        "exits 1.")
    gate.add_argument("--rollout", choices=("canary", "shadow"), help="gate the new version instead of swapping")
    gate.add_argument("--rollout-percent", type=float, default=10.0, metavar="N",
                      help="canary: share of requests the new version answers (default 10)")
    gate.add_argument("--rollout-min-labelled", type=int, default=200, metavar="N",
                      help="labelled instances each version needs before the gate decides (default 200)")
    gate.add_argument("--rollout-tolerance", type=float, default=0.02, metavar="T",
                      help="accuracy the new version may lose, and error rate it may add (default 0.02)")
    gate.add_argument("--rollout-limit", type=int, default=50_000, metavar="N",
                      help="labelled instances to replay at most before giving up undecided (default 50000)")
    cfg, args = parse_config(parser, argv)
    if args.verify_batch_size < 1:
        parser.error(f"--verify-batch-size must be >= 1, got {args.verify_batch_size}")
    if args.rollout and args.no_serve:
        parser.error("--rollout needs the endpoint: drop --no-serve")
    try:
        from mlp.registry.rollouts import Rollout

        Rollout(candidate="v1", mode=args.rollout or "canary", percent=args.rollout_percent,
                min_labelled=args.rollout_min_labelled, tolerance=args.rollout_tolerance)
    except ValueError as err:
        parser.error(str(err).replace("--", "--rollout-"))  # the gate's own option names, as this command spells them
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from cluster.stages import (gated_rollout, newest_version, resolved, running_as_job, served_version, train_and_promote,
                                verify_and_report)
    from cluster.pipeline_report import StageLog

    cfg = resolved(cfg, args.skip_sweep)
    served = served_version(cfg) if args.rollout else None
    gated = args.rollout is not None and served is not None
    names = (["train" if args.skip_sweep else "sweep"] + ([] if args.no_serve else ["deploy"])
             + (["rollout"] if gated else []) + ([] if args.no_serve else ["verify"]) + ["report"])
    stages = StageLog(names)
    summaries: list[dict[str, Any]] = []

    def first_stage() -> None:
        with stages.run(names[0]):
            summaries.append(train_and_promote(cfg, args.skip_sweep, move_latest=not gated))

    code = run_command(parser.prog, first_stage)
    if code:
        return code
    candidate = newest_version(cfg) if gated else None
    if args.rollout and not gated:
        print(f"no version was served before (the registry's latest is unset): a direct swap, no {args.rollout}",
              flush=True)
    if args.no_serve:
        return verify_and_report(cfg, args, stages, summaries[0], None)
    from serve.deploy import deploy_command, serve_until_interrupted
    from serve.predictor import ModelSource

    ModelSource.from_config(cfg).resolve()  # the promotion above must have produced a servable model
    with stages.run("deploy") as stage:
        code, url = deploy_command(parser.prog, cfg)
        stage.outcome = "failed" if code else "ok"
    if code:
        return code
    print(f"serving the promoted model at {url}: curl -s {url}/model ; POST {url}/predict", flush=True)
    decision = None
    if candidate is not None:
        with stages.run("rollout") as stage:
            decision = gated_rollout(cfg, args, url, candidate)
            stage.outcome = decision["action"]
    code = verify_and_report(cfg, args, stages, summaries[0], url, decision)
    if code or args.stop_after_verify:
        return code
    if args.detach or running_as_job():
        print("the endpoint keeps running on the cluster; `serve shutdown` stops it")
        return 0
    serve_until_interrupted()
    return 0


cli = console_script(main)


if __name__ == "__main__":
    cli()
