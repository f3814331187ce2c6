"""``python -m mlp.train``: train the MLP data-parallel on Ray Train and report test accuracy.

The driver validates the config, joins (or starts) a Ray cluster, runs the
``TorchTrainer`` from ``mlp.distributed``, evaluates the final checkpoint once on
the test set, and writes ``summary.json`` beside ``metrics.jsonl`` in the run
folder. ``--promote`` copies the result into the model registry.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from mlp import registry
from mlp.checkpoint import load_model, read_state
from mlp.cli import RunInterrupted, make_parser, parse_config, run_command
from mlp.config import Config
from mlp.data import find_dataset_root, load_test
from mlp.distributed import SUMMARY_FILE, build_trainer, init_ray, with_run_name
from mlp.loop import evaluate

log = logging.getLogger("mlp.train")


def evaluate_checkpoint(folder: str | Path) -> dict[str, float]:
    """Test loss and accuracy of a checkpoint folder, rebuilt from its own config."""
    model, cfg = load_model(folder)
    x, y = load_test(cfg.data)
    loss, accuracy = evaluate(model, x, y)
    return {"test_loss": loss, "test_accuracy": accuracy}


def check_data(cfg: Config) -> None:
    """Find (or download) the dataset in the driver, so a missing dataset fails before Ray starts."""
    if cfg.data.dataset != "synthetic":
        find_dataset_root(cfg.data)


def run_training(cfg: Config, promote: bool = False) -> dict[str, Any]:
    """Train (or resume) the run named in ``cfg`` and return its summary."""
    cfg = with_run_name(cfg)
    run_dir = Path(cfg.run.storage_path) / str(cfg.run.name)
    summary_path = run_dir / SUMMARY_FILE
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        print(f"run {cfg.run.name} already finished: test accuracy {summary['test_accuracy']:.4f} "
              f"({summary_path}). Use a new --run.name to train again.")
        return summary
    check_data(cfg)
    print(f"run {cfg.run.name}: {cfg.scaling.num_workers} worker(s), {cfg.train.epochs} epochs on "
          f"{cfg.data.dataset}; results in {run_dir}", flush=True)
    started = time.perf_counter()
    init_ray()
    try:
        result = build_trainer(cfg).fit()
    except (KeyboardInterrupt, SystemExit):  # Ray Train turns Ctrl-C into a graceful abort + exit
        raise RunInterrupted(f"interrupted: run this command again with --run.name {cfg.run.name} "
                             f"--run.storage_path {cfg.run.storage_path} to resume from the last checkpoint"
                             ) from None
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.run.name} reported no checkpoint; see {run_dir}")
    with result.checkpoint.as_directory() as folder:
        state = read_state(folder)
        test = evaluate_checkpoint(folder)
        summary = {
            "run_name": cfg.run.name, "dataset": cfg.data.dataset, "epochs": state.get("epoch"),
            "num_workers": cfg.scaling.num_workers, **test,
            "best_val_accuracy": state.get("best_val_accuracy"),
            "final_val_accuracy": (state.get("history") or [{}])[-1].get("val_accuracy"),
            "train_seconds": state.get("elapsed_s"), "wall_seconds": time.perf_counter() - started,
            "target_accuracy": cfg.train.target_accuracy, "time_to_target_s": state.get("time_to_target_s"),
            "checkpoint": result.checkpoint.path,
        }
        if promote:
            version = registry.promote(cfg.registry.path, cfg.registry.model_name, folder, summary,
                                       registry.make_provenance(cfg, result.checkpoint.path))
            summary["promoted"] = str(version)
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    target = ""
    if summary.get("target_accuracy") is not None:
        reached = summary.get("time_to_target_s")
        target = (f"  time to val acc {summary['target_accuracy']}: "
                  + (f"{reached:.1f}s" if reached is not None else "not reached"))
    print(f"\nrun {summary['run_name']}: test accuracy {summary['test_accuracy']:.4f}  "
          f"best val accuracy {summary['best_val_accuracy']:.4f}  wall {summary['wall_seconds']:.1f}s{target}")
    print(f"checkpoint: {summary['checkpoint']}")
    if "promoted" in summary:
        print(f"promoted to {summary['promoted']}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser(
        "mlp-train",
        "Train the MNIST MLP (784-100-10, SGD) data-parallel with Ray Train.\n"
        "Joins RAY_ADDRESS (or the cluster of a `ray job submit`) if set, else starts a local cluster.\n"
        "Re-running with the same --run.name resumes from the last checkpoint.",
        sections=("model", "optim", "data", "train", "scaling", "run", "registry"),
    )
    parser.add_argument("--promote", action="store_true", help="copy the result into the model registry")
    cfg, args = parse_config(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_command(parser.prog, lambda: print_summary(run_training(cfg, promote=args.promote)))


if __name__ == "__main__":
    sys.exit(main())
