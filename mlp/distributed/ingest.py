"""Ray Data ingestion of a table (``data.ingest stream``): each worker streams its shard, none holds the table.

The driver builds one lazy Ray Data pipeline per split: ``read_parquet`` / ``read_csv``
over the table's files, then ``map_batches`` keeping the split's rows (``mlp.tables.split_codes``,
the same hash the in-memory path uses) as model rows (``mlp.tables.model_rows``: the
standardisation and class indices of the schema). Ray Train hands each worker an equal
shard of the training rows (``streaming_split(equal=True)``, so every rank takes the same
number of steps and the gradient exchange stays in lockstep) and every worker the whole
validation split, re-read each epoch. Memory per worker is bounded by a few blocks in
flight, not by the table.

A worker reads its shard in chunks of about ``CHUNK_MB`` as NumPy and cuts each chunk
into minibatches itself, in a seeded order: asking Ray Data for every 32-row minibatch
would cost more per step than the model does (BENCHMARKS.md, "Ray Data vs in memory").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mlp.config import Config, DataConfig, SchemaConfig
from mlp.data import Batches
from mlp.tables import TRAIN, VAL, TableFiles, arrays, csv_types, model_rows, parts_of, split_codes

CHUNK_MB = 4  # rows a worker takes from Ray Data at a time: enough to make the per-chunk cost vanish
SPLITS = {"train": TRAIN, "val": VAL}


class ModelRows:
    """``map_batches`` function: a batch of raw table rows in, the rows of one split as model rows out."""

    def __init__(self, table: TableFiles, data: DataConfig, schema: SchemaConfig, part: int) -> None:
        self.table, self.data, self.schema, self.part = table, data, schema, part

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, labels = arrays(batch, self.table, self.data.source)
        keep = split_codes(x, self.data) == self.part
        features, y = model_rows(x[keep], labels[keep], self.schema)
        return {"x": features.numpy(), "y": y.numpy()}


def read(table: TableFiles) -> Any:
    """A lazy Ray Data dataset of the table's files, only the columns the model reads."""
    import ray.data

    if table.fmt == "parquet":
        return ray.data.read_parquet(list(table.files), columns=[*table.features, table.label])
    return ray.data.read_csv(list(table.files), convert_options=csv_types(table))


def quiet() -> None:
    """No Ray Data progress bars or plans in the run's output: the epoch line says how training goes."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def build_datasets(cfg: Config) -> dict[str, Any]:
    """``{"train": ..., "val": ...}`` for ``TorchTrainer(datasets=...)``: lazy, executed as workers iterate."""
    quiet()  # each dataset keeps a copy of the context it was made in
    table = parts_of(cfg.data)[0][0]
    return {name: read(table).map_batches(ModelRows(table, cfg.data, cfg.schema, part), batch_format="numpy")
            for name, part in SPLITS.items()}


def data_config() -> Any:
    """Training rows split among the workers; validation rows whole on every worker (the same for any count)."""
    from ray.train import DataConfig as TrainDataConfig

    return TrainDataConfig(datasets_to_split=["train"])


def private_mb() -> float:
    """This process's own resident memory (``RssAnon``), in MB: what it holds, not the object store it maps."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


class StreamedSplits:
    """``mlp.data.EpochData`` over this worker's Ray Data shards.

    The validation rows are streamed once and then kept (re-reading them every epoch would
    cost a whole pipeline run each time), unless they take more than ``keep_mb`` (a quarter
    of ``data.memory_budget_mb``). ``start_mb`` and ``peak_mb`` are the worker's own memory
    when the first row is asked for (model, optimizer and gradient exchange built) and at
    its highest, sampled once per chunk: the difference is what the data costs the worker.
    """

    def __init__(self, seed: int, device: torch.device, features: int, keep_mb: float) -> None:
        import ray.train

        quiet()
        self.chunk_rows = max(1024, CHUNK_MB * 2**20 // (4 * features))
        self.keep_mb = keep_mb
        self.train = ray.train.get_dataset_shard("train")
        self.val = ray.train.get_dataset_shard("val")
        self.seed, self.device = seed, device
        self.kept_val: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.start_mb: float | None = None  # measured at the first row asked for: the model is built by then
        self.peak_mb = 0.0

    def _chunks(self, shard: Any) -> Batches:
        if self.start_mb is None:
            self.start_mb = self.peak_mb = private_mb()
        for chunk in shard.iter_batches(batch_size=self.chunk_rows, batch_format="numpy", prefetch_batches=1):
            self.peak_mb = max(self.peak_mb, private_mb())
            yield (torch.from_numpy(np.array(chunk["x"], dtype=np.float32)).to(self.device),
                   torch.from_numpy(np.array(chunk["y"], dtype=np.int64)).to(self.device))

    def train_batches(self, epoch: int, rank: int, world: int, batch_size: int) -> Batches:
        """Each chunk shuffled with a seed of (data.seed, epoch, rank, chunk), then cut into minibatches."""
        for number, (x, y) in enumerate(self._chunks(self.train)):
            gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_009 + rank) * 100_003 + number)
            order = torch.randperm(len(x), generator=gen).to(self.device)
            for start in range(0, len(x), batch_size):
                pick = order[start:start + batch_size]
                yield x[pick], y[pick]

    def val_batches(self) -> Batches:
        if self.kept_val is not None:
            yield from self.kept_val
            return
        kept: list[tuple[torch.Tensor, torch.Tensor]] | None = []
        for x, y in self._chunks(self.val):
            if kept is not None:
                kept.append((x, y))
                if sum(b.numel() * 4 for b, _ in kept) > self.keep_mb * 2**20:
                    kept = None
            yield x, y
        self.kept_val = kept
