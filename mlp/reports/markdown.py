"""Markdown and PNG helpers that every report shares: the run's, the sweep's and the pipeline's.

Reports are Markdown beside PNG plots, linked by relative name (the PNG sits beside
the ``.md``, so a report renders in a file browser, on GitHub, or after ``aws s3 sync``),
written whole through the storage layer so the folder may be a URI.

Plots use matplotlib's file-only Agg backend (runs are headless under ``ray job submit``),
imported on first use by ``pyplot()``: every training command imports this module before
it trains, and matplotlib is slow to import.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, Iterable, Sequence

from mlp.registry.storage import Location

REPORT_MD = "report.md"
CURVES_PNG = "learning_curves.png"


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the file-only Agg backend, imported on first call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Location) -> Location:
    """PNG bytes written whole through the storage layer, so the folder may be a URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    pyplot().close(fig)
    path.write_bytes(buffer.getvalue())
    return path


def fmt(value: Any, digits: int = 4) -> str:
    """One table cell: floats to ``digits`` significant places, None and NaN as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; cells go through ``fmt``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def md_config(config: dict[str, Any]) -> str:
    """The resolved config as a fenced JSON block: exact, and pasteable into ``--config``."""
    return "```json\n" + json.dumps(config, indent=2, default=str) + "\n```"


def md_image(name: str, alt: str) -> str:
    return f"![{alt}]({name})"


def plot_learning_curves(history: list[dict[str, Any]], path: Location, title: str = "") -> Location:
    """Loss (left) and accuracy (right) per epoch, train and validation, from a run's history."""
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = pyplot().subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [h.get(f"{split}_{metric}") for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, markersize=4, label=f"{split}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if epochs:
        loss_ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
        acc_ax.set_xticks(loss_ax.get_xticks())
    fig.suptitle(title or "Learning curves")
    fig.tight_layout()
    return save_figure(fig, path)


