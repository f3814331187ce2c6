"""The sweep's results as a ranked table: printed, saved as CSV and JSON, and as ``report.md``.

One row per trial, best validation accuracy first: the sampled values, best
val accuracy, epochs run, whether ASHA stopped it early, its seconds, and the
node it ran on (``node_id``; for a multi-worker trial, rank 0's node). The
per-epoch validation curves travel beside the rows for ``tune.plots``.
Reads Tune's ``ResultGrid`` once (``collect``); everything after works on plain dicts.
``report.md`` has the same form as a training run's (``mlp.reports.run_report``): the ranked
table, the two plots of ``tune.plots``, the winner and where it was promoted.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from mlp.reports.markdown import REPORT_MD, fmt, md_config, md_image, md_table
from mlp.registry.storage import Location
from tune.space import Dim

TABLE_CSV = "trials.csv"
TABLE_JSON = "trials.json"


def _curve(result: Any) -> list[tuple[int, float]]:
    """(epoch, val accuracy) per reported epoch; a resumed trial may repeat an epoch, keep the last."""
    frame = result.metrics_dataframe
    if frame is None or "epoch" not in frame or "val_accuracy" not in frame:
        return []
    points: dict[int, float] = {}
    for epoch, acc in zip(frame["epoch"], frame["val_accuracy"]):
        if epoch == epoch and acc == acc:  # skip NaN rows
            points[int(epoch)] = float(acc)
    return sorted(points.items())


def collect(results: Any, dims: list[Dim], max_epochs: int) -> list[dict[str, Any]]:
    """Rows for every trial of a ``ResultGrid``, ranked by best val accuracy (ties: fewer seconds)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        curve = _curve(result)
        epochs = max((e for e, _ in curve), default=int(metrics.get("epoch") or 0))
        best = max((a for _, a in curve), default=float("nan"))
        if result.error is not None:
            status = "error"
        elif epochs < max_epochs:
            status = "stopped"
        else:
            status = "finished"
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        row: dict[str, Any] = {"trial_id": trial_id}
        row.update({d.key: (result.config or {}).get(d.key) for d in dims})
        row.update({
            "best_val_accuracy": best, "final_val_accuracy": curve[-1][1] if curve else float("nan"),
            "epochs": epochs, "stopped_early": status == "stopped", "status": status,
            "seconds": float(metrics.get("time_total_s") or 0.0), "node_id": metrics.get("node_id"),
            "path": result.path,
            "curve": [a for _, a in curve],
        })
        rows.append(row)
    rows.sort(key=lambda r: (-(r["best_val_accuracy"] if not math.isnan(r["best_val_accuracy"]) else -1),
                             r["seconds"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _short(key: str) -> str:
    return {"model.hidden_sizes": "hidden", "optim.lr": "lr"}.get(key, key.split(".")[-1])


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]], dims: list[Dim]) -> str:
    """The ranked table as aligned text."""
    header = ["rank", "trial", *(_short(d.key) for d in dims), "best val acc", "epochs", "early stop", "seconds"]
    lines = [[str(r["rank"]), r["trial_id"], *(_fmt(r[d.key]) for d in dims),
              "-" if math.isnan(r["best_val_accuracy"]) else f"{r['best_val_accuracy']:.4f}",
              str(r["epochs"]), "error" if r["status"] == "error" else _fmt(r["stopped_early"]),
              f"{r['seconds']:.1f}"] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def save_table(rows: list[dict[str, Any]], dims: list[Dim], folder: Location) -> tuple[Location, Location]:
    """``trials.csv`` (no curves) and ``trials.json`` (with curves) in ``folder``, on any storage."""
    columns = ["rank", "trial_id", *(d.key for d in dims), "best_val_accuracy", "final_val_accuracy",
               "epochs", "stopped_early", "status", "seconds", "node_id", "path"]
    csv_path, json_path = folder / TABLE_CSV, folder / TABLE_JSON
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_path.write_text(out.getvalue())
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    json_path.write_text(json.dumps(clean, indent=2))
    return csv_path, json_path


def sweep_report(config: dict[str, Any], rows: list[dict[str, Any]], dims: list[Dim],
                 summary: dict[str, Any], plot_names: Sequence[str]) -> str:
    """The Markdown of a finished sweep's report; the plots are linked by file name (they sit beside it)."""
    promoted = summary.get("promoted") or {}
    tune_cfg = config.get("tune", {})
    lines = [
        f"# Sweep `{summary.get('sweep')}`",
        "",
        f"- **Trials:** {summary.get('trials')} ({summary.get('stopped_early')} stopped early by ASHA, "
        f"{summary.get('errors')} failed), {tune_cfg.get('search')} search, up to "
        f"{config.get('train', {}).get('epochs')} epochs each on {config.get('data', {}).get('dataset')}",
        f"- **Wall time:** {fmt(summary.get('wall_seconds'))} s",
    ]
    if promoted:
        lines.append(f"- **Winner:** trial `{promoted.get('trial_id')}`: best val accuracy "
                     f"{fmt(promoted.get('best_val_accuracy'))}, test accuracy {fmt(promoted.get('test_accuracy'))}; "
                     f"promoted to `{promoted.get('registry_dir')}`")
    elif rows:
        lines.append(f"- **Best trial:** `{rows[0]['trial_id']}` (not promoted)")
    lines += ["", "## Trials", "",
              md_table(["rank", "trial", *(_short(d.key) for d in dims), "best val acc", "epochs", "early stop",
                        "seconds", "node"],
                       [[r["rank"], r["trial_id"], *(r[d.key] for d in dims), r["best_val_accuracy"], r["epochs"],
                         "error" if r["status"] == "error" else r["stopped_early"], r["seconds"],
                         (r.get("node_id") or "-")[:12]] for r in rows]),
              "", "## Plots", ""]
    lines += [md_image(name, name.removesuffix(".png").replace("_", " ")) + "\n" for name in plot_names]
    lines += ["## Search space", "", md_table(["key", "spec"], sorted(tune_cfg.get("space", {}).items())),
              "", "## Config", "", md_config(config), ""]
    return "\n".join(lines)


def write_sweep_report(folder: Location, config: dict[str, Any], rows: list[dict[str, Any]], dims: list[Dim],
                       summary: dict[str, Any], plots: Sequence[Location]) -> Location:
    """``report.md`` in the sweep's folder, beside its table and plots; returns its location."""
    report = folder / REPORT_MD
    report.write_text(sweep_report(config, rows, dims, summary, [p.name for p in plots]))
    return report
