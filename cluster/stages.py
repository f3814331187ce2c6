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


def train_and_promote(cfg: Config, skip_sweep: bool, move_latest: bool = True) -> dict[str, Any]:
    """Stage 1: a sweep (default) or a single training run; either way the result lands in the registry
    (``move_latest=False``: as a new version that ``latest`` does not point at yet, for the gate)."""
    if skip_sweep:
        from mlp.distributed.run import print_summary, run_training

        summary = run_training(cfg, promote=True, move_latest=move_latest)
        print_summary(summary)
        return summary
    from tune.tuner import check_space, run_sweep

    check_space(cfg)
    return run_sweep(cfg, promote=True, move_latest=move_latest)


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


def served_version(cfg: Config) -> Optional[str]:
    """The version ``latest`` names before this run promotes anything (None: an empty or unreadable registry)."""
    from mlp import registry

    try:
        return registry.read_latest(cfg.registry.path, cfg.registry.model_name)
    except (OSError, ValueError):
        return None


def newest_version(cfg: Config) -> str:
    """The version this run just added (``train_and_promote`` with ``move_latest=False``)."""
    from mlp import registry

    return f"v{max(registry.list_versions(cfg.registry.path, cfg.registry.model_name))}"


def gated_rollout(cfg: Config, args: Any, url: str, candidate: str) -> dict[str, Any]:
    """Put ``candidate`` beside the served version (canary or shadow), replay the labelled test set through
    the live endpoint until the gate decides, and wait until the endpoint serves the outcome.

    Returns the gate's decision (``serve.ledger``), or ``{"action": "undecided", ...}`` when the replay
    budget ran out first (the rollout is then ended: nothing changes).
    """
    import httpx

    from cluster.verify import wait_until_serving
    from mlp import registry
    from mlp.data import load_test
    from mlp.registry.rollouts import end_rollout, start_rollout
    from serve.endpoint import replay, replay_line

    reg = cfg.registry
    rollout = start_rollout(reg.path, reg.model_name, candidate, args.rollout, args.rollout_percent,
                            args.rollout_min_labelled, args.rollout_tolerance, origin="pipeline")
    served = registry.read_latest(reg.path, reg.model_name)
    share = f"{rollout.percent:g}% canary" if rollout.mode == "canary" else "shadow"
    print(f"rollout {rollout.id}: {candidate} as a {share} beside {served}; replaying the labelled test set "
          f"until the gate decides ({rollout.min_labelled} labelled instances per version, tolerance "
          f"{rollout.tolerance:g})", flush=True)
    x, y = load_test(cfg.data)

    def progress(totals: dict[str, Any]) -> None:
        if totals["requests"] % 50 == 0:
            print(replay_line(totals), file=sys.stderr, flush=True)

    with httpx.Client(base_url=url, timeout=60) as client:
        result = replay(client, x.reshape(len(x), -1), y, args.verify_batch_size, args.rollout_limit, progress)
    decision = result["decision"]
    if decision is None:
        end_rollout(reg.path, reg.model_name, expected_id=rollout.id)
        decision = {"action": "undecided", "candidate": candidate, "current": served,
                    "reason": f"no decision after {result['sent']} labelled instances (--rollout-limit)"}
    decision = {**decision, "replayed": result["sent"]}
    now = registry.read_latest(reg.path, reg.model_name)
    if now is not None and not wait_until_serving(url, now):
        decision["note"] = f"the endpoint did not show {now} within 30 s"
    print(f"rollout: {decision['action']} {candidate} after {result['sent']} labelled instances: "
          f"{decision['reason']}", flush=True)
    return decision


def verify_and_report(cfg: Config, args: Any, stages: Any, summary: dict[str, Any], url: Optional[str],
                      rollout: Optional[dict[str, Any]] = None) -> int:
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
        (folder / VERIFICATION_FILE).write_text(json.dumps({**verification, "rollback": rollback,
                                                            "rollout": rollout}, indent=2))
    with stages.run("report"):
        report = write_pipeline_report(folder, cfg.to_dict(), stages, summary, not args.skip_sweep, verification,
                                       latencies, args.verify_batch_size, url, rollback, rollout)
    print(f"pipeline report: {report}", flush=True)
    if code:
        print(f"mlp-pipeline: error: verification failed: {verification['problem']}; {rollback}", file=sys.stderr)
    elif rollout is not None and rollout["action"] != "promote":
        print(f"mlp-pipeline: error: the gate did not promote {rollout['candidate']} ({rollout['action']}): "
              f"{rollout['reason']}; the endpoint serves {rollout['current']}", file=sys.stderr)
        code = 1
    return code
