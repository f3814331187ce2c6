"""The model registry: promoted models as numbered, immutable version folders, on any storage.

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

Train (``--promote``) and Tune write here; Serve only reads.
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, TypeVar, Union

from mlp.config import VERSION_NAME, Config
from mlp.procs import pid_alive
from mlp.storage import Location, cache_key, cache_root, cached_copy, local_path, normalize

log = logging.getLogger(__name__)
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
_verified: set[Path] = set()  # cached versions this process has checked against the registry
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


def _read_pointer(pointer: Location) -> Optional[str]:
    """The version a pointer file holds (``v3``), or None when there is no such file.

    One small read: this is what a replica polls. A legacy registry's ``latest`` symlink is followed.
    """
    local = local_path(pointer.uri)
    if local is not None and os.path.islink(local):
        return os.path.basename(os.readlink(local).rstrip("/"))
    if local is not None and os.path.isdir(local):  # a copy that turned the old symlink into a folder
        return LATEST
    try:
        text = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    if not is_version_number(text):
        raise RegistryError(f"{pointer} should hold a version name such as v3 but holds {text[:40]!r}: "
                            f"write the version to serve into it, or promote a model again")
    return text


def read_latest(root: PathLike, model_name: str) -> Optional[str]:
    """The version ``latest`` points at (``v3``), or None before the first promotion."""
    return _read_pointer(model_location(root, model_name) / LATEST)


def check_alias_name(name: str) -> str:
    """``name`` if it can name an alias; else a ``RegistryError`` saying which names can.

    ``latest`` is reserved because promotions and rollbacks move it, and ``vN`` because it
    names a version folder; either as an alias would make ``serve.version`` ambiguous.
    """
    if VERSION_NAME.match(name) is None:
        raise RegistryError(f"{name!r} cannot name an alias: start with a letter and use only letters, digits, "
                            f"- and _ (at most 64), e.g. champion or candidate")
    if name.lower() == LATEST or is_version_number(name.lower()):
        raise RegistryError(f"{name!r} is reserved: 'latest' moves with promote and rollback, and vN names a "
                            f"version; pick another alias name, e.g. champion or candidate")
    return name


def _alias_pointer(root: PathLike, model_name: str, name: str) -> Location:
    return model_location(root, model_name) / ALIASES / name


def read_alias(root: PathLike, model_name: str, name: str) -> Optional[str]:
    """The version alias ``name`` points at (``v3``), or None when no such alias is set."""
    return _read_pointer(_alias_pointer(root, model_name, check_alias_name(name)))


def list_aliases(root: PathLike, model_name: str) -> dict[str, str]:
    """Every alias and the version it points at (``{"champion": "v3"}``), ``latest`` not included."""
    folder = model_location(root, model_name) / ALIASES
    names = [name for name in folder.list_files() if "/" not in name and VERSION_NAME.match(name)]
    return _pointers(folder, names)


def _pointers(folder: Location, names: list[str]) -> dict[str, str]:
    """Pointer files of one folder read side by side (one small request each on a bucket)."""
    targets = _in_parallel([lambda name=name: _read_pointer(folder / name) for name in names])
    return {name: target for name, target in zip(names, targets) if target is not None}


def _in_parallel(calls: list[Callable[[], T]]) -> list[T]:
    """Results of independent small reads, in order; concurrent, since each is a round trip on a bucket."""
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
        return list(pool.map(lambda call: call(), calls))


def _missing_alias(root: PathLike, model_name: str, name: str) -> FileNotFoundError:
    known = ", ".join(sorted(list_aliases(root, model_name))) or "none"
    return FileNotFoundError(
        f"no alias {name!r} for model {model_name!r} in {model_location(root, model_name)} (aliases: {known}): "
        f"set it with `mlp-registry alias set {name} vN`, or ask for latest or a version vN")


def _require_complete(root: PathLike, model_name: str, version: str) -> Location:
    """The folder of version ``vN``, refused with the complete versions named when it is not complete."""
    path = model_location(root, model_name) / version
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete registry version (versions: "
                                f"{_known_versions(root, model_name)}); pick one of those, or {NO_MODEL_FIX}")
    return path


def locate_version(root: PathLike, model_name: str, version: str = LATEST) -> Location:
    """Where ``version`` (``latest``, ``vN`` or an alias) lives on the registry's storage; a clear error if nowhere.

    ``latest`` and an alias cost one pointer read; ``vN`` one check that it is complete.
    """
    folder = model_location(root, model_name)
    if is_version_number(version):
        return _require_complete(root, model_name, version)
    if version == LATEST:
        name = read_latest(root, model_name)
        if name is None:
            raise FileNotFoundError(f"no promoted model in {folder}: {NO_MODEL_FIX}")
        return folder / name
    try:
        name = read_alias(root, model_name, version)
    except RegistryError:  # a name no alias can have (V3, LATEST, 9x): unknown, like a missing alias
        aliases = ", ".join(sorted(list_aliases(root, model_name))) or "none"
        raise FileNotFoundError(f"{version!r} is neither a version nor an alias of model {model_name!r} in "
                                f"{folder} (versions: {_known_versions(root, model_name)}; aliases: {aliases}): "
                                f"ask for one of those, or latest") from None
    if name is None:
        raise _missing_alias(root, model_name, version)
    return folder / name


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
            metrics: dict[str, Any], provenance: dict[str, Any]) -> VersionDir:
    """Copy a local checkpoint folder into the next ``v<N>`` and point ``latest`` at it (a recorded move).

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
        "dataset": cfg.data.dataset, "seed": cfg.data.seed, "run_name": cfg.run.name,
        "trial_id": trial_id, "source_checkpoint": str(source),
        "code_version": _version_of("ray-mlp"), "git_commit": _git_commit(),
        "libraries": {name: _version_of(name) for name in ("torch", "torchvision", "ray")},
        "python": platform.python_version(), "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --- moving pointers: latest (with its history) and aliases -------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_history(root: PathLike, model_name: str) -> list[dict[str, str]]:
    """``latest``'s recorded moves, oldest first: ``{"from": "v2", "to": "v3", "at": ..., "by": "promote"}``.

    Only moves away from an earlier version are recorded (the first promotion has nothing to
    return to). A line that cannot be read is skipped: rollback checks the last move it uses
    against the pointer itself, so a damaged history can refuse a rollback but never misdirect one.
    """
    return _read_moves(model_location(root, model_name))


def _read_moves(folder: Location) -> list[dict[str, str]]:
    try:
        lines = (folder / HISTORY).read_text().splitlines()
    except FileNotFoundError:
        return []
    moves = []
    for line in lines:
        try:
            move = json.loads(line)
        except ValueError:
            continue
        if isinstance(move, dict) and all(is_version_number(str(move.get(key))) for key in ("from", "to")):
            moves.append(move)
    return moves


def _write_history(folder: Location, moves: list[dict[str, str]]) -> None:
    """Rewrite the whole history file (an object store cannot append), keeping the newest moves."""
    text = "".join(json.dumps(move) + "\n" for move in moves[-HISTORY_KEEP:])
    (folder / HISTORY).write_text(text)


def _move_latest(folder: Location, version: str, how: str) -> Optional[str]:
    """Point ``latest`` at ``version`` and record the move; returns where it pointed before.

    The pointer is written first: it is what replicas follow, and the move has happened once it
    is. A history that then fails to write only costs the ability to undo this one move, so it
    is logged, not raised. Two writers moving ``latest`` at the same moment may lose one line.
    """
    pointer = folder / LATEST
    try:
        was = _read_pointer(pointer)
    except RegistryError:  # a damaged pointer is what this write repairs; there is no move to record
        was = None
    pointer.write_text(f"{version}\n")
    if was is not None and is_version_number(was) and was != version:
        try:
            _write_history(folder, [*_read_moves(folder), {"from": was, "to": version, "at": _now(), "by": how}])
        except OSError as err:
            log.warning("latest moved %s -> %s but %s could not be updated (rollback cannot undo this move): %s",
                        was, version, folder / HISTORY, err)
    return was


def version_of(root: PathLike, model_name: str, version: str) -> str:
    """The complete version (``v3``) that ``latest``, ``vN`` or an alias names now; a clear error if none."""
    name = locate_version(root, model_name, version).name
    if not is_version_number(name):  # a legacy registry's copied ``latest`` folder has no number to point at
        raise RegistryError(f"{model_location(root, model_name) / LATEST} is a folder, not a pointer: "
                            f"promote the model again to turn it into one")
    if not is_version_number(version):
        _require_complete(root, model_name, name)  # a pointer edited by hand may name a missing version
    return name


def set_latest(root: PathLike, model_name: str, version: str) -> tuple[Optional[str], str]:
    """Point ``latest`` at a complete version (``vN``, or what an alias names); returns (was, now).

    The move is recorded, so ``rollback`` undoes it like a promotion.
    """
    target = version_of(root, model_name, version)
    return _move_latest(model_location(root, model_name), target, "set_latest"), target


def rollback(root: PathLike, model_name: str) -> tuple[str, str]:
    """Move ``latest`` back to where it pointed before its last move; returns (was, now).

    The history is a stack: a rollback removes the move it undoes (it does not add one), so
    rolling back twice after promoting v2 and v3 lands on v1, and once nothing earlier is
    recorded it refuses. It refuses too when ``latest`` no longer holds where the last
    recorded move put it (edited by hand, or by code that keeps no history): then the
    version to return to is a guess, so the message asks for one (``set_latest``).
    """
    folder = model_location(root, model_name)
    current = read_latest(root, model_name)
    if current is None:
        raise FileNotFoundError(f"no promoted model in {folder}, so nothing to roll back: {NO_MODEL_FIX}")
    moves = read_history(root, model_name)
    pick = (f"point latest at a version yourself with `mlp-registry rollback --to vN` "
            f"(versions: {_known_versions(root, model_name)})")
    if not moves:
        raise RegistryError(f"latest ({current}) has no earlier version recorded in {folder / HISTORY}: "
                            f"nothing to roll back to; {pick}")
    last = moves[-1]
    if last["to"] != current:
        raise RegistryError(f"latest holds {current}, but its last recorded move was to {last['to']} (it was "
                            f"changed without the registry tools): cannot tell what to roll back to; {pick}")
    target = last["from"]
    _require_complete(root, model_name, target)
    (folder / LATEST).write_text(f"{target}\n")
    _write_history(folder, moves[:-1])
    return current, target


def set_alias(root: PathLike, model_name: str, name: str, version: str) -> tuple[Optional[str], str]:
    """Point alias ``name`` at a complete version (``vN``, ``latest`` or another alias, stored as
    the ``vN`` it names now); returns (was, now), ``was`` None for a new alias."""
    pointer = _alias_pointer(root, model_name, check_alias_name(name))
    try:
        target = version_of(root, model_name, version)
    except FileNotFoundError as err:
        raise RegistryError(f"cannot point alias {name!r} at {version}: {err}") from None
    was = _read_pointer(pointer)
    pointer.write_text(f"{target}\n")
    return was, target


def delete_alias(root: PathLike, model_name: str, name: str) -> str:
    """Remove alias ``name``; returns the version it pointed at. Versions themselves are never removed."""
    pointer = _alias_pointer(root, model_name, check_alias_name(name))
    was = _read_pointer(pointer)
    if was is None:
        raise _missing_alias(root, model_name, name)
    pointer.delete()
    return was


# --- describing what is there -------------------------------------------------------------------


def _read_json(location: Location) -> dict[str, Any]:
    """A version's small JSON file, or {} when it is missing or damaged (a listing must not stop at one)."""
    try:
        data = json.loads(location.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
