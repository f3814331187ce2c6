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
BATCHES_PER_BLOCK = 4  # rows per Ray Data block, in model batches: a share of work an actor takes at a time
ACTORS_START_S = 600  # how long the first actors may take to start and load the model before the job fails


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
    from mlp.tables import DataError, file_schema, table_files

    try:
        files, fmt = table_files(path)
    except DataError:
        return "images", None
    return "table", file_schema(files[0], fmt).names


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


def actor_pool(node_cpus: list[float]) -> tuple[int, int]:
    """(least, most) scoring actors of one CPU for nodes with these CPUs; each node keeps one CPU for
    Ray Data's read and write tasks.

    Scoring actors hold their CPU for the whole job: a pool that took every CPU would leave none
    for the tasks that read the input, and the job would wait forever (two actors on two 1-CPU
    nodes did). So the pool grows to one actor per CPU less one per node, and starts with one actor
    on every node that has a CPU to spare (Ray Data spreads actors over the nodes), so that every
    such node scores from the start.
    """
    nodes = [int(cpus) for cpus in node_cpus if cpus >= 1]
    most = max(1, sum(nodes) - len(nodes))
    return max(1, min(sum(1 for cpus in nodes if cpus >= 2), most)), most


def run(job: Job, batch_size: int = 256) -> dict[str, Any]:
    """Score the input on the running cluster and write the output; returns rows, seconds and rows/s."""
    import pyarrow.dataset as pads
    import ray
    import ray.data

    from mlp.tables import table_files

    started = time.perf_counter()
    context = ray.data.DataContext.get_current()  # a Dataset keeps the context it was created under
    waited = context.wait_for_min_actors_s
    # Scoring starts once every node's first actor holds its model, so that the first actor up does
    # not take every block of a small table before the other nodes' actors are ready.
    context.wait_for_min_actors_s = ACTORS_START_S
    try:
        if job.kind == "table":
            files, fmt = table_files(job.input)
            data = ray.data.read_parquet(files) if fmt == "parquet" else ray.data.read_csv(files)
        else:
            data = ray.data.read_binary_files(job.input, include_paths=True, file_extensions=IMAGE_EXTENSIONS)
        # Ray Data reads a table of up to hundreds of MiB as one block (215,640 rows in 8 Parquet files
        # were one), which one actor would score alone: blocks of a few batches give every actor a share.
        data = data.repartition(target_num_rows_per_block=batch_size * BATCHES_PER_BLOCK)
        least, most = actor_pool([node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]])
        scored = data.map_batches(ScoreBatch, fn_constructor_args=(job,), batch_size=batch_size,
                                  concurrency=(least, most), num_cpus=1, batch_format="numpy")
        scored.write_parquet(job.output)
    finally:
        context.wait_for_min_actors_s = waited
    seconds = time.perf_counter() - started
    rows = pads.dataset(job.output, format="parquet").count_rows()
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "output": job.output,
            "version": job.source.version if not job.source.checkpoint else job.source.checkpoint}
