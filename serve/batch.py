"""Batch inference: score a table of rows, or a folder of images, with one registry version, across the cluster.

Ray Data reads the input (``read_parquet`` / ``read_csv``, or ``read_binary_files`` for
PNG/JPEG images), ``map_batches`` runs one ``Predictor`` per actor on every node the
cluster lends it, and ``write_parquet`` writes one output row per input row: the input's
own columns (an image's ``path``), ``prediction``, ``class_name`` and ``probabilities``.
Rows become model inputs exactly as the endpoint makes them: a table model's features by
column name with the standardisation training fitted, an image by ``serve.images``' rule.
The version is pinned when the job starts (``latest`` or an alias read once), so a
promotion during the job does not mix two models in one output.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from mlp import registry
from mlp.console import CommandError
from serve.predictor import ModelSource, load_predictor

IMAGE_EXTENSIONS = ["png", "jpg", "jpeg"]


class PredictError(CommandError):
    """The job cannot run as asked (a missing column, an output that exists); nothing was written."""

    exit_code = 2


@dataclass(frozen=True)
class Job:
    source: ModelSource  # pinned to vN (or a checkpoint)
    input: str
    output: str
    kind: str  # "table" (Parquet / CSV) or "images"
    features: tuple[str, ...]
    dataset: str
    max_image_pixels: int


class ScoreBatch:
    """One actor's model: loaded once, then a batch of rows in, the same rows with their answers out."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.predictor = load_predictor(job.source)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from serve.images import image_to_input

        if self.job.kind == "table":
            raw = np.stack([np.asarray(batch[c], dtype=np.float64) for c in self.job.features], axis=1)
            x = self.predictor.table_input(raw)
            out = dict(batch)
        else:
            x = np.stack([image_to_input(bytes(b), self.job.dataset, self.job.max_image_pixels)
                          for b in batch["bytes"]])
            out = {"path": batch["path"]}
        probs = self.predictor.predict_proba(x)
        names = self.predictor.info.class_names
        out["prediction"] = probs.argmax(axis=1)
        out["class_name"] = np.array([names[i] for i in out["prediction"]], dtype=object)
        out["probabilities"] = probs
        return out


def _input_kind(path: str) -> tuple[str, Optional[list[str]]]:
    """("table", its columns) for Parquet / CSV input, ("images", None) for a folder of PNG / JPEG files."""
    from mlp.tables import DataError, table_files, read_file

    try:
        files, fmt = table_files(path)
    except DataError:
        return "images", None
    return "table", read_file(files[0], fmt).schema.names


def plan(source: ModelSource, input_path: str, output: str, max_image_pixels: int) -> Job:
    """Check everything that can be checked before Ray starts; a problem is a ``PredictError`` naming it."""
    if "://" not in input_path:
        input_path = os.path.abspath(os.path.expanduser(input_path))
    if "://" not in output:
        output = os.path.abspath(os.path.expanduser(output))
        if os.path.exists(output):
            raise PredictError(f"--output {output} exists: name a new folder (nothing is overwritten)")
    try:
        if not source.checkpoint:  # pin latest or an alias to the version it names now
            source = ModelSource(source.registry, source.model_name,
                                 registry.version_of(source.registry, source.model_name, source.version))
        predictor = load_predictor(source)
    except (FileNotFoundError, ValueError) as err:  # no such version, a broken one (CheckpointError, RegistryError)
        raise PredictError(str(err)) from None
    kind, columns = _input_kind(input_path)
    features = tuple(predictor.cfg.schema.features)
    if predictor.is_table_model != (kind == "table"):
        wanted = f"a Parquet or CSV table with columns {', '.join(features)}" if features else \
            "a folder of PNG or JPEG images"
        raise PredictError(f"{input_path}: {source.version} was trained on "
                           f"{'a table' if features else 'images'}; give it {wanted}")
    missing = [c for c in features if c not in (columns or [])]
    if missing:
        raise PredictError(f"{input_path} has no column {', '.join(map(repr, missing))}: the model "
                           f"{source.version} needs {', '.join(features)}")
    return Job(source, input_path, output, kind, features, predictor.info.dataset, max_image_pixels)


def run(job: Job, batch_size: int = 256) -> dict[str, Any]:
    """Score the input on the running cluster and write the output; returns rows, seconds and rows/s."""
    import pyarrow.dataset as pads
    import ray
    import ray.data

    from mlp.tables import table_files

    started = time.perf_counter()
    if job.kind == "table":
        files, fmt = table_files(job.input)
        data = ray.data.read_parquet(files) if fmt == "parquet" else ray.data.read_csv(files)
    else:
        data = ray.data.read_binary_files(job.input, include_paths=True, file_extensions=IMAGE_EXTENSIONS)
    actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    scored = data.map_batches(ScoreBatch, fn_constructor_args=(job,), batch_size=batch_size,
                              concurrency=(1, actors), num_cpus=1, batch_format="numpy")
    scored.write_parquet(job.output)
    seconds = time.perf_counter() - started
    rows = pads.dataset(job.output, format="parquet").count_rows()
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "output": job.output,
            "version": job.source.version if not job.source.checkpoint else job.source.checkpoint}
