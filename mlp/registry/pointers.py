"""Moving pointers of the registry: ``latest`` (with its history, which ``rollback`` undoes) and aliases.

A pointer is a small file holding a version name (``v3``), never a symlink: an object
store has no links, and one small read is what a replica polls every second. Finding
a version by name (``locate_version``) lives here too, since ``latest`` and an alias
are read through their pointers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Optional

from mlp.config import VERSION_NAME
from mlp.registry.layout import (ALIASES, HISTORY, HISTORY_KEEP, LATEST, NO_MODEL_FIX, PathLike, RegistryError,
                                 _in_parallel, _known_versions, _require_complete, is_version_number, model_location,
                                 read_json_lines)
from mlp.registry.storage import Location, local_path

log = logging.getLogger(__name__)


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


def _missing_alias(root: PathLike, model_name: str, name: str) -> FileNotFoundError:
    known = ", ".join(sorted(list_aliases(root, model_name))) or "none"
    return FileNotFoundError(
        f"no alias {name!r} for model {model_name!r} in {model_location(root, model_name)} (aliases: {known}): "
        f"set it with `mlp-registry alias set {name} vN`, or ask for latest or a version vN")


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


def version_of(root: PathLike, model_name: str, version: str) -> str:
    """The complete version (``v3``) that ``latest``, ``vN`` or an alias names now; a clear error if none."""
    name = locate_version(root, model_name, version).name
    if not is_version_number(name):  # a legacy registry's copied ``latest`` folder has no number to point at
        raise RegistryError(f"{model_location(root, model_name) / LATEST} is a folder, not a pointer: "
                            f"promote the model again to turn it into one")
    if not is_version_number(version):
        _require_complete(root, model_name, name)  # a pointer edited by hand may name a missing version
    return name


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
    return [move for move in read_json_lines(folder / HISTORY)
            if isinstance(move, dict) and all(is_version_number(str(move.get(key))) for key in ("from", "to"))]


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


def set_latest(root: PathLike, model_name: str, version: str, how: str = "set_latest") -> tuple[Optional[str], str]:
    """Point ``latest`` at a complete version (``vN``, or what an alias names); returns (was, now).

    The move is recorded (``how``: who moved it, e.g. ``gate`` for a rollout's promotion), so
    ``rollback`` undoes it like a promotion.
    """
    target = version_of(root, model_name, version)
    return _move_latest(model_location(root, model_name), target, how), target


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
