"""Your own pictures as a dataset: a folder with one subfolder per class (torchvision's ``ImageFolder`` layout).

``data.source`` names the folder, on this machine or at a URI pyarrow reads (``s3://...``)::

    shoes/
      Sandal/   a.png  b.jpg  ...
      Sneaker/  c.png  more/d.jpeg  ...

The classes are the subfolders' names, sorted; a class's pictures are the PNG and JPEG
files anywhere under its folder (by extension; other files, and names starting with a
dot such as ``.DS_Store``, are ignored). Every picture is decoded by ``mlp.images``, the
rule the endpoint and ``mlp predict`` apply to uploads, into 28x28 grayscale: a picture
already 28x28 is used exactly as saved, any other size is framed by its box. Pixels are
then scaled as the built-in datasets are (``mlp.images.to_model_input``, uint8 / 255) and
not standardised, so the schema carries the classes only.

Pictures are split with ``data.seed``, ``data.test_fraction`` and ``data.val_fraction``
exactly as a table's rows are (``mlp.tables.split_codes``: a seeded hash of the model
input, so a picture saved twice lands in one split); ``data.test_source`` may name a
second image folder for the final test. Decoded once per process and kept in memory. A bad folder exits 2 before anything is written, naming
the folder or file.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlp.config import DataConfig, SchemaConfig
from mlp.images import (
    IMAGE_FOLDER_FRAMING,
    SIDE,
    ImageError,
    decode,
    to_model_input,
    to_pixels,
)
from mlp.tables import FORMATS as TABLE_FORMATS
from mlp.tables import TEST, TRAIN, VAL, DataError, split_codes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Far above the endpoint's upload cap: a folder is the user's own data, not a stranger's upload,
# but a picture this large (a 7000x7000 scan) is a mistake worth naming rather than minutes of decoding.
MAX_PIXELS = 50_000_000
READ_THREADS = 8  # files are read (and decoded) a few at a time: a bucket answers each read slowly


@dataclass(frozen=True)
class ImageFolder:
    """Every picture of the folder: uint8 [N, 28, 28], class indices [N], the class names and the files."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    files: list[str]


def _filesystem(source: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) for a local folder or a URI."""
    import pyarrow.fs as pafs

    if "://" in source:
        return pafs.FileSystem.from_uri(source)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(source))


def _hidden(relative: str) -> bool:
    """A dot name anywhere on the way (``.DS_Store``, ``._a.png``, ``.ipynb_checkpoints/``): not the user's picture."""
    return any(part.startswith(".") for part in relative.split("/"))


def is_image_folder(source: str) -> bool:
    """True when ``source`` is a folder (or URI folder) without a Parquet or CSV file at its top.

    Such a folder is taken for an image folder, so that one with no class subfolders is told
    what was expected; a file, a glob, a folder of tables or a path that is not there is a table.
    """
    import pyarrow.fs as pafs

    try:
        fs, path = _filesystem(source)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return False
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except (OSError, ValueError):  # an unknown scheme, no permission: the table reader names the problem
        return False
    return not any(e.type == pafs.FileType.File and os.path.splitext(e.base_name)[1].lower() in TABLE_FORMATS
                   for e in entries)


def _class_files(source: str) -> dict[str, list[str]]:
    """{class name: its picture files, sorted} for every class subfolder, classes sorted by name."""
    import pyarrow.fs as pafs

    fs, path = _filesystem(source)
    top = [e for e in fs.get_file_info(pafs.FileSelector(path, recursive=False)) if not _hidden(e.base_name)]
    folders = sorted(e.base_name for e in top if e.type == pafs.FileType.Directory)
    expected = "one subfolder per class holding its PNG or JPEG pictures (or Parquet / CSV files for a table)"
    if not top:
        raise DataError(f"data.source {source} is an empty folder: it needs {expected}")
    if len(folders) < 2:
        found = f"only the class folder {folders[0]!r}" if folders else "no subfolder"
        raise DataError(f"data.source {source} has {found}: an image folder needs {expected}, "
                        f"and a classifier at least two classes")
    classes = {}
    for name in folders:
        entries = fs.get_file_info(pafs.FileSelector(f"{path.rstrip('/')}/{name}", recursive=True))
        classes[name] = sorted(e.path for e in entries if e.type == pafs.FileType.File
                               and os.path.splitext(e.base_name)[1].lower() in IMAGE_EXTENSIONS
                               and not _hidden(e.path[len(path.rstrip('/')) + 1:]))
        if not classes[name]:
            raise DataError(f"class folder {_shown(source, path, name)} holds no PNG or JPEG picture "
                            f"({', '.join(IMAGE_EXTENSIONS)}): add pictures of class {name!r}, or remove the folder")
    return classes


def _shown(source: str, path: str, inner: str) -> str:
    """A file or folder under ``source`` as the user would write it (the URI, not the bucket path)."""
    return f"{source.rstrip('/')}/{inner[len(path.rstrip('/')) + 1:] if inner.startswith(path) else inner}"


def _decode_file(fs: Any, source: str, path: str, file: str) -> np.ndarray:
    """One picture file -> uint8 [28, 28] by the image rule; an undecodable one is named."""
    try:
        with fs.open_input_file(file) as stream:
            data = stream.read()
        return to_pixels(decode(data, MAX_PIXELS), IMAGE_FOLDER_FRAMING)
    except (ImageError, OSError) as err:
        raise DataError(f"cannot use the picture {_shown(source, path, file)}: {err}; "
                        f"re-save it as PNG or JPEG, or remove it") from None


@functools.lru_cache(maxsize=4)
def read_folder(source: str) -> ImageFolder:
    """Every picture of ``source``, decoded once per process (workers, evaluation and the driver each hold one)."""
    classes = _class_files(source)
    fs, path = _filesystem(source)
    files = [f for names in classes.values() for f in names]
    labels = [i for i, names in enumerate(classes.values()) for _ in names]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        pixels = list(pool.map(lambda f: _decode_file(fs, source, path, f), files))
    images = torch.from_numpy(np.stack(pixels)).reshape(len(files), SIDE, SIDE)
    return ImageFolder(images, torch.tensor(labels, dtype=torch.long), list(classes),
                       [_shown(source, path, f) for f in files])


def _splits(folder: ImageFolder, cfg: DataConfig) -> np.ndarray:
    """TRAIN, VAL or TEST per picture: the tables' seeded hash of the model input, so a copy shares its split."""
    return split_codes(to_model_input(folder.images).numpy(), cfg)


def _test_folder(cfg: DataConfig, classes: list[str]) -> ImageFolder:
    """``data.test_source``: a second image folder, every picture a test picture, its classes among the model's."""
    test = read_folder(cfg.test_source)
    unknown = sorted(set(test.classes) - set(classes))
    if unknown:
        raise DataError(f"data.test_source {cfg.test_source} has class folders {unknown} that "
                        f"data.source {cfg.source} does not have: the model knows {classes}")
    return test


def resolve(cfg: DataConfig) -> tuple[DataConfig, SchemaConfig, str]:
    """(config, schema, one line for the log) for an image folder, checked before anything is written.

    The schema holds the classes (the subfolders' names) and 784 inputs, no standardisation
    (``data.normalize`` is for tables: pictures are scaled as the built-ins are). Workers
    hold the decoded pictures in memory (``data.ingest memory``).
    """
    if cfg.ingest == "stream":
        raise DataError(f"data.ingest stream: the image folder {cfg.source} is held in each worker's memory "
                        f"(data.ingest memory or auto)")
    folder = read_folder(cfg.source)
    codes = _splits(folder, cfg)
    counts = {name: int((codes == code).sum()) for name, code in (("train", TRAIN), ("val", VAL), ("test", TEST))}
    if cfg.test_source:
        counts["test"] = len(_test_folder(cfg, folder.classes).files)
    missing = sorted(set(folder.classes) - {folder.classes[i] for i in folder.labels[codes == TRAIN].tolist()})
    if missing:
        raise DataError(f"data.source {cfg.source}: no picture of {', '.join(missing)} falls in the training rows "
                        f"(too few pictures for data.test_fraction and data.val_fraction): add pictures")
    if not counts["val"] or not counts["test"]:
        raise DataError(f"data.source {cfg.source}: too few pictures for a validation and a test split "
                        f"({counts['train']} train, {counts['val']} validation, {counts['test']} test)")
    line = (f"data: {cfg.name}: {counts['train']:,} training, {counts['val']:,} validation, {counts['test']:,} test "
            f"pictures; {len(folder.classes)} classes ({', '.join(folder.classes[:10])}"
            f"{', ...' if len(folder.classes) > 10 else ''}), 28x28 grayscale; each worker holds them in memory")
    schema = SchemaConfig(input_size=SIDE * SIDE, classes=folder.classes)
    return dataclasses.replace(cfg, ingest="memory"), schema, line


def load_split(cfg: DataConfig, part: str,
               schema: SchemaConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One split (``train``, ``val`` or ``test``) as float [N, 784] in [0, 1] and class indices."""
    folder = read_folder(cfg.source)
    classes = schema.classes if schema is not None and schema.classes else folder.classes
    if classes != folder.classes:
        raise DataError(f"the class folders of {cfg.source} are now {folder.classes}, but the model was built "
                        f"for {classes}: train a new model on the folder as it is")
    if part == "test" and cfg.test_source:
        test = _test_folder(cfg, classes)
        index = torch.tensor([classes.index(name) for name in test.classes], dtype=torch.long)
        return to_model_input(test.images), index[test.labels]
    keep = torch.from_numpy(_splits(folder, cfg) == {"train": TRAIN, "val": VAL, "test": TEST}[part])
    return to_model_input(folder.images[keep]), folder.labels[keep]
