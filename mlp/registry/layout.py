"""The model registry's layout on storage: promoted models as numbered, immutable version folders, on any storage.

Layout (``<registry>`` is a local folder or a URI such as ``s3://bucket/registry``)::

    <registry>/<model name>/v<N>/model.pt          weights (torch.load(weights_only=True))
                                 config.json       the resolved config
                                 metrics.json      val/test accuracy, loss, epochs, time-to-accuracy
                                 provenance.json   dataset, seed, trial id, code and library versions
    <registry>/<model name>/latest                 a pointer file holding e.g. ``v3``
    <registry>/<model name>/latest.history         latest's moves, one JSON line each (what rollback undoes)
    <registry>/<model name>/aliases/<NAME>         more pointer files (``champion``, ``candidate``, ...)

Why it is built this way:

* A promotion is visible whole or not at all. On a disk the version is
  assembled in a hidden folder and renamed into place. An object store has no
  rename, so the files are uploaded one by one with ``provenance.json`` last,
  and a version counts (``list_versions``, ``resolve_version``) only once its
  ``provenance.json`` exists. ``latest`` moves only after that.
* ``latest`` is a small file, not a symlink: object stores have no links and a
  pointer read is one small request, so a replica can poll it every second.
  Registries written when ``latest`` was a symlink to ``v<N>`` still read.
* Aliases are pointer files like ``latest`` that only people (``mlp-registry alias set``) move;
  wherever a version is asked for (``serve.version``, ``resolve_version``) ``latest``, ``vN``
  and an alias name all work. ``latest`` is the one that promotions move, and
  ``latest.history`` (rewritten whole, as an object store needs) lets ``rollback`` put it back.
* Versions never change once complete, so a node that serves a remote registry
  downloads each version once into its cache (``$MLP_CACHE_DIR``, default
  ``~/.cache/mlp``) and loads from there.

This module holds the names and the checks every part of the registry shares;
``mlp.registry.pointers`` moves ``latest`` and the aliases, ``mlp.registry.versions``
adds, fetches and describes versions, and ``mlp.registry.cli`` is ``mlp registry``.
Train (``--promote``) and Tune write here; Serve only reads.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar, Union

from mlp.registry.storage import Location, local_path

PathLike = Union[str, Path]
VersionDir = Union[Path, Location]  # a Path when the registry is on this machine's disk, else a Location
_VERSION = re.compile(r"^v(\d+)$")
COPIED_FILES = ("model.pt", "config.json")
COMPLETE_MARKER = "provenance.json"  # written last: its presence means the version is complete
LATEST = "latest"
ALIASES = "aliases"  # <model>/aliases/<NAME>: one pointer file per alias
HISTORY = "latest.history"  # <model>/latest.history: latest's moves, oldest first
HISTORY_KEEP = 100  # moves kept in the history: rollback needs the recent ones only
NO_MODEL_FIX = "train with --promote or run a sweep first (or pass a checkpoint folder explicitly)"
T = TypeVar("T")


class RegistryError(ValueError):
    """A registry request that cannot be done as asked (a reserved alias name, an incomplete version,
    nothing to roll back to); the message says what is wrong and how to fix it."""


def model_location(root: PathLike, model_name: str) -> Location:
    return Location.of(root) / model_name


def model_dir(root: PathLike, model_name: str) -> VersionDir:
    """The model's folder: a ``Path`` for a local registry (as before), a ``Location`` for a URI."""
    return _as_dir(model_location(root, model_name))


def _as_dir(location: Location) -> VersionDir:
    local = local_path(location.uri)
    return Path(local) if local is not None else location


def _numbers(names: list[str]) -> list[int]:
    return sorted(int(m.group(1)) for name in names if (m := _VERSION.match(name)))


def is_version_number(name: str) -> bool:
    """True for a version folder's name (``v3``): a pin that never moves, unlike ``latest`` or an alias."""
    return _VERSION.match(name) is not None


def _complete_numbers(files: list[str]) -> list[int]:
    """Numbers of the complete versions among a model folder's files (``v3/provenance.json`` present)."""
    return _numbers([path.split("/")[0] for path in files if path.count("/") == 1
                     and path.endswith("/" + COMPLETE_MARKER)])


def list_versions(root: PathLike, model_name: str) -> list[int]:
    """Numbers of the complete versions (``provenance.json`` present); one listing on a bucket."""
    return _complete_numbers(model_location(root, model_name).list_files())


def _known_versions(root: PathLike, model_name: str) -> str:
    return ", ".join(f"v{n}" for n in list_versions(root, model_name)) or "none"


def _require_complete(root: PathLike, model_name: str, version: str) -> Location:
    """The folder of version ``vN``, refused with the complete versions named when it is not complete."""
    path = model_location(root, model_name) / version
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete registry version (versions: "
                                f"{_known_versions(root, model_name)}); pick one of those, or {NO_MODEL_FIX}")
    return path


def _in_parallel(calls: list[Callable[[], T]]) -> list[T]:
    """Results of independent small reads, in order; concurrent, since each is a round trip on a bucket."""
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
        return list(pool.map(lambda call: call(), calls))


def read_json_lines(location: Location) -> list[Any]:
    """The JSON values of a line-per-record file (a history, a decision log), oldest first; [] when it is
    missing. A line that does not parse is skipped: one damaged record must not hide the others."""
    try:
        lines = location.read_text().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _read_json(location: Location) -> dict[str, Any]:
    """A version's small JSON file, or {} when it is missing or damaged (a listing must not stop at one)."""
    try:
        data = json.loads(location.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
