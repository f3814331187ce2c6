"""Ray Data ingestion of a table (``data.ingest stream``): each worker streams its shard, none holds the table.

The driver builds one lazy Ray Data pipeline per split: ``read_parquet`` / ``read_csv``
over the table's files, then ``map_batches`` keeping the split's rows (``mlp.tables.split_codes``,
the same hash the in-memory path uses) as model rows (``mlp.tables.model_rows``: the
standardisation and class indices of the schema). Ray Train hands each worker an equal
shard of the training rows (``streaming_split(equal=True)``, so every rank takes the same
number of steps and the gradient exchange stays in lockstep) and every worker the whole
validation split. Rows that fit in half the cluster's object store are prepared once and
streamed from there each epoch; larger tables are re-read from their files each epoch
(``build_datasets``). Memory per worker is bounded by a few blocks in flight, not by the table.

A worker reads its shard in chunks of about ``CHUNK_MB`` as NumPy and cuts each chunk
into minibatches itself, in a seeded order: asking Ray Data for every 32-row minibatch
would cost more per step than the model does (BENCHMARKS.md, "Ray Data vs in memory").
"""

from __future__ import annotations

import ctypes
import warnings
from typing import Any

import numpy as np
import torch

from mlp.config import Config, DataConfig, SchemaConfig
from mlp.data import Batches
from mlp.tables import TRAIN, VAL, TableFiles, arrays, csv_types, model_rows, parts_of, split_codes

CHUNK_MB = 64  # a worker takes this much from Ray Data at a time (at most a 16th of the memory budget)
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
    """``{"train": ..., "val": ...}`` for ``TorchTrainer(datasets=...)``.

    When the model rows fit in half the cluster's object store they are prepared once, here
    (``materialize``: read, split and standardised a single time, held in the object store
    across the nodes), and each epoch streams the workers their blocks from there; otherwise
    each epoch re-reads the files. Either way no worker holds more than a few blocks.
    """
    import ray

    quiet()  # each dataset keeps a copy of the context it was made in
    table = parts_of(cfg.data)[0][0]
    datasets = {name: read(table).map_batches(ModelRows(table, cfg.data, cfg.schema, part), batch_format="numpy")
                for name, part in SPLITS.items()}
    size_mb = estimated_mb(table)
    store_mb = ray.cluster_resources().get("object_store_memory", 0) / 2**20
    if size_mb <= store_mb / 2:
        print(f"data: Ray Data prepares the rows once (about {size_mb:,.0f} MB, within half of the "
              f"{store_mb:,.0f} MB object store) and streams them to the workers every epoch", flush=True)
        return {name: ds.materialize() for name, ds in datasets.items()}
    print(f"data: Ray Data re-reads the files every epoch (about {size_mb:,.0f} MB of rows, over half of "
          f"the {store_mb:,.0f} MB object store)", flush=True)
    return datasets


def estimated_mb(table: TableFiles) -> float:
    """The table's rows as float32, in MB: from Parquet footers (no data read); a CSV counts its text size."""
    import pyarrow.parquet as pq

    from mlp.tables import open_file

    total = 0.0
    for name in table.files:
        fs, path = open_file(name)
        if table.fmt == "parquet":
            total += pq.read_metadata(path, filesystem=fs).num_rows * len(table.features) * 4
        else:
            total += fs.get_file_info(path).size
    return total / 2**20


def data_config() -> Any:
    """Training rows split among the workers; validation rows whole on every worker (the same for any count)."""
    from ray.train import DataConfig as TrainDataConfig

    return TrainDataConfig(datasets_to_split=["train"])


def release_freed_memory() -> None:
    """Hand memory freed by past chunks back to the OS (glibc keeps it per thread otherwise): a streaming
    worker's footprint then stays at what it holds now, not at the sum of its threads' high-water marks."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


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
    cost a whole pipeline run each time), unless they take more than a quarter of
    ``data.memory_budget_mb``; a chunk takes at most a sixteenth of it. ``start_mb`` and ``peak_mb`` are the worker's own memory
    when the first row is asked for (model, optimizer and gradient exchange built) and at
    its highest, sampled once per chunk: the difference is what the data costs the worker.
    """

    def __init__(self, seed: int, device: torch.device, features: int, budget_mb: float) -> None:
        import ray.train

        quiet()
        self.chunk_rows = max(512, int(min(CHUNK_MB, budget_mb / 16) * 2**20) // (4 * features))
        self.keep_mb = budget_mb / 4
        self.train = ray.train.get_dataset_shard("train")
        self.val = ray.train.get_dataset_shard("val")
        self.seed, self.device = seed, device
        self.kept_val: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.start_mb: float | None = None  # measured at the first row asked for: the model is built by then
        self.peak_mb = 0.0

    def _chunks(self, shard: Any) -> Batches:
        if self.start_mb is None:
            self.start_mb = self.peak_mb = private_mb()
        for chunk in shard.iter_batches(batch_size=self.chunk_rows, batch_format="numpy", prefetch_batches=2):
            self.peak_mb = max(self.peak_mb, private_mb())  # before the trim: the chunk just used still counts
            release_freed_memory()
            with warnings.catch_warnings():  # read-only views of the object store: only ever indexed, never written
                warnings.simplefilter("ignore", UserWarning)
                yield (torch.from_numpy(np.asarray(chunk["x"], dtype=np.float32)).to(self.device),
                       torch.from_numpy(np.asarray(chunk["y"], dtype=np.int64)).to(self.device))

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
