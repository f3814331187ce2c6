"""Your own table as a dataset: Parquet or CSV files, checked, split and turned into model rows.

``data.source`` names a file, a folder of files, or a glob, on this machine or at a URI
pyarrow reads (``s3://...``). ``data.label`` is the label column; ``data.features`` the
feature columns (default: every other column). What the model needs to know about the
table is inferred here, once, in the driver, by one streaming pass over the files (memory
stays bounded, whatever the table's size), and kept in the config's ``schema`` section,
so the checkpoint and the registry version carry it and every worker, evaluation and
server applies the same:

* the classes: the label values of the training rows, sorted, as text;
* the input size: the number of feature columns;
* the preprocessing (``data.normalize standard``): each feature standardised with the mean
  and standard deviation of the training rows only (a constant column is centred, not
  scaled); ``none`` keeps the numbers as they are.

Each row's split is a seeded hash of its feature values (``split_codes``), not of its
position: the same row lands in the same split whether the table is read whole, streamed
in blocks through Ray Data, or cut into any number of worker shards. ``data.test_fraction``
of the rows is the final test (or all of ``data.test_source``), ``data.val_fraction`` of
the rest validation. Features must be numeric (integers, floats, booleans): any other
column is refused, naming it, rather than encoded by a guess. A bad table exits 2 before
anything is written.
"""

from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch

from mlp.config import DataConfig, SchemaConfig
from mlp.console import CommandError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
SCAN_ROWS = 65_536  # rows per batch of the streaming pass: a few MB at a time
TRAIN, VAL, TEST = 0, 1, 2


class DataError(CommandError):
    """The table cannot train a classifier as asked; the message names the file or column and the fix."""

    exit_code = 2


@dataclass(frozen=True)
class TableFiles:
    """A checked table: its files, their format, and the columns to read."""

    files: tuple[str, ...]
    fmt: str
    label: str
    features: tuple[str, ...]


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


def open_file(name: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(name) if "://" in name else (pafs.LocalFileSystem(), os.path.abspath(name))


def _failed(name: str, fmt: str, err: Exception) -> DataError:
    return DataError(f"cannot read {name} as {fmt}: {' '.join(str(err).split())[:300]}")


def file_schema(name: str, fmt: str) -> Any:
    """A file's columns and types, from its footer (Parquet) or its first block (CSV): no full read."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = open_file(name)
    try:
        if fmt == "parquet":
            return pq.read_schema(path, filesystem=fs)
        with fs.open_input_stream(path) as stream:
            return pacsv.open_csv(stream).schema
    except Exception as err:  # noqa: BLE001
        raise _failed(name, fmt, err) from None


def check_table(source: str, label: str, features: tuple[str, ...]) -> TableFiles:
    """The files of ``source`` and the columns to read, refused naming the file or column when they cannot train."""
    import pyarrow.types as pat

    names, fmt = table_files(source)
    schemas = [file_schema(name, fmt) for name in names]
    first = schemas[0]
    for name, schema in zip(names[1:], schemas[1:]):
        if schema.names != first.names:
            raise DataError(f"{name} has columns {schema.names}, but {names[0]} has {first.names}: "
                            f"every file of data.source must have the same columns")
    if label not in first.names:
        raise DataError(f"data.label: no column {label!r} in {names[0]} (columns: {', '.join(first.names)}); "
                        f"name the label column with --data.label")
    chosen = list(features) or [c for c in first.names if c != label]
    missing = [c for c in chosen if c not in first.names]
    if missing or label in chosen or not chosen:
        raise DataError(f"data.features: {missing or [label] if chosen else 'none'} cannot be features of "
                        f"{names[0]} (columns: {', '.join(first.names)}; the label is {label!r})")
    for name, schema in zip(names, schemas):
        for column in chosen:
            kind = schema.field(column).type
            if not (pat.is_integer(kind) or pat.is_floating(kind) or pat.is_boolean(kind) or pat.is_null(kind)):
                raise DataError(f"feature column {column!r} of {name} is {kind}, not numeric: encode it as numbers, "
                                f"or leave it out with --data.features")
    return TableFiles(tuple(names), fmt, label, tuple(chosen))


def scan(table: TableFiles, rows: int = SCAN_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features float64 [B, F], labels as text [B]) batch by batch, one file after another, never all at once."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    columns = [*table.features, table.label]
    for name in table.files:
        fs, path = open_file(name)
        try:
            if table.fmt == "parquet":
                batches = pq.ParquetFile(path, filesystem=fs).iter_batches(batch_size=rows, columns=columns)
                yield from (arrays(b, table, name) for b in batches)
                continue
            with fs.open_input_stream(path) as stream:
                yield from (arrays(b, table, name) for b in pacsv.open_csv(stream, convert_options=csv_types(table)))
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged file, a value that is not a number
            raise _failed(name, table.fmt, err) from None


def csv_types(table: TableFiles) -> Any:
    """CSV conversion that reads every feature as a number and the label as text, whatever a block looks like."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types={**{c: pa.float64() for c in table.features}, table.label: pa.string()},
                                include_columns=[*table.features, table.label])


def arrays(batch: Any, table: TableFiles, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One Arrow batch (or a dict of columns) as (features float64 [B, F], labels as text); NaN refused by column."""
    columns = [np.asarray(batch[c], dtype=np.float64) for c in table.features]
    x = np.stack(columns, axis=1) if columns else np.zeros((0, 0))
    bad = np.isnan(x).any(axis=0)
    if bad.any():
        raise DataError(f"feature column {table.features[int(bad.argmax())]!r} of {where} has empty or NaN values: "
                        f"fill or drop them")
    labels = batch[table.label]
    labels = labels.to_pylist() if hasattr(labels, "to_pylist") else list(labels)
    return x, np.array([str(v) for v in labels], dtype=object)


def split_codes(x: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """TRAIN, VAL or TEST for each row, from a seeded hash of its feature values.

    A function of the row alone, so every reader (whole table, Ray Data blocks, any number
    of workers) cuts the same; identical rows share a split, so none leaks into the test.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)  # float32: what every path holds
    with np.errstate(over="ignore"):
        # One odd 64-bit weight per column, summed modulo 2**64: rows that differ anywhere differ here;
        # a C matrix product, several times faster than mixing column by column.
        h = bits.astype(np.uint64) @ _weights(bits.shape[1]) if bits.shape[1] else np.zeros(len(x), np.uint64)
        h = _mix(h ^ _mix(np.full(len(x), cfg.seed, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)))
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    test = 0.0 if cfg.test_source else cfg.test_fraction
    val = test + (1 - test) * cfg.val_fraction
    return np.where(u < test, TEST, np.where(u < val, VAL, TRAIN)).astype(np.int8)


@functools.lru_cache(maxsize=8)
def _weights(columns: int) -> np.ndarray:
    """Fixed odd weights: the same in every process and release, so a row's split never changes."""
    return np.random.default_rng(0x5EED).integers(0, 2**63, columns, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def parts_of(cfg: DataConfig) -> list[tuple[TableFiles, Optional[int]]]:
    """(table, split to keep or None for "by hash") for each table the config names: the source, then its test table."""
    source = check_table(cfg.source, cfg.label, tuple(cfg.features))
    if not cfg.test_source:
        return [(source, None)]
    test = check_table(cfg.test_source, cfg.label, source.features)
    return [(source, None), (test, TEST)]


def coded_rows(cfg: DataConfig) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(features, labels, split code per row), batch by batch over the source and then its test table."""
    for table, fixed in parts_of(cfg):
        for x, labels in scan(table):
            yield x, labels, np.full(len(x), fixed, dtype=np.int8) if fixed is not None else split_codes(x, cfg)


def rows_of(cfg: DataConfig, part: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows of one split (TRAIN, VAL or TEST), streamed batch by batch."""
    for x, labels, codes in coded_rows(cfg):
        keep = codes == part
        if keep.any():
            yield x[keep], labels[keep]


def infer_schema(cfg: DataConfig) -> tuple[SchemaConfig, dict[str, int]]:
    """The schema of ``cfg.source`` (features, classes, preprocessing fitted on training rows), and rows per split.

    One pass over the files, a batch at a time: the driver never holds the table.
    """
    features = parts_of(cfg)[0][0].features
    counts, total, squares = {TRAIN: 0, VAL: 0, TEST: 0}, np.zeros(len(features)), np.zeros(len(features))
    seen: dict[int, set[str]] = {TRAIN: set(), VAL: set(), TEST: set()}
    for x, labels, codes in coded_rows(cfg):
        for part in (TRAIN, VAL, TEST):
            keep = codes == part
            counts[part] += int(keep.sum())
            seen[part].update(labels[keep].tolist())
        train = x[codes == TRAIN]
        total += train.sum(axis=0)
        squares += np.square(train).sum(axis=0)
    where = f"{cfg.source}" + (f" and {cfg.test_source}" if cfg.test_source else "")
    if not counts[TRAIN]:
        raise DataError(f"data.source {where}: no training rows (an empty table, or fractions that leave none)")
    classes = sorted(seen[TRAIN])
    if len(classes) < 2:
        raise DataError(f"data.label {cfg.label!r}: the training rows of {cfg.source} hold one class only "
                        f"({classes[0]!r}); a classifier needs at least two")
    unseen = sorted((seen[VAL] | seen[TEST]) - set(classes))
    if unseen:
        raise DataError(f"data.label {cfg.label!r}: the validation or test rows of {where} hold labels "
                        f"training never sees ({', '.join(unseen[:5])}): add rows of those classes, or drop them")
    if not counts[VAL] or not counts[TEST]:
        raise DataError(f"data.source {where}: too few rows for a validation and a test split "
                        f"({counts[TRAIN]} train, {counts[VAL]} validation, {counts[TEST]} test)")
    mean = total / counts[TRAIN]
    std = np.sqrt(np.maximum(squares / counts[TRAIN] - np.square(mean), 0.0))
    if cfg.normalize == "none":
        mean, std = np.zeros(len(features)), np.ones(len(features))
    schema = SchemaConfig(input_size=len(features), classes=classes, features=list(features),
                          mean=mean.tolist(), std=np.where(std > 1e-12, std, 1.0).tolist())
    return schema, {"train": counts[TRAIN], "val": counts[VAL], "test": counts[TEST]}


def standardised(x: torch.Tensor, schema: SchemaConfig) -> torch.Tensor:
    """Features as the model sees them: (x - mean) / std with the training rows' figures."""
    return (x - torch.tensor(schema.mean)) / torch.tensor(schema.std)


def model_rows(x: np.ndarray, labels: np.ndarray, schema: SchemaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rows as (model input float32, class index): the one conversion every path applies."""
    index = {name: i for i, name in enumerate(schema.classes)}
    unknown = sorted(set(labels.tolist()) - set(index))
    if unknown:
        raise DataError(f"rows hold labels the model was not built for: {unknown[:5]}")
    y = torch.tensor([index[v] for v in labels.tolist()], dtype=torch.long)
    return standardised(torch.as_tensor(x, dtype=torch.float32), schema), y


@functools.lru_cache(maxsize=4)
def read_table(source: str, label: str, features: tuple[str, ...]) -> Table:
    """The whole table in memory, checked (what ``data.ingest memory`` holds in each worker)."""
    table = check_table(source, label, features)
    xs, labels = zip(*scan(table)) if table.files else ((), ())
    x = np.concatenate(xs) if xs else np.zeros((0, len(table.features)))
    if not len(x):
        raise DataError(f"data.source {source}: {', '.join(table.files)} hold no rows")
    return Table(torch.as_tensor(x, dtype=torch.float32), np.concatenate(labels).tolist(), list(table.features),
                 list(table.files))


def load_rows(cfg: DataConfig, schema: SchemaConfig, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split (``train``, ``val`` or ``test``) in memory, as model inputs and class indices."""
    if part == "test" and cfg.test_source:
        whole = read_table(cfg.test_source, cfg.label, tuple(schema.features))
        return model_rows(whole.x.numpy(), np.array(whole.labels, dtype=object), schema)
    whole = read_table(cfg.source, cfg.label, tuple(cfg.features))
    keep = split_codes(whole.x.numpy(), cfg) == {"train": TRAIN, "val": VAL, "test": TEST}[part]
    return model_rows(whole.x.numpy()[keep], np.array(whole.labels, dtype=object)[keep], schema)
