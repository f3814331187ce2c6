"""Your own table as a dataset: Parquet or CSV files, read whole into tensors (the in-memory path).

``data.source`` names a file, a folder of files, or a glob, on this machine or at a URI
pyarrow reads (``s3://...``). ``data.label`` is the label column; ``data.features`` the
feature columns (default: every other column). What the model needs to know about the
table is inferred here, once, in the driver, and kept in the config's ``schema`` section,
so the checkpoint and the registry version carry it and every worker, evaluation and
server applies the same:

* the classes: the label values of the training rows, sorted, as text;
* the input size: the number of feature columns;
* the preprocessing: each feature standardised with the mean and standard deviation of
  the training rows only (a constant column is centred, not scaled).

Rows are split with ``data.seed``: ``data.test_fraction`` for the final test, then
``data.val_fraction`` of the rest for validation, the same whatever the number of workers.
Features must be numeric (integers, floats, booleans): any other column is refused,
naming it, rather than encoded by a guess. A bad table exits 2 before anything is written.
"""

from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlp.config import DataConfig, SchemaConfig
from mlp.console import CommandError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


class DataError(CommandError):
    """The table cannot train a classifier as asked; the message names the file or column and the fix."""

    exit_code = 2


@dataclass
class Table:
    """Features as float32 [N, F], labels as text, and the files they came from."""

    x: torch.Tensor
    labels: list[str]
    features: list[str]
    files: list[str]


def table_files(source: str) -> tuple[list[str], str]:
    """(files, format) of a source: one file, a folder's files, or a glob; every one of one format."""
    if "://" in source:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(source)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
            names = [f"{source.rstrip('/')}/{i.base_name}" for i in infos if i.type == pafs.FileType.File]
        else:
            names = [source] if info.type == pafs.FileType.File else []
    elif os.path.isdir(source):
        names = [os.path.join(source, n) for n in sorted(os.listdir(source))]
    else:
        names = sorted(glob.glob(os.path.expanduser(source)))
    names = sorted(n for n in names if os.path.splitext(n)[1].lower() in FORMATS)
    if not names:
        raise DataError(f"data.source {source}: no Parquet or CSV file there (looked for {', '.join(FORMATS)})")
    kinds = {FORMATS[os.path.splitext(n)[1].lower()] for n in names}
    if len(kinds) > 1:
        raise DataError(f"data.source {source}: mixes Parquet and CSV files; point it at one kind")
    return names, kinds.pop()


def read_file(name: str, fmt: str) -> Any:
    """One file as a pyarrow Table (any URI pyarrow knows)."""
    import pyarrow.csv as pacsv
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = pafs.FileSystem.from_uri(name) if "://" in name else (pafs.LocalFileSystem(), os.path.abspath(name))
    try:
        if fmt == "parquet":
            return pq.read_table(path, filesystem=fs)
        with fs.open_input_stream(path) as stream:
            return pacsv.read_csv(stream)
    except Exception as err:  # noqa: BLE001 - an empty or damaged file: say which
        raise DataError(f"cannot read {name} as {fmt}: {' '.join(str(err).split())[:300]}") from None


@functools.lru_cache(maxsize=4)
def read_table(source: str, label: str, features: tuple[str, ...]) -> Table:
    """The whole table, checked: same columns in every file, the label present, numeric features."""
    import pyarrow as pa
    import pyarrow.types as pat

    names, fmt = table_files(source)
    parts = [read_file(name, fmt) for name in names]
    first = parts[0].schema
    for name, part in zip(names[1:], parts[1:]):
        if part.schema.names != first.names:
            raise DataError(f"{name} has columns {part.schema.names}, but {names[0]} has {first.names}: "
                            f"every file of data.source must have the same columns")
    if label not in first.names:
        raise DataError(f"data.label: no column {label!r} in {names[0]} (columns: {', '.join(first.names)}); "
                        f"name the label column with --data.label")
    chosen = list(features) or [c for c in first.names if c != label]
    missing = [c for c in chosen if c not in first.names]
    if missing or label in chosen or not chosen:
        raise DataError(f"data.features: {missing or [label] if chosen else 'none'} cannot be features of "
                        f"{names[0]} (columns: {', '.join(first.names)}; the label is {label!r})")
    table = pa.concat_tables(parts, promote_options="permissive")
    if table.num_rows == 0:
        raise DataError(f"data.source {source}: {', '.join(names)} hold no rows")
    for column in chosen:
        kind = table.schema.field(column).type
        if not (pat.is_integer(kind) or pat.is_floating(kind) or pat.is_boolean(kind)):
            raise DataError(f"feature column {column!r} of {names[0]} is {kind}, not numeric: encode it as numbers, "
                            f"or leave it out with --data.features")
    columns = [table.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False) for c in chosen]
    x = torch.tensor(np.stack(columns, axis=1), dtype=torch.float32)
    if torch.isnan(x).any():
        bad = chosen[int(torch.isnan(x).any(dim=0).nonzero()[0])]
        raise DataError(f"feature column {bad!r} of {source} has empty or NaN values: fill or drop them")
    labels = [str(v) for v in table.column(label).to_pylist()]
    return Table(x, labels, chosen, names)


def split_rows(n: int, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, test) row indices: seeded, so every worker and every rerun cuts the same."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    n_test = max(1, int(n * cfg.test_fraction))
    n_val = max(1, int((n - n_test) * cfg.val_fraction))
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]


def infer_schema(cfg: DataConfig) -> SchemaConfig:
    """Features, classes and the standardisation of ``cfg.source``, fitted on the training rows only."""
    table = read_table(cfg.source, cfg.label, tuple(cfg.features))
    train, val, test = split_rows(len(table.labels), cfg)
    classes = sorted({table.labels[i] for i in train.tolist()})
    if len(classes) < 2:
        raise DataError(f"data.label {cfg.label!r}: the training rows of {cfg.source} hold one class only "
                        f"({classes[0]!r}); a classifier needs at least two")
    unseen = sorted({table.labels[i] for i in torch.cat([val, test]).tolist()} - set(classes))
    if unseen:
        raise DataError(f"data.label {cfg.label!r}: the validation or test rows of {cfg.source} hold labels "
                        f"training never sees ({', '.join(unseen[:5])}): add rows of those classes, or drop them")
    rows = table.x[train]
    std = rows.std(dim=0, unbiased=False)
    return SchemaConfig(input_size=len(table.features), classes=classes, features=table.features,
                        mean=rows.mean(dim=0).tolist(), std=torch.where(std > 0, std, 1.0).tolist())


def standardised(x: torch.Tensor, schema: SchemaConfig) -> torch.Tensor:
    """Features as the model sees them: (x - mean) / std with the training rows' figures."""
    return (x - torch.tensor(schema.mean)) / torch.tensor(schema.std)


def load_rows(cfg: DataConfig, schema: SchemaConfig, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split (``train``, ``val`` or ``test``) as model inputs and class indices."""
    table = read_table(cfg.source, cfg.label, tuple(cfg.features))
    rows = dict(zip(("train", "val", "test"), split_rows(len(table.labels), cfg)))[part]
    index = {name: i for i, name in enumerate(schema.classes)}
    unknown = sorted({table.labels[i] for i in rows.tolist()} - set(index))
    if unknown:
        raise DataError(f"{part} rows of {cfg.source} hold labels the model was not built for: {unknown[:5]}")
    y = torch.tensor([index[table.labels[i]] for i in rows.tolist()], dtype=torch.long)
    return standardised(table.x[rows], schema), y
