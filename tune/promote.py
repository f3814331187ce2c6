"""Promote a sweep's winner into the model registry (``mlp.registry``).

The winner is the trial with the best validation accuracy; its best kept
checkpoint is evaluated once on the test set (the only time a sweep touches
test data), and copied into ``<registry>/<model name>/v<N>/`` with metrics and
provenance. The registry code itself lives in ``mlp`` because Serve reads it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from mlp import registry
from mlp.checkpoint import read_config, read_state
from mlp.config import Config
from mlp.registry.storage import Location
from mlp.loop import evaluate_checkpoint


def best_checkpoint(result: Any) -> Optional[Any]:
    """The trial's existing checkpoint with the highest val accuracy.

    In-process trials report Tune checkpoints; TorchTrainer trials report Train's
    checkpoint path as ``checkpoint_path`` with each epoch.
    """
    import ray.tune

    kept = [(c, m) for c, m in (result.best_checkpoints or []) if _exists(c)]
    if kept:
        return max(kept, key=lambda pair: pair[1].get("val_accuracy", -1.0))[0]
    frame = result.metrics_dataframe
    if frame is not None and "checkpoint_path" in frame:
        rows = frame.dropna(subset=["checkpoint_path"]).sort_values("val_accuracy", ascending=False)
        for path in rows["checkpoint_path"]:
            if Location.of(path).is_dir():
                return ray.tune.Checkpoint(path)
    return result.checkpoint


def _exists(checkpoint: Any) -> bool:
    """Whether a checkpoint is still on its storage (pruned ones stay listed in Tune's state)."""
    import pyarrow.fs

    return checkpoint.filesystem.get_file_info(checkpoint.path).type != pyarrow.fs.FileType.NotFound


def prune_checkpoints(results: Any, keep: int) -> int:
    """After a sweep, keep each trial's ``keep`` best checkpoints by val accuracy; returns how many went.

    Trials keep every epoch's checkpoint while the sweep runs (see ``tune.tuner.make_tuner``).
    """
    removed = 0
    for result in results:
        pairs = [(c, m) for c, m in (result.best_checkpoints or []) if _exists(c)]
        pairs.sort(key=lambda pair: (pair[1].get("val_accuracy", -1.0), pair[1].get("epoch", 0)), reverse=True)
        for checkpoint, _ in pairs[keep:]:
            checkpoint.filesystem.delete_dir(checkpoint.path)
            removed += 1
    return removed


def _time_to_best(state: dict[str, Any]) -> Optional[float]:
    """Training seconds until the best val accuracy of the promoted checkpoint was first reached."""
    history = state.get("history") or []
    if not history:
        return None
    best = max(h["val_accuracy"] for h in history)
    elapsed = 0.0
    for h in history:
        elapsed += h.get("epoch_s", 0.0)
        if h["val_accuracy"] >= best:
            return elapsed
    return None


def promote_best(cfg: Config, rows: list[dict[str, Any]], results: Any, sweep_dir: Location,
                 move_latest: bool = True) -> dict[str, Any]:
    """Evaluate the top-ranked trial on the test set and promote it; returns its registry metrics.

    Trials are ranked by the best val accuracy they reached, and the winner's checkpoint of
    that epoch is promoted (after a ``--promote-only`` on a pruned sweep: its best kept one).
    """
    ranked = [r for r in rows if r["status"] != "error" and not math.isnan(r["best_val_accuracy"])]
    if not ranked:
        raise RuntimeError(f"no trial of {sweep_dir} reported a result; nothing to promote")
    winner = ranked[0]
    result = next(r for r in results if r.path == winner["path"])
    checkpoint = best_checkpoint(result)
    if checkpoint is None:
        raise RuntimeError(f"trial {winner['trial_id']} kept no checkpoint in {winner['path']}")
    with checkpoint.as_directory() as folder:
        trial_cfg = read_config(folder)
        state = read_state(folder)
        last = (state.get("history") or [{}])[-1]
        test = evaluate_checkpoint(folder)
        metrics = {
            **test,
            "val_accuracy": last.get("val_accuracy"), "val_loss": last.get("val_loss"),
            "train_loss": last.get("train_loss"), "best_val_accuracy": state.get("best_val_accuracy"),
            "epochs": state.get("epoch"), "max_epochs": trial_cfg.train.epochs,
            "train_seconds": state.get("elapsed_s"),
            "target_accuracy": trial_cfg.train.target_accuracy, "time_to_target_s": state.get("time_to_target_s"),
            "time_to_best_val_s": _time_to_best(state),
            "sweep": cfg.run.name, "trial_id": winner["trial_id"],
            "hyperparameters": {k: winner[k] for k in cfg.tune.space},
        }
        provenance = registry.make_provenance(trial_cfg, checkpoint.path, winner["trial_id"])
        provenance.update({"sweep": cfg.run.name, "sweep_dir": str(sweep_dir), "search": cfg.tune.search,
                           "early_stopping": cfg.tune.early_stopping})
        version = registry.promote(cfg.registry.path, cfg.registry.model_name, folder, metrics, provenance,
                                   move_latest)
    return {**metrics, "version": version.name, "registry_dir": str(version)}
