"""Registry versions: promote a checkpoint into the next ``v<N>``, fetch a version to load, describe them all.

A promotion is visible whole or not at all (a renamed staging folder on a disk; on an
object store ``provenance.json`` uploaded last, after a claimed number). Versions never
change once complete, so a node serving a remote registry downloads each one once
into its cache and loads from there.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from mlp.config import VERSION_NAME, Config
from mlp.procs import pid_alive
from mlp.registry.layout import (ALIASES, COMPLETE_MARKER, COPIED_FILES, LATEST, PathLike, VersionDir, _as_dir,
                                 _complete_numbers, _in_parallel, _known_versions, _numbers, _read_json,
                                 is_version_number, model_location)
from mlp.registry.pointers import _alias_pointer, _move_latest, _pointers, locate_version
from mlp.registry.storage import Location, cache_key, cache_root, cached_copy, local_path, normalize

log = logging.getLogger(__name__)


_verified: set[Path] = set()  # cached versions this process has checked against the registry


def resolve_version(root: PathLike, model_name: str, version: str = LATEST) -> Path:
    """A local folder holding ``version`` (``latest``, ``vN`` or an alias), ready for ``load_model``.

    A local registry's folder is returned as is. A remote version is downloaded once into
    this node's cache and reused; a pinned ``vN`` already checked by this process costs
    no request at all, and ``latest`` or an alias costs one pointer read.
    """
    remote = local_path(normalize(root)) is None
    if remote and is_version_number(version):
        cached = _cache_dir(root, model_name, version)
        if cached in _verified:
            return cached
    location = locate_version(root, model_name, version)
    if not remote:
        return _complete_local(root, model_name, version, Path(local_path(location.uri)))
    return _cached_version(root, model_name, location)


def _complete_local(root: PathLike, model_name: str, version: str, folder: Path) -> Path:
    """``folder`` if it holds a whole version; else an error naming the missing file (a few stats, no reads).

    Promotions rename a complete folder into place, so a gap here means the registry was damaged
    after the fact (a file deleted, a pointer edited by hand): refuse it before anything loads.
    """
    if not folder.is_dir():
        pointer = (model_location(root, model_name) / LATEST if version == LATEST
                   else _alias_pointer(root, model_name, version))
        via = "" if is_version_number(version) else f"{pointer} points at {folder.name}, but "
        fix = "ask for one of those" if is_version_number(version) else f"point {version} at one of those"
        raise FileNotFoundError(f"{via}{folder} does not exist (complete versions: "
                                f"{_known_versions(root, model_name)}): {fix}, or promote the model again")
    # A legacy registry's copied ``latest`` folder may predate provenance.json; it still needs the model.
    required = COPIED_FILES if folder.name == LATEST else (*COPIED_FILES, COMPLETE_MARKER)
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"registry version {folder} is broken: {', '.join(missing)} missing "
                                f"({folder / missing[0]}); promote the model again or serve another version")
    return folder


def _cache_dir(root: PathLike, model_name: str, version: str) -> Path:
    return cache_root() / "models" / cache_key(root) / model_name / version


def _cached_version(root: PathLike, model_name: str, location: Location) -> Path:
    """The cached copy of a remote version; downloaded when absent or not the registry's own."""
    target = _cache_dir(root, model_name, location.name)
    if target in _verified:
        return target
    if target.is_dir() and not _same_version(target, location):
        # the registry was rewritten under the same URI (e.g. wiped and promoted again): refetch
        stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:8]}")
        os.rename(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        cached_copy(location, target)
    except FileNotFoundError:
        raise FileNotFoundError(f"{location} is missing although {location.name} was promoted there: "
                                f"promote the model again or point {LATEST} at an existing version") from None
    missing = [name for name in (*COPIED_FILES, COMPLETE_MARKER) if not (target / name).is_file()]
    if missing:
        shutil.rmtree(target, ignore_errors=True)
        raise FileNotFoundError(f"{location} is incomplete ({', '.join(missing)} missing): promote the model again")
    _verified.add(target)
    return target


def _same_version(cached: Path, location: Location) -> bool:
    """Whether a cached copy is this registry's version: its provenance (unique per promotion) matches."""
    try:
        return (cached / COMPLETE_MARKER).read_bytes() == (location / COMPLETE_MARKER).read_bytes()
    except FileNotFoundError:
        return False


def promote(root: PathLike, model_name: str, checkpoint_dir: PathLike,
            metrics: dict[str, Any], provenance: dict[str, Any], move_latest: bool = True) -> VersionDir:
    """Copy a local checkpoint folder into the next ``v<N>`` and point ``latest`` at it (a recorded move).

    ``move_latest=False`` only adds the version: a gated rollout (``mlp pipeline --rollout``) leaves
    ``latest`` to the gate, so no replica serves the new version before it is judged.

    Returns the new version: a ``Path`` for a local registry, a ``Location`` for a URI
    (both have ``.name`` and ``str()``). Nothing becomes visible if it fails part-way.
    """
    source = Path(checkpoint_dir)
    missing = [name for name in COPIED_FILES if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{source} is not a checkpoint: {', '.join(missing)} missing; nothing promoted")
    folder = model_location(root, model_name)
    promote_to = _promote_local if folder.is_local else _promote_remote
    number = promote_to(folder, source, metrics, provenance)
    if move_latest:
        _move_latest(folder, f"v{number}", "promote")
    return _as_dir(folder / f"v{number}")


def _provenance_text(provenance: dict[str, Any], number: int) -> str:
    # promotion_id makes every promotion's provenance unique, which is how caches tell versions apart
    return json.dumps({**provenance, "version": f"v{number}", "promotion_id": uuid.uuid4().hex}, indent=2)


def _promote_local(folder: Location, source: Path, metrics: dict[str, Any], provenance: dict[str, Any]) -> int:
    """Stage in a hidden folder, then rename it to the next free ``v<N>`` (atomic on one disk)."""
    model_folder = Path(local_path(folder.uri))
    model_folder.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(model_folder)
    staging = Path(tempfile.mkdtemp(dir=model_folder, prefix=f".staging-{socket.gethostname()}.{os.getpid()}."))
    staging.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
    try:
        for name in COPIED_FILES:
            shutil.copy2(source / name, staging / name)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        while True:  # another promoter may take a number first; take the next one
            number = max(_numbers(folder.children()), default=0) + 1
            (staging / COMPLETE_MARKER).write_text(_provenance_text(provenance, number))
            try:
                os.rename(staging, model_folder / f"v{number}")
                return number
            except OSError:
                if not (model_folder / f"v{number}").exists():
                    raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


_STAGING = re.compile(r"^\.staging-(?P<host>.+)\.(?P<pid>\d+)\.[^.]+$")
STAGING_MAX_AGE_S = 24 * 3600  # a staging folder from another machine is abandoned after this long


def remove_abandoned_staging(model_folder: Path, now: Optional[float] = None) -> list[str]:
    """Delete hidden ``.staging-*`` folders left by promotions that were killed; returns their names.

    A staging folder is named after its promoter's host and pid. One from this host whose
    process is gone is abandoned for sure. One from another host sharing the disk (NFS)
    cannot be checked, so it counts as abandoned only after ``STAGING_MAX_AGE_S``; a
    promotion copies two small files, so no live one is that old. Folders from before
    this naming (no host or pid) follow the age rule too.
    """
    now = time.time() if now is None else now
    removed = []
    for entry in model_folder.glob(".staging-*"):
        match = _STAGING.match(entry.name)
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:  # another promoter tidied it first
            continue
        here = match is not None and match["host"] == socket.gethostname()
        abandoned = not pid_alive(int(match["pid"])) if here else age > STAGING_MAX_AGE_S
        if abandoned:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        log.info("removed %d abandoned promotion folder(s) in %s: %s", len(removed), model_folder, removed)
    return removed


def _promote_remote(folder: Location, source: Path, metrics: dict[str, Any], provenance: dict[str, Any]) -> int:
    """Upload to the next free ``v<N>``, ``provenance.json`` last; on failure remove what was uploaded."""
    number = _claim_number(folder)
    target = folder / f"v{number}"
    try:
        for name in COPIED_FILES:
            (target / name).upload_file(source / name)
        (target / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (target / COMPLETE_MARKER).write_text(_provenance_text(provenance, number))
    except BaseException:
        _discard(target)  # without provenance.json it is invisible anyway; this only tidies up
        raise
    finally:  # our claim, and a rival's on this number if any: a rival whose claim vanished withdraws
        _discard(folder / _CLAIMS / f"v{number}")
    return number


def _discard(location: Location) -> None:
    """Delete, best effort: a failure here must not hide the error being raised."""
    try:
        location.delete()
    except OSError as err:
        log.warning("could not remove %s (harmless, it is not a complete version): %s", location, err)


_CLAIMS = ".claims"  # <model>/.claims/v<N>/<id>: promotions in flight (or crashed: that N is then skipped)


def _taken_numbers(folder: Location) -> set[int]:
    """Version numbers in use: every ``v<N>`` prefix, complete or not, and every claimed one."""
    claimed = [path.split("/")[0] for path in (folder / _CLAIMS).list_files()]
    return set(_numbers(folder.children())) | set(_numbers(claimed))


def _claim_number(folder: Location, attempts: int = 20) -> int:
    """Reserve the next free version number on a store that has no atomic rename.

    A promoter writes a claim object, then lists the claims on that number: it keeps
    the number only if its claim is alone there and no ``v<N>`` files exist yet. With
    read-after-write consistent listings (S3, GCS) two promoters cannot both see only
    themselves; one that sees company withdraws and tries again. Numbers stay unique
    and increasing, but under contention one may be skipped (a third promoter saw the
    claims that were then withdrawn).
    """
    for _ in range(attempts):
        number = max(_taken_numbers(folder), default=0) + 1
        claims = folder / _CLAIMS / f"v{number}"
        claim = claims / uuid.uuid4().hex
        claim.write_text(str(os.getpid()))
        if claims.list_files() == [claim.name] and not (folder / f"v{number}").list_files():
            return number
        _discard(claim)
        time.sleep(random.uniform(0.05, 0.2))  # desynchronise two promoters that keep colliding
    raise RuntimeError(f"could not reserve a version number in {folder} after {attempts} attempts: "
                       f"other promotions keep running there; try again")


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version_of(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def make_provenance(cfg: Config, source: str, trial_id: Optional[str] = None) -> dict[str, Any]:
    """Where a promoted model came from: data, seed, run, code and library versions."""
    return {
        "dataset": cfg.data.name, "source": cfg.data.source, "seed": cfg.data.seed, "run_name": cfg.run.name,
        "trial_id": trial_id, "source_checkpoint": str(source),
        "code_version": _version_of("ray-mlp"), "git_commit": _git_commit(),
        "libraries": {name: _version_of(name) for name in ("torch", "torchvision", "ray")},
        "python": platform.python_version(), "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def source_run(provenance: dict[str, Any]) -> Optional[str]:
    """Where a version came from, in a few words: ``sweep/trial`` for a sweep's winner, else the run name."""
    if provenance.get("sweep"):
        return f"{provenance['sweep']}/{provenance.get('trial_id') or '?'}"
    return provenance.get("run_name") or provenance.get("trial_id")


def describe_versions(root: PathLike, model_name: str) -> list[dict[str, Any]]:
    """One summary per complete version, oldest first: accuracy, source, promotion time, aliases.

    Cheap on a bucket: one listing of the model folder, then the small files (pointers,
    ``metrics.json``, ``provenance.json``) read side by side.
    """
    folder = model_location(root, model_name)
    files = folder.list_files()
    numbers = _complete_numbers(files)
    alias_names = [path.split("/", 1)[1] for path in files
                   if path.startswith(ALIASES + "/") and VERSION_NAME.match(path.split("/", 1)[1])]
    pointers = {**_pointers(folder, [LATEST]), **_pointers(folder / ALIASES, alias_names)}
    reads = [lambda n=n, f=f: _read_json(folder / f"v{n}" / f) for n in numbers
             for f in ("metrics.json", COMPLETE_MARKER)]
    documents = _in_parallel(reads)
    rows = []
    for i, number in enumerate(numbers):
        metrics, provenance = documents[2 * i], documents[2 * i + 1]
        version = f"v{number}"
        rows.append({
            "version": version, "test_accuracy": metrics.get("test_accuracy"),
            "source_run": source_run(provenance), "run_name": provenance.get("run_name"),
            "sweep": provenance.get("sweep"), "trial_id": provenance.get("trial_id"),
            "promoted_at": provenance.get("promoted_at"),
            "aliases": sorted((name for name, target in pointers.items() if target == version),
                              key=lambda name: (name != LATEST, name)),
        })
    return rows
