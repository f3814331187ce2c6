"""The pipeline's stages as functions: train or sweep and promote, verify the live endpoint, roll back, report.

``cluster.pipeline`` (``mlp pipeline``) chains them; each stage is the same library
code its own command runs (``mlp.distributed.run``, ``tune.tuner``, ``serve.deploy``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Optional

from mlp.config import Config
from mlp.registry.storage import Location, join

log = logging.getLogger("mlp.pipeline")
VERIFICATION_FILE = "verification.json"


class VerificationFailed(RuntimeError):
    """The endpoint did not serve what was promoted; the message names the mismatch and the rollback."""


def train_and_promote(cfg: Config, skip_sweep: bool) -> dict[str, Any]:
    """Stage 1: a sweep (default) or a single training run; either way the result lands in the registry."""
    if skip_sweep:
        from mlp.distributed.run import print_summary, run_training

        summary = run_training(cfg, promote=True)
        print_summary(summary)
        return summary
    from tune.tuner import check_space, run_sweep

    check_space(cfg)
    return run_sweep(cfg, promote=True)


def running_as_job() -> bool:
    """True under ``ray job submit`` or with an explicit cluster address: the cluster outlives us."""
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"))


def resolved(cfg: Config, skip_sweep: bool) -> Config:
    """The config with the run name the sweep or training run will use, so the report lands beside it."""
    from mlp.distributed.trainer import with_run_name

    return with_run_name(cfg, prefix="" if skip_sweep else "sweep-")


def roll_back(cfg: Config, url: str, failed: str) -> str:
    """Move ``latest`` back to the version before ``failed`` and wait until the endpoint serves it.

    Returns a sentence for the report. With no earlier version the application
    is deleted instead: an endpoint that serves a model nobody can reproduce is worse than none.
    """
    from ray import serve

    from cluster.verify import wait_until_serving
    from mlp import registry
    from serve.deploy import APP_NAME

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
    from cluster.pipeline_report import write_pipeline_report
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
