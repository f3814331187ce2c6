"""The report of one training run, and the advice it may end with.

Every training run ends with two files in its run folder::

    learning_curves.png   loss and accuracy per epoch, train and validation
    report.md             config, where each rank ran, time to target accuracy,
                          throughput, test accuracy and the curves

The sweep and the pipeline write the same kind of report from the same helpers
(``mlp.reports.markdown``), so all three read alike.
"""

from __future__ import annotations

from typing import Any, Optional

from mlp.registry.storage import Location
from mlp.reports.markdown import (CURVES_PNG, REPORT_MD, fmt, md_config, md_image, md_table,
                                  plot_learning_curves)


def throughput(history: list[dict[str, Any]]) -> dict[str, Optional[float]]:
    """Samples per second over the run (total samples / training seconds) and the slowest and fastest epoch."""
    rates = [h["samples_per_s"] for h in history if h.get("samples_per_s")]
    seconds = sum(h.get("epoch_s") or 0.0 for h in history)
    samples = sum((h.get("samples_per_s") or 0.0) * (h.get("epoch_s") or 0.0) for h in history)
    return {"mean": samples / seconds if seconds else None,
            "min": min(rates) if rates else None, "max": max(rates) if rates else None}


EXCHANGE_BOUND = 0.5  # share of the epoch spent exchanging gradients above which a run gives advice
LARGER_BATCH = 8  # how many times larger a global batch the advice proposes


def exchange_advice(history: list[dict[str, Any]], workers: int, batch_size: int, lr: float) -> Optional[str]:
    """Advice when exchanging gradients took most of each epoch, with the run's own numbers; else None.

    Why: with a small model each step computes quickly, so adding workers can
    make training slower, not faster (DDP over gloo between two processes against
    a single process: BENCHMARKS.md). The epochs' ``exchange_s``
    (seconds in the gradient exchange, waiting for the slowest rank included)
    says whether that happened here. The first epoch is left out when there
    are more (it includes warm-up).
    """
    epochs = [h for h in (history[1:] if len(history) > 1 else history)
              if h.get("exchange_s") is not None and h.get("epoch_s")]
    if workers < 2 or not epochs:
        return None
    exchange = sum(h["exchange_s"] for h in epochs) / len(epochs)
    epoch = sum(h["epoch_s"] for h in epochs) / len(epochs)
    if exchange / epoch < EXCHANGE_BOUND:
        return None
    bigger = batch_size * LARGER_BATCH
    return (f"the {workers} workers spent {exchange / epoch:.0%} of each epoch exchanging gradients "
            f"({exchange:.2f} s of {epoch:.2f} s): each step computes too little for the exchange to pay off. "
            f"Faster: --scaling.num_workers 1 (no exchange), or a global batch {LARGER_BATCH}x larger with the "
            f"learning rate scaled alike, --train.batch_size {bigger} --optim.lr {lr * LARGER_BATCH:g} "
            f"({LARGER_BATCH}x fewer exchanges per epoch).")


def run_report(config: dict[str, Any], summary: dict[str, Any], history: list[dict[str, Any]],
               ranks: list[dict[str, Any]]) -> str:
    """The Markdown of one training run's report (``learning_curves.png`` is linked, not inlined)."""
    rate = throughput(history)
    target = summary.get("target_accuracy")
    reached = summary.get("time_to_target_s")
    if target is None:
        target_line = "no target set (`--train.target_accuracy 0.9` reports the training seconds to reach it)"
    elif reached is None:
        target_line = f"validation accuracy {target} **not reached** in {len(history)} epochs"
    else:
        epoch = next((h["epoch"] for h in history if (h.get("val_accuracy") or 0) >= target), None)
        target_line = f"validation accuracy {target} reached after **{reached:.1f} s** of training (epoch {epoch})"
    lines = [
        f"# Training run `{summary.get('run_name')}`",
        "",
        md_table(["test accuracy", "test loss", "best val accuracy", "epochs", "workers", "training s", "wall s"],
                 [[summary.get("test_accuracy"), summary.get("test_loss"), summary.get("best_val_accuracy"),
                   summary.get("epochs"), summary.get("num_workers"), summary.get("train_seconds"),
                   summary.get("wall_seconds")]]),
        "",
        f"- **Dataset:** {summary.get('dataset')}",
        f"- **Time to target:** {target_line}",
        f"- **Throughput:** {fmt(rate['mean'], 5)} samples/s over the run "
        f"(epochs from {fmt(rate['min'], 5)} to {fmt(rate['max'], 5)})",
        f"- **Checkpoint:** `{summary.get('checkpoint')}`",
    ]
    if summary.get("promoted"):
        lines.append(f"- **Promoted to:** `{summary['promoted']}`")
    if summary.get("advice"):
        lines.append(f"- **Advice:** {summary['advice']}")
    lines += ["", "## Learning curves", "", md_image(CURVES_PNG, "loss and accuracy per epoch"), "",
              "## Epochs", "",
              md_table(["epoch", "train loss", "train acc", "val loss", "val acc", "lr", "seconds",
                        "exchange s", "samples/s"],
                       [[h.get("epoch"), h.get("train_loss"), h.get("train_accuracy"), h.get("val_loss"),
                         h.get("val_accuracy"), h.get("lr"), h.get("epoch_s"), h.get("exchange_s"),
                         h.get("samples_per_s")]
                        for h in history]),
              "", "## Where each rank ran", ""]
    if ranks:
        lines.append(md_table(["rank", "node IP", "node id"],
                              [[r.get("rank"), r.get("node_ip"), r.get("node_id")] for r in ranks]))
    else:
        lines.append("not recorded")
    lines += ["", "## Config", "", md_config(config), ""]
    return "\n".join(lines)


def write_run_report(folder: Location, config: dict[str, Any], summary: dict[str, Any],
                     history: list[dict[str, Any]], ranks: list[dict[str, Any]]) -> Location:
    """``learning_curves.png`` and ``report.md`` in the run's folder; returns the report's location."""
    plot_learning_curves(history, folder / CURVES_PNG, title=f"run {summary.get('run_name')}")
    report = folder / REPORT_MD
    report.write_text(run_report(config, summary, history, ranks))
    return report
