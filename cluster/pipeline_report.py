"""The pipeline's report: ``pipeline_report.md`` with its PNGs, in the sweep's (or run's) folder.

It sits beside what the sweep or training run already wrote there (its own
``report.md``, the sweep plot), links those plots by file name, and adds two
of its own: the winner's learning curves and the latency histogram of the
verification pass. Same Markdown helpers as every other report (``mlp.reports.run_report``).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from mlp.reports.markdown import fmt, md_config, md_image, md_table, plot_learning_curves, pyplot, save_figure
from mlp.registry.storage import Location
from tune.plots import SCATTER_PNG

REPORT_MD = "pipeline_report.md"
LATENCY_PNG = "verify_latency.png"
WINNER_CURVES_PNG = "winner_learning_curves.png"


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    outcome: str = "not run"


@dataclass
class StageLog:
    """The pipeline's stages in order: one progress line as each starts and ends, and their times."""

    names: list[str]
    stages: list[Stage] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.stages = [Stage(name) for name in self.names]

    @contextmanager
    def run(self, name: str) -> Iterator[Stage]:
        stage = next(s for s in self.stages if s.name == name)
        number = self.names.index(name) + 1
        print(f"[pipeline {number}/{len(self.names)}] {name} ...", flush=True)
        began = time.perf_counter()
        stage.outcome = "running"  # the body may set its own verdict ("FAILED", "failed")
        try:
            yield stage
            if stage.outcome == "running":
                stage.outcome = "ok"
        except BaseException:
            stage.outcome = "failed"
            raise
        finally:
            stage.seconds = time.perf_counter() - began
            print(f"[pipeline {number}/{len(self.names)}] {name} {stage.outcome} in {stage.seconds:.1f}s "
                  f"(total {time.perf_counter() - self.started:.1f}s)", flush=True)


def winner_history(folder: Location, summary: dict[str, Any], swept: bool) -> list[dict[str, Any]]:
    """Per-epoch metrics of the model the pipeline promoted: the winner trial's, or the training run's."""
    if not swept:
        from mlp.distributed.runfiles import METRICS_FILE

        path = folder / METRICS_FILE
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    best = summary.get("best") or {}
    if not best.get("path"):
        return []
    results = folder / best["path"].rstrip("/").rsplit("/", 1)[-1] / "result.json"  # Tune's per-report rows
    if not results.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in results.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if row.get("epoch") is not None:
            by_epoch[int(row["epoch"])] = row  # a retried trial repeats an epoch: keep the last
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_latency(latencies_ms: list[float], path: Location, images_per_request: int) -> Location:
    """Histogram of the verification requests' latencies with p50 and p99 marked."""
    fig, ax = pyplot().subplots(figsize=(7, 4))
    ax.hist(latencies_ms, bins=min(50, max(5, len(latencies_ms) // 4)), color="C0", alpha=0.8)
    for q, style in ((50, "--"), (99, ":")):
        value = float(np.percentile(latencies_ms, q))
        ax.axvline(value, color="C3", linestyle=style, label=f"p{q} {value:.1f} ms")
    ax.set_xlabel(f"latency per request of {images_per_request} images (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"Verification pass: {len(latencies_ms)} requests")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _rollout_lines(rollout: dict[str, Any]) -> str:
    """The gate's decision as a table: per version, labelled instances, live accuracy, error rate, latency."""
    figures = rollout.get("figures") or {}
    rows = [[role, rollout.get(role, "-"), f.get("labelled"), f.get("accuracy"), f.get("error_rate"),
             f.get("latency_p50_ms")] for role, f in ((r, figures.get(r) or {}) for r in ("current", "candidate"))]
    head = (f"**{rollout['action']}** of `{rollout.get('candidate')}` after {rollout.get('replayed', '-')} "
            f"labelled instances replayed: {rollout.get('reason', '')}")
    table = md_table(["role", "version", "labelled", "live accuracy", "error rate", "p50 ms"], rows)
    agreement = (figures.get("agreement") or {}).get("rate")
    return head + "\n\n" + table + (f"\n\nShadow agreement: {agreement}" if agreement is not None else "")


def write_pipeline_report(folder: Location, config: dict[str, Any], stages: StageLog, summary: dict[str, Any],
                          swept: bool, verification: Optional[dict[str, Any]], latencies_ms: list[float],
                          batch_size: int, url: Optional[str], rollback: Optional[str],
                          rollout: Optional[dict[str, Any]] = None) -> Location:
    """Write ``pipeline_report.md`` and its PNGs into ``folder``; returns the report's location."""
    lines = [f"# Pipeline `{config['run']['name']}`", "",
             md_table(["stage", "seconds", "outcome"],
                      [[s.name, s.seconds, "this file" if s.outcome == "running" else s.outcome]
                       for s in stages.stages]),
             "", f"Total: {fmt(sum(s.seconds for s in stages.stages))} s." + (f" Endpoint: {url}" if url else ""), ""]
    promoted = summary.get("promoted")
    version = promoted.get("version") if isinstance(promoted, dict) else (str(promoted) if promoted else None)
    if rollout is not None:
        lines += ["## Rollout", "", _rollout_lines(rollout), ""]
    lines += ["## Verification", ""]
    if verification is None:
        lines.append("not run")
    else:
        lines += [md_table(["served version", "images", "served accuracy", "offline accuracy",
                            "differing predictions", "max probability difference", "p50 ms", "p99 ms", "verdict"],
                           [[verification["version"], verification["images"], verification["served_accuracy"],
                             verification["offline_accuracy"], verification["mismatches"],
                             verification["max_probability_diff"], verification["p50_ms"], verification["p99_ms"],
                             "pass" if verification["ok"] else "FAIL"]]), ""]
        if not verification["ok"]:
            lines += [f"**Failed:** {verification['problem']}", ""]
        if rollback:
            lines += [f"**Rollback:** {rollback}", ""]
        if latencies_ms:
            plot_latency(latencies_ms, folder / LATENCY_PNG, batch_size)
            lines += [md_image(LATENCY_PNG, "latency histogram of the verification pass"), ""]
    history = winner_history(folder, summary, swept)
    lines += ["## The promoted model", "", f"Registry version: `{version or '-'}`", ""]
    if isinstance(promoted, dict):  # a sweep's winner
        lines += [f"Trial `{promoted.get('trial_id')}`: test accuracy {fmt(promoted.get('test_accuracy'))}, "
                  f"best validation accuracy {fmt(promoted.get('best_val_accuracy'))}, "
                  f"hyperparameters `{json.dumps(promoted.get('hyperparameters'))}`", ""]
    elif summary.get("test_accuracy") is not None:  # a single training run
        lines += [f"Test accuracy {fmt(summary['test_accuracy'])} after {summary.get('epochs')} epochs", ""]
    if history:
        plot_learning_curves(history, folder / WINNER_CURVES_PNG,
                             title="winner's learning curves" if swept else "learning curves")
        lines += [md_image(WINNER_CURVES_PNG, "the promoted model's learning curves"), ""]
    if swept and (folder / SCATTER_PNG).is_file():
        lines += ["## Sweep", "", md_image(SCATTER_PNG, "validation accuracy by learning rate"), "",
                  "The full sweep report (table, curves of every trial): [report.md](report.md)", ""]
    elif not swept:
        lines += ["The training run's report: [report.md](report.md)", ""]
    lines += ["## Config", "", md_config(config), ""]
    report = folder / REPORT_MD
    report.write_text("\n".join(lines))
    return report
