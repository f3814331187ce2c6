"""Datasets as in-memory tensors: MNIST, Fashion-MNIST, a synthetic stand-in, or your own table or image folder.

A table (``data.source``: Parquet or CSV) is read by ``mlp.tables``, an image folder (one
subfolder per class) by ``mlp.imagefolder``; what follows is about the built-in image datasets.

Images are float32 in [0, 1], shape [N, 784]; that is the whole preprocessing,
and Serve applies exactly the same (``to_model_input``). The raw IDX files
are read by torchvision's own ``MNIST`` / ``FashionMNIST`` classes; this module
only finds them, in this order:

1. ``data.dir`` from the config,
2. ``$MLP_DATA_DIR``,
3. Debian's ``/usr/share/datasets/<name>`` (package ``dataset-fashion-mnist``),
4. a torchvision download into ``$MLP_CACHE_DIR`` (default ``~/.cache/mlp``).

Each place may hold the four files directly (``*.gz`` or unpacked) or in
torchvision's ``<Class>/raw/`` layout. Gzipped files are unpacked once into the
cache, because torchvision reads only unpacked files.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol

import dataclasses

import torch

from mlp.config import Config, DataConfig, SchemaConfig
from mlp.console import CommandError
from mlp.images import to_model_input  # the one pixel scaling, defined with the image rule

RAW_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "synthetic": [f"pattern {d}" for d in range(10)],
}
DEBIAN_ROOT = Path("/usr/share/datasets")
SYNTHETIC_TEST_SIZE = 1000


class DataNotFoundError(CommandError, FileNotFoundError):
    """The dataset is nowhere on disk and could not be downloaded."""


Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


class EpochData(Protocol):
    """What the training loop reads: this worker's training batches per epoch, and the validation split.

    ``Splits`` holds both in memory; ``mlp.distributed.ingest.StreamedSplits`` streams
    them from Ray Data (a table larger than memory). The loop cannot tell them apart.
    """

    def train_batches(self, epoch: int, rank: int, world: int, batch_size: int) -> Batches: ...

    def val_batches(self) -> Batches: ...


@dataclass
class Splits:
    """Train/validation tensors; the test set is loaded separately, only for final evaluation."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    seed: int = 0  # data.seed: seeds the per-epoch shuffles

    def to(self, device: torch.device) -> "Splits":
        return Splits(*(t.to(device) for t in (self.train_x, self.train_y, self.val_x, self.val_y)), self.seed)

    def train_batches(self, epoch: int, rank: int, world: int, batch_size: int) -> Batches:
        """This worker's shard of a seeded per-epoch shuffle (``shard_indices``), ``batch_size`` rows at a time."""
        idx = shard_indices(len(self.train_x), epoch, self.seed, rank, world).to(self.train_x.device)
        for start in range(0, len(idx), batch_size):
            batch = idx[start:start + batch_size]
            yield self.train_x[batch], self.train_y[batch]

    def val_batches(self, batch_size: int = 8192) -> Batches:
        for start in range(0, len(self.val_x), batch_size):
            yield self.val_x[start:start + batch_size], self.val_y[start:start + batch_size]


def cache_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("MLP_CACHE_DIR", "~/.cache/mlp")))


def _is_image_folder(cfg: DataConfig) -> bool:
    """``data.source`` is a folder of class subfolders of pictures (``mlp.imagefolder``), not a table."""
    from mlp.imagefolder import is_image_folder

    return cfg.source is not None and is_image_folder(cfg.source)


def _has_raw_files(folder: Path) -> bool:
    return all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in RAW_FILES)


def _candidates(cfg: DataConfig) -> list[Path]:
    places = [cfg.dir, os.environ.get("MLP_DATA_DIR"), str(DEBIAN_ROOT / cfg.dataset)]
    return [Path(os.path.expanduser(p)) for p in places if p]


def _stage(source: Path, dataset: str) -> Path:
    """Make ``root/<Class>/raw/<file>`` (unpacked) for torchvision and return ``root``."""
    class_name = TORCHVISION_CLASS[dataset]
    if all((source / class_name / "raw" / n).is_file() for n in RAW_FILES):
        return source
    if all((source / n).is_file() for n in RAW_FILES) and source.name == "raw" \
            and source.parent.name == class_name:
        return source.parent.parent
    raw_src = source / class_name / "raw" if _has_raw_files(source / class_name / "raw") else source
    root = cache_dir() / "data" / dataset
    raw_dst = root / class_name / "raw"
    raw_dst.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        target = raw_dst / name
        if target.is_file():
            continue
        plain, packed = raw_src / name, raw_src / f"{name}.gz"
        # Write beside the target and rename, so parallel workers never read half a file.
        fd, tmp = tempfile.mkstemp(dir=raw_dst, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as out:
            if plain.is_file():
                with open(plain, "rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                with gzip.open(packed, "rb") as src:
                    shutil.copyfileobj(src, out)
        os.replace(tmp, target)
    return root


def find_dataset_root(cfg: DataConfig) -> Path:
    """Root folder to hand torchvision; downloads only when no local copy exists."""
    searched = []
    for place in _candidates(cfg):
        for folder in (place, place / cfg.dataset, place / TORCHVISION_CLASS[cfg.dataset] / "raw"):
            searched.append(str(folder))
            if _has_raw_files(folder) or _has_raw_files(folder / TORCHVISION_CLASS[cfg.dataset] / "raw"):
                return _stage(folder, cfg.dataset)
    root = cache_dir() / "data" / cfg.dataset
    try:
        _torchvision_dataset(cfg.dataset, root, train=True, download=True)
        _torchvision_dataset(cfg.dataset, root, train=False, download=True)
        return root
    except Exception as err:  # torchvision raises plain RuntimeError/URLError offline
        hint = ("sudo apt-get install dataset-fashion-mnist" if cfg.dataset == "fashion-mnist"
                else "download the four *-ubyte.gz files on a machine with internet access")
        raise DataNotFoundError(
            f"{cfg.dataset} not found. Looked in: {', '.join(searched) or '(nothing configured)'}; "
            f"the download into {root} failed ({type(err).__name__}: {err}). Fix: {hint}, "
            f"then pass --data.dir FOLDER or set MLP_DATA_DIR; or use --data.dataset synthetic."
        ) from err


def _torchvision_dataset(dataset: str, root: Path, train: bool, download: bool):
    import torchvision  # imported late: it is slow and the synthetic path does not need it

    cls = getattr(torchvision.datasets, TORCHVISION_CLASS[dataset])
    return cls(root=str(root), train=train, download=download)


@functools.lru_cache(maxsize=4)
def _load_tensors(dataset: str, data_dir: Optional[str], train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a file-backed dataset (MNIST / Fashion-MNIST), decoded once per process."""
    root = find_dataset_root(DataConfig(dataset=dataset, dir=data_dir))
    split = "train" if train else "test"
    raw = root / TORCHVISION_CLASS[dataset] / "raw" / RAW_FILES[0 if train else 2]
    # Decoded tensors are cached beside the unpacked files' identity (path, size, mtime), so
    # each Ray worker reads one small file instead of importing torchvision (BENCHMARKS.md has the saving).
    info = raw.stat()
    stamp = f"{raw.resolve()}:{info.st_size}:{info.st_mtime_ns}"
    cached = cache_dir() / "tensors" / f"{dataset}-{split}-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.pt"
    if cached.is_file():
        images, labels = torch.load(cached, weights_only=True)
        return to_model_input(images), labels
    ds = _torchvision_dataset(dataset, root, train=train, download=False)
    images, labels = ds.data, ds.targets.to(torch.long)
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=f".{cached.name}.")
    os.close(fd)
    torch.save((images, labels), tmp)
    os.replace(tmp, cached)
    return to_model_input(images), labels


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable, deterministic 10-class problem with MNIST's shapes.

    Each class is a fixed random blob pattern; samples are that pattern plus
    heavy noise, so accuracy climbs over several epochs instead of jumping to 1.
    """
    protos = torch.rand(10, 784, generator=torch.Generator().manual_seed(12345))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=gen)
    noise = torch.rand(n, 784, generator=gen)
    x = (0.25 * protos[y] + 0.75 * noise).clamp(0, 1)
    return x, y


def load_splits(cfg: DataConfig, schema: Optional[SchemaConfig] = None) -> Splits:
    """Train and validation split, carved from the training set with ``data.seed``.

    A table needs its ``schema`` (``resolve_data``): the classes and the standardisation.
    """
    if _is_image_folder(cfg):
        from mlp.imagefolder import load_split

        return Splits(*load_split(cfg, "train", schema), *load_split(cfg, "val", schema), cfg.seed)
    if cfg.source is not None:
        from mlp.tables import load_rows

        return Splits(*load_rows(cfg, _schema_of(cfg, schema), "train"), *load_rows(cfg, schema, "val"), cfg.seed)
    if cfg.dataset == "synthetic":
        x, y = synthetic(cfg.synthetic_size, seed=1)
    else:
        x, y = _load_tensors(cfg.dataset, cfg.dir, True)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))
    n_val = max(1, int(len(x) * cfg.val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    return Splits(x[train], y[train], x[val], y[val], cfg.seed)


def _schema_of(cfg: DataConfig, schema: Optional[SchemaConfig]) -> SchemaConfig:
    if schema is None or not schema.mean:
        raise ValueError(f"the table {cfg.source} needs its schema: call mlp.data.resolve_data on the config first")
    return schema


def resolve_data(cfg: Config) -> Config:
    """The config ready to train, checked in the driver before Ray starts or anything is written.

    A built-in dataset is found (or downloaded), so a missing one fails here. A table's
    path is made absolute (workers do not share the driver's folder), the table is
    read and checked, and its schema (input size, classes, standardisation fitted on the
    training rows) is filled in, to travel with the config from here on; ``data.ingest
    auto`` becomes ``memory`` or ``stream`` (``choose_ingest``), and one line says which and why.
    An image folder's classes are its subfolders' names (``mlp.imagefolder``).
    """
    if _is_image_folder(cfg.data):
        from mlp.imagefolder import resolve

        data = dataclasses.replace(cfg.data, source=_absolute(cfg.data.source),
                                   test_source=cfg.data.test_source and _absolute(cfg.data.test_source))
        data, schema, line = resolve(data)
        print(line, flush=True)
        return dataclasses.replace(cfg, data=data, schema=schema)
    if cfg.data.source is not None:
        from mlp.tables import infer_schema

        data = dataclasses.replace(cfg.data, source=_absolute(cfg.data.source),
                                   test_source=cfg.data.test_source and _absolute(cfg.data.test_source))
        schema, counts = infer_schema(data)
        ingest, why = choose_ingest(data, schema, counts, cfg.scaling.num_workers)
        print(f"data: {data.name}: {counts['train']:,} training, {counts['val']:,} validation, "
              f"{counts['test']:,} test rows; {schema.input_size} features, {len(schema.classes)} classes; "
              f"{why}", flush=True)
        return dataclasses.replace(cfg, data=dataclasses.replace(data, ingest=ingest), schema=schema)
    if cfg.data.dataset != "synthetic":
        find_dataset_root(cfg.data)
    return cfg


def _absolute(source: str) -> str:
    """Workers run elsewhere (another folder; under ``ray job submit`` a copy): a local path must be absolute."""
    return source if "://" in source else os.path.abspath(os.path.expanduser(source))


def choose_ingest(cfg: DataConfig, schema: SchemaConfig, counts: dict[str, int], workers: int) -> tuple[str, str]:
    """(``memory`` or ``stream``, the reason in words) for a table.

    In memory, every worker holds the whole table as float32 (a few passes over tensors:
    the fastest path, BENCHMARKS.md); past ``data.memory_budget_mb`` (default an eighth of
    this machine's memory, for the workers that share it) Ray Data streams each worker its shard instead.
    """
    size_mb = sum(counts.values()) * schema.input_size * 4 / 2**20
    budget = memory_budget_mb(cfg)
    if cfg.ingest != "auto":
        return cfg.ingest, f"data.ingest {cfg.ingest} ({size_mb:,.1f} MB as float32, {workers} worker(s))"
    if size_mb <= budget:
        return "memory", (f"each worker holds it in memory: {size_mb:,.1f} MB as float32, within the "
                          f"{budget:,} MB budget (data.memory_budget_mb)")
    return "stream", (f"streamed to the workers through Ray Data: {size_mb:,.1f} MB as float32, over the "
                      f"{budget:,} MB budget (data.memory_budget_mb)")


def memory_budget_mb(cfg: DataConfig) -> int:
    """``data.memory_budget_mb``, or an eighth of this machine's memory when it is 0."""
    return cfg.memory_budget_mb or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 8


def class_names(cfg: Config) -> list[str]:
    """The names of the model's classes, by label index."""
    return list(cfg.schema.classes) or list(CLASS_NAMES[cfg.data.dataset])


def load_test(cfg: DataConfig, schema: Optional[SchemaConfig] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out test set: used once, for the final evaluation."""
    if _is_image_folder(cfg):
        from mlp.imagefolder import load_split

        return load_split(cfg, "test", schema)
    if cfg.source is not None:
        from mlp.tables import load_rows

        return load_rows(cfg, _schema_of(cfg, schema), "test")
    if cfg.dataset == "synthetic":
        return synthetic(SYNTHETIC_TEST_SIZE, seed=2)
    return _load_tensors(cfg.dataset, cfg.dir, False)


def test_batches(cfg: DataConfig, schema: Optional[SchemaConfig] = None, batch_size: int = 8192) -> Batches:
    """The test set batch by batch: a table is streamed from its files, so a large one never sits whole in memory."""
    if cfg.source is not None and not _is_image_folder(cfg):
        from mlp.tables import TEST, model_rows, rows_of

        schema = _schema_of(cfg, schema)
        for x, labels in rows_of(cfg, TEST):
            yield model_rows(x, labels, schema)
        return
    x, y = load_test(cfg, schema)
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def shard_indices(n: int, epoch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This worker's share of a per-epoch seeded shuffle.

    Every worker draws the same permutation and takes every ``world``-th index,
    so shards are disjoint and equal in size (the tail is dropped): equal step
    counts keep gradient all-reduce in lockstep.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    usable = n - n % world
    return perm[:usable][rank::world]
