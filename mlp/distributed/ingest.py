"""Ray Data ingestion of a table (``data.ingest stream``): each worker streams its shard, none holds the table.

The driver builds one lazy Ray Data pipeline per split: ``read_parquet`` / ``read_csv``
over the table's files, then ``map_batches`` keeping the split's rows (``mlp.tables.split_codes``,
the same hash the in-memory path uses) as model rows (``mlp.tables.model_rows``: the
standardisation and class indices of the schema). Ray Train hands each worker an equal
shard of the training rows (``streaming_split(equal=True)``, so every rank takes the same
number of steps and the gradient exchange stays in lockstep) and every worker the whole
validation split, re-read each epoch. Memory per worker is bounded by a few blocks in
flight, not by the table.

A worker reads its shard in chunks of ``CHUNK_ROWS`` rows as NumPy and cuts each chunk
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

CHUNK_ROWS = 8192
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


def build_datasets(cfg: Config) -> dict[str, Any]:
    """``{"train": ..., "val": ...}`` for ``TorchTrainer(datasets=...)``: lazy, executed as workers iterate."""
    table = parts_of(cfg.data)[0][0]
    return {name: read(table).map_batches(ModelRows(table, cfg.data, cfg.schema, part), batch_format="numpy")
            for name, part in SPLITS.items()}


def data_config() -> Any:
    """Training rows split among the workers; validation rows whole on every worker (the same for any count)."""
    from ray.train import DataConfig as TrainDataConfig

    return TrainDataConfig(datasets_to_split=["train"])


class StreamedSplits:
    """``mlp.data.EpochData`` over this worker's Ray Data shards."""

    def __init__(self, seed: int, device: torch.device) -> None:
        import ray.train

        self.train = ray.train.get_dataset_shard("train")
        self.val = ray.train.get_dataset_shard("val")
        self.seed, self.device = seed, device

    def _chunks(self, shard: Any) -> Batches:
        for chunk in shard.iter_batches(batch_size=CHUNK_ROWS, batch_format="numpy", prefetch_batches=1):
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
        return self._chunks(self.val)
