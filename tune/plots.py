"""Two PNG plots of a finished sweep, drawn from the rows of ``tune.sweep_report``.

* ``val_accuracy_vs_lr.png``: best val accuracy against the learning rate (or the
  first numeric dim), one colour per hidden size (or the first other dim);
  hollow markers are trials ASHA stopped early.
* ``learning_curves.png``: val accuracy per epoch of every trial; early-stopped
  trials are grey, dashed and end in an x, so the pruning is visible.

Drawn with ``mlp.reports.run_report``'s file-only backend: sweeps run headless (``ray job submit``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from mlp.reports.markdown import pyplot, save_figure  # matplotlib with the file-only Agg backend
from mlp.registry.storage import Location
from tune.space import Dim

SCATTER_PNG = "val_accuracy_vs_lr.png"
CURVES_PNG = "learning_curves.png"


def _pick(dims: list[Dim], preferred: str, numeric: bool, exclude: Optional[str] = None) -> Optional[Dim]:
    """The preferred dim if searched, else the first numeric range (or the first other dim)."""
    pool = [d for d in dims if d.key != exclude]
    for dim in pool:
        if dim.key == preferred:
            return dim
    for dim in pool:
        if not numeric or dim.kind != "choice" or all(isinstance(v, (int, float)) for v in dim.values):
            return dim
    return None


def plot_accuracy_vs_lr(rows: list[dict[str, Any]], dims: list[Dim], path: Location) -> Location:
    x_dim = _pick(dims, "optim.lr", numeric=True)
    group_dim = _pick(dims, "model.hidden_sizes", numeric=False, exclude=x_dim.key if x_dim else None)
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[group_dim.key] if group_dim else "all", []).append(row)
    def order(item: tuple[Any, list]) -> tuple[int, Any]:  # numbers by value, then text
        return (0, item[0], "") if isinstance(item[0], (int, float)) else (1, 0, str(item[0]))

    for i, (group, members) in enumerate(sorted(groups.items(), key=order)):
        colour = f"C{i % 10}"
        label: Optional[str] = f"{group_dim.key.split('.')[-1]}={group}" if group_dim else "trials"
        for early in (False, True):
            pts = [(r[x_dim.key], r["best_val_accuracy"]) for r in members
                   if r["stopped_early"] == early and not math.isnan(r["best_val_accuracy"])] if x_dim else []
            if pts:
                ax.scatter(*zip(*pts), s=40, edgecolors=colour, facecolors="none" if early else colour, label=label)
                label = None  # one legend entry per group
    if x_dim is not None:
        if x_dim.log or x_dim.key == "optim.lr":
            ax.set_xscale("log")
        ax.set_xlabel(x_dim.key)
    ax.set_ylabel("best validation accuracy")
    ax.set_title("Validation accuracy by learning rate (hollow: stopped early by ASHA)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_learning_curves(rows: list[dict[str, Any]], dims: list[Dim], path: Location, max_epochs: int) -> Location:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for row in rows:
        curve = row["curve"]
        if not curve:
            continue
        epochs = list(range(1, len(curve) + 1))
        label = " ".join(f"{d.key.split('.')[-1]}={row[d.key]:.3g}" if isinstance(row[d.key], float)
                         else f"{d.key.split('.')[-1]}={row[d.key]}" for d in dims)
        if row["stopped_early"]:
            ax.plot(epochs, curve, color="0.6", linestyle="--", linewidth=1)
            ax.plot(epochs[-1], curve[-1], marker="x", color="0.4")
        else:
            ax.plot(epochs, curve, linewidth=1.8, label=f"#{row['rank']} {label}" if row["rank"] <= 8 else None)
    ax.set_xlim(0.8, max_epochs + 0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Learning curves (grey dashed: stopped early by ASHA)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_all(rows: list[dict[str, Any]], dims: list[Dim], folder: Location, max_epochs: int) -> list[Location]:
    return [plot_accuracy_vs_lr(rows, dims, folder / SCATTER_PNG),
            plot_learning_curves(rows, dims, folder / CURVES_PNG, max_epochs)]
