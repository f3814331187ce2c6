"""The model registry: promoted models as numbered, immutable version folders.

Layout::

    <registry>/<model name>/v<N>/model.pt          weights (torch.load(weights_only=True))
                                 config.json       the resolved config
                                 metrics.json      val/test accuracy, loss, epochs, time-to-accuracy
                                 provenance.json   dataset, seed, trial id, code and library versions
    <registry>/<model name>/latest -> v<N>         symlink, replaced atomically

A version folder is assembled under a hidden temporary name and renamed into
place, so a reader never sees half a model; ``latest`` is swapped with
``os.replace``. Train (``--promote``) and Tune write here; Serve only reads.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Union

from mlp.config import Config

PathLike = Union[str, Path]
_VERSION = re.compile(r"^v(\d+)$")
COPIED_FILES = ("model.pt", "config.json")


def model_dir(root: PathLike, model_name: str) -> Path:
    return Path(os.path.expanduser(str(root))) / model_name


def list_versions(root: PathLike, model_name: str) -> list[int]:
    folder = model_dir(root, model_name)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir())


def resolve_version(root: PathLike, model_name: str, version: str = "latest") -> Path:
    """Folder of ``version`` (``latest`` or ``vN``); a clear error when there is none."""
    folder = model_dir(root, model_name)
    if version == "latest":
        link = folder / "latest"
        if not link.exists():
            raise FileNotFoundError(
                f"no promoted model in {folder}: train with --promote or run a sweep first "
                f"(or pass a checkpoint folder explicitly)")
        return folder / os.readlink(link) if link.is_symlink() else link
    path = folder / version
    if not (path / "model.pt").is_file():
        known = ", ".join(f"v{n}" for n in list_versions(root, model_name)) or "none"
        raise FileNotFoundError(f"{path} does not exist (versions: {known})")
    return path


def promote(root: PathLike, model_name: str, checkpoint_dir: PathLike,
            metrics: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Copy a checkpoint into the next ``v<N>`` and point ``latest`` at it; returns the new folder."""
    folder = model_dir(root, model_name)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
    staging.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
    try:
        for name in COPIED_FILES:
            shutil.copy2(Path(checkpoint_dir) / name, staging / name)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        while True:  # another promoter may take a number first; take the next one
            number = max(list_versions(root, model_name), default=0) + 1
            (staging / "provenance.json").write_text(
                json.dumps({**provenance, "version": f"v{number}"}, indent=2))
            try:
                os.rename(staging, folder / f"v{number}")
                break
            except OSError:
                if not (folder / f"v{number}").exists():
                    raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    link_tmp = folder / f".latest-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(f"v{number}", link_tmp)
    os.replace(link_tmp, folder / "latest")
    return folder / f"v{number}"


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
