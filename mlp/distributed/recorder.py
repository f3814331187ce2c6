"""``RunRecorder``: the Ray Train callback that writes a run's files, in a module without torch.

It runs in Ray Train's controller, a process of its own that unpickles it and
imports its module there. Keeping this module free of torch (and of the
training loop) spares the controller that import (its cost, and the controller's
start before and after, are in BENCHMARKS.md, ``benchmarks/probe_startup_phases.py``).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ray.train import UserCallback

from mlp.distributed.runfiles import NODE_KEYS, RunFiles, checkpoint_history, epoch_metrics
from mlp.reports.tracking import MlflowRun, log_epochs, write_tensorboard

log = logging.getLogger(__name__)


class RunRecorder(UserCallback):
    """Writes the run's files from what the workers report; runs in Ray Train's controller.

    After each report (Ray has already registered the checkpoint by then), it
    rewrites ``metrics.jsonl`` and the TensorBoard event file whole from the
    history stored in the reported checkpoint, logs the epochs MLflow does not
    hold yet (live, so a user can watch the run there), and writes
    ``ranks.json`` when the placement of ranks changes. It writes only while
    its attempt token still owns the run. Tracking is best effort: a
    TensorBoard or MLflow failure is logged and never stops training (the
    driver completes the MLflow run at the end).
    """

    def __init__(self, storage_path: str, name: str, token: Optional[str], tensorboard: bool = True,
                 mlflow_run: Optional[MlflowRun] = None) -> None:
        self.files = RunFiles(storage_path, name)
        self.name = name
        self.token = token
        self.tensorboard = tensorboard
        self.mlflow_run = mlflow_run
        self.mlflow_epoch: Optional[int] = None  # last epoch MLflow holds; asked of MLflow on first use
        self.ranks: list[dict[str, Any]] = []

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if self.token and not self.files.owns(self.token):
            log.warning("run %s belongs to a newer attempt; not writing its files", self.files.dir)
            return
        history = checkpoint_history(checkpoint) if checkpoint is not None else None
        if history is not None:
            epochs = [epoch_metrics(m) for m in history]
            self.files.write_metrics(epochs)
            self.track(epochs)
        ranks = [{"rank": rank, **{k: m[k] for k in NODE_KEYS if k in m}} for rank, m in enumerate(metrics)]
        if ranks != self.ranks:
            self.files.write_ranks(ranks)
            self.ranks = ranks

    def track(self, history: list[dict[str, Any]]) -> None:
        """TensorBoard and MLflow from the checkpoint's history; failures are warnings."""
        if self.tensorboard:
            try:
                write_tensorboard(self.files.dir, self.name, history)
            except Exception as err:
                log.warning("cannot write the TensorBoard events of %s: %s", self.files.dir, err)
        if self.mlflow_run is not None:
            try:
                self.mlflow_epoch = log_epochs(self.mlflow_run, history, self.mlflow_epoch)
            except Exception as err:
                log.warning("cannot log epochs to MLflow run %s (%s): %s; the driver logs them at the end",
                            self.mlflow_run.run_id, self.mlflow_run.tracking_uri, err)
