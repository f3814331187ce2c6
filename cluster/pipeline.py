"""``mlp-pipeline``: the whole life cycle in one command: sweep (or train), promote, serve, verify.

1. ``tune.sweep.run_sweep`` searches the space and promotes the winner into the
   registry (``--skip-sweep``: one ``mlp.train`` run with ``--promote`` instead);
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
runs; this module only chains them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Optional, Sequence

from mlp.cli import console_script, make_parser, parse_config, run_command
from mlp.config import Config
from mlp.storage import Location, join

log = logging.getLogger("mlp.pipeline")
VERIFICATION_FILE = "verification.json"


class VerificationFailed(RuntimeError):
    """The endpoint did not serve what was promoted; the message names the mismatch and the rollback."""


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


def resolved(cfg: Config, skip_sweep: bool) -> Config:
    """The config with the run name the sweep or training run will use, so the report lands beside it."""
    from mlp.distributed import with_run_name

    return with_run_name(cfg, prefix="" if skip_sweep else "sweep-")


def roll_back(cfg: Config, url: str, failed: str) -> str:
    """Move ``latest`` back to the version before ``failed`` and wait until the endpoint serves it.

    Returns a sentence for the report. With no earlier version the application
    is deleted instead: an endpoint that serves a model nobody can reproduce is worse than none.
    """
    from ray import serve

    from cluster.verify import wait_until_serving
    from mlp import registry
    from serve.__main__ import APP_NAME

    try:
        was, now = registry.rollback(cfg.registry.path, cfg.registry.model_name)
    except (FileNotFoundError, ValueError) as err:
        serve.delete(APP_NAME)
        return f"no earlier version to roll back to ({err}); the endpoint was shut down"
    if wait_until_serving(url, now):
        return f"latest moved back from {was} to {now}; the endpoint serves {now} again"
    return f"latest moved back from {was} to {now}, but the endpoint did not show {now} within 30 s"


def verify_and_report(cfg: Config, args: Any, stages: Any, summary: dict[str, Any], url: Optional[str]) -> int:
    """Stages 3 and 4: verify the live endpoint (rolling back on failure), then write the report."""
    from cluster.report import write_pipeline_report
    from cluster.verify import verify_endpoint
    from serve.predictor import ModelSource

    folder = Location.of(join(cfg.run.storage_path, str(cfg.run.name)))
    verification, latencies, rollback, code = None, [], None, 0
    if url is not None:
        with stages.run("verify") as stage:
            result = verify_endpoint(url, ModelSource.from_config(cfg), cfg.data.dir,
                                     batch_size=args.verify_batch_size)
            verification, latencies = result.to_dict(), result.latencies_ms
            print(f"served accuracy {result.served_accuracy:.4f}, offline {result.offline_accuracy:.4f} on "
                  f"{result.images} test images; {len(result.mismatches)} predictions differ; "
                  f"p50 {result.percentile_ms(50):.1f} ms, p99 {result.percentile_ms(99):.1f} ms per request "
                  f"of {args.verify_batch_size}", flush=True)
            if not result.ok:
                stage.outcome = "FAILED"
                rollback = roll_back(cfg, url, result.version)
                print(f"{result.problem()}\n{rollback}", file=sys.stderr, flush=True)
                code = 1
        (folder / VERIFICATION_FILE).write_text(json.dumps({**verification, "rollback": rollback}, indent=2))
    with stages.run("report"):
        report = write_pipeline_report(folder, cfg.to_dict(), stages, summary, not args.skip_sweep, verification,
                                       latencies, args.verify_batch_size, url, rollback)
    print(f"pipeline report: {report}", flush=True)
    if code:
        print(f"mlp-pipeline: error: verification failed: {verification['problem']}; {rollback}", file=sys.stderr)
    return code


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
    cfg, args = parse_config(parser, argv)
    if args.verify_batch_size < 1:
        parser.error(f"--verify-batch-size must be >= 1, got {args.verify_batch_size}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from cluster.report import StageLog

    cfg = resolved(cfg, args.skip_sweep)
    names = ["train" if args.skip_sweep else "sweep"] + ([] if args.no_serve else ["deploy", "verify"]) + ["report"]
    stages = StageLog(names)
    summaries: list[dict[str, Any]] = []

    def first_stage() -> None:
        with stages.run(names[0]):
            summaries.append(train_and_promote(cfg, args.skip_sweep))

    code = run_command(parser.prog, first_stage)
    if code:
        return code
    if args.no_serve:
        return verify_and_report(cfg, args, stages, summaries[0], None)
    from serve.__main__ import deploy_command, serve_until_interrupted
    from serve.predictor import ModelSource

    ModelSource.from_config(cfg).resolve()  # the promotion above must have produced a servable model
    with stages.run("deploy") as stage:
        code, url = deploy_command(parser.prog, cfg)
        stage.outcome = "failed" if code else "ok"
    if code:
        return code
    print(f"serving the promoted model at {url}: curl -s {url}/model ; POST {url}/predict", flush=True)
    code = verify_and_report(cfg, args, stages, summaries[0], url)
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
