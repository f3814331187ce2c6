"""What each ``mlp registry`` subcommand does, once ``mlp.registry.cli`` has parsed it.

One function per subcommand (``cmd_list``, ``cmd_show``, ``cmd_promote``, ``cmd_rollback``,
``cmd_alias_set|delete|list``), each taking the registry config and the parsed
arguments, and the mapping of the registry's refusals to exit codes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from mlp import registry
from mlp.checkpoint import CheckpointError, load_model, read_config, read_state
from mlp.config import Config, RegistryConfig
from mlp.console import run_command
from mlp.registry import rollouts
from mlp.registry.storage import Location, local_copy, local_path

PROG = "mlp-registry"


def cmd_list(reg: RegistryConfig, args: argparse.Namespace) -> None:
    rows = registry.describe_versions(reg.path, reg.model_name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no versions of model {reg.model_name!r} in {reg.path}: {registry.NO_MODEL_FIX}")
        return
    table = [("VERSION", "TEST ACC", "SOURCE RUN", "PROMOTED", "ALIASES")]
    table += [(row["version"], _accuracy(row["test_accuracy"]), row["source_run"] or "-",
               row["promoted_at"] or "-", ", ".join(row["aliases"]) or "-") for row in rows]
    print(_format_table(table))


def cmd_show(reg: RegistryConfig, args: argparse.Namespace) -> None:
    version = registry.version_of(reg.path, reg.model_name, args.version)
    location = registry.model_location(reg.path, reg.model_name) / version
    details = _version_details(reg, location, version)
    if args.json:
        print(json.dumps({**details, "asked_for": args.version}, indent=2))
        return
    pointers = ", ".join(details["aliases"]) or "none"
    print(f"{version} of model {reg.model_name!r} in {reg.path} (aliases: {pointers})")
    for section in ("metrics", "provenance"):
        print(f"{section}:")
        for key, value in details[section].items():
            shown = json.dumps(value) if isinstance(value, (dict, list)) else value
            print(f"  {key:<22} {shown}")
    print("files:")
    for name, size in details["files"].items():
        print(f"  {name:<22} {size:>10,} bytes")


def cmd_promote(reg: RegistryConfig, args: argparse.Namespace) -> None:
    try:
        was = registry.read_latest(reg.path, reg.model_name)
    except registry.RegistryError:  # a damaged pointer: the promotion rewrites it
        was = "unreadable"
    source = Location.of(args.checkpoint).uri  # a local path made absolute: provenance must say which folder
    with tempfile.TemporaryDirectory(prefix="mlp-promote-") as scratch:
        folder = _checkpoint_here(source, Path(scratch))
        cfg = _validated_checkpoint(folder, source)
        provenance = {**registry.make_provenance(cfg, source), "promoted_by": PROG}
        version = registry.promote(reg.path, reg.model_name, folder, _carried_metrics(folder), provenance)
    print(f"promoted {source} as {version.name} of model {reg.model_name!r} in {reg.path} "
          f"(latest: {was or 'none'} -> {version.name})")


def cmd_rollback(reg: RegistryConfig, args: argparse.Namespace) -> None:
    if args.to:
        was, now = registry.set_latest(reg.path, reg.model_name, args.to)
        print(f"latest of model {reg.model_name!r} in {reg.path}: {was or 'none'} -> {now} (set with --to)")
        return
    was, now = registry.rollback(reg.path, reg.model_name)
    print(f"rolled back latest of model {reg.model_name!r} in {reg.path}: {was} -> {now}")


def cmd_alias_set(reg: RegistryConfig, args: argparse.Namespace) -> None:
    was, now = registry.set_alias(reg.path, reg.model_name, args.name, args.version)
    change = f"{was} -> {now}" if was and was != now else now
    print(f"alias {args.name} of model {reg.model_name!r} in {reg.path}: {change}")


def cmd_alias_delete(reg: RegistryConfig, args: argparse.Namespace) -> None:
    was = registry.delete_alias(reg.path, reg.model_name, args.name)
    print(f"deleted alias {args.name} of model {reg.model_name!r} in {reg.path} (it pointed at {was}; "
          f"{was} itself is kept)")


def cmd_alias_list(reg: RegistryConfig, args: argparse.Namespace) -> None:
    aliases = registry.list_aliases(reg.path, reg.model_name)
    if args.json:
        print(json.dumps(aliases, indent=2))
        return
    latest = registry.read_latest(reg.path, reg.model_name)
    table = [("ALIAS", "VERSION"), (registry.LATEST, latest or "-")] + sorted(aliases.items())
    print(_format_table(table))


def cmd_canary(reg: RegistryConfig, args: argparse.Namespace) -> None:
    _start(reg, args, "canary", args.percent)


def cmd_shadow(reg: RegistryConfig, args: argparse.Namespace) -> None:
    _start(reg, args, "shadow", 0.0)


def _start(reg: RegistryConfig, args: argparse.Namespace, mode: str, percent: float) -> None:
    was = rollouts.read_rollout(reg.path, reg.model_name)
    rollout = rollouts.start_rollout(reg.path, reg.model_name, args.version, mode, percent,
                                     args.min_labelled, args.tolerance)
    share = f"{rollout.percent:g}% of /predict" if mode == "canary" else "every /predict, as a shadow,"
    change = "changed" if was is not None and was.id == rollout.id else "started"
    print(f"{mode} {change}: {share} to {rollout.candidate} of model {reg.model_name!r} in {reg.path} "
          f"(rollout {rollout.id}; the gate decides after {rollout.min_labelled} labelled instances per "
          f"version, tolerance {rollout.tolerance:g})")


def cmd_rollout_show(reg: RegistryConfig, args: argparse.Namespace) -> None:
    rollout = rollouts.read_rollout(reg.path, reg.model_name)
    decisions = rollouts.read_decisions(reg.path, reg.model_name)
    if args.json:
        print(json.dumps({"rollout": rollout.to_dict() if rollout else None, "decisions": decisions}, indent=2))
        return
    if rollout is None:
        print(f"no rollout running for model {reg.model_name!r} in {reg.path}")
    else:
        share = f"{rollout.percent:g}%" if rollout.mode == "canary" else "shadow"
        print(f"running: {rollout.mode} of {rollout.candidate} ({share}), rollout {rollout.id} since "
              f"{rollout.started_at}; gate: {rollout.min_labelled} labelled instances, tolerance {rollout.tolerance:g}")
    for decision in decisions:
        print(f"{decision.get('at', '?')}  {decision.get('action', '?'):<8} {decision.get('candidate', '?')} "
              f"vs {decision.get('current', '?')}: {decision.get('reason', '')}")


def cmd_rollout_end(reg: RegistryConfig, args: argparse.Namespace) -> None:
    ended = rollouts.end_rollout(reg.path, reg.model_name)
    if ended is None:
        print(f"no rollout was running for model {reg.model_name!r} in {reg.path}")
        return
    rollouts.record_decision(reg.path, reg.model_name, {"action": "ended", "reason": f"ended by {PROG} rollout end",
                                                        "rollout": ended.id, "mode": ended.mode,
                                                        "candidate": ended.candidate, "origin": ended.origin})
    print(f"ended the {ended.mode} of {ended.candidate} (rollout {ended.id}): apps stop routing to it within a second")


# --- helpers -----------------------------------------------------------------------------------


def _accuracy(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def _version_details(reg: RegistryConfig, location: Location, version: str) -> dict[str, Any]:
    """A version's metrics, provenance, file sizes and the pointers naming it (a few small reads)."""
    pointers = {registry.LATEST: registry.read_latest(reg.path, reg.model_name),
                **registry.list_aliases(reg.path, reg.model_name)}
    names = location.list_files()
    return {
        "version": version, "location": str(location),
        "aliases": [name for name, target in pointers.items() if target == version],
        "metrics": _json_file(location / "metrics.json"),
        "provenance": _json_file(location / registry.COMPLETE_MARKER),
        "files": {name: (location / name).info().size for name in names},
    }


def _json_file(location: Location) -> dict[str, Any]:
    try:
        data = json.loads(location.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise CheckpointError(f"{location} is not valid JSON ({err}): promote the model again") from None
    return data if isinstance(data, dict) else {}


def _checkpoint_here(checkpoint: str, scratch: Path) -> Path:
    """The checkpoint as a local folder: a local one as is, a remote one (``s3://...``) downloaded."""
    local = local_path(checkpoint)
    if local is not None:
        folder = Path(local)
        if not folder.is_dir():
            raise FileNotFoundError(f"checkpoint folder {folder} does not exist: pass a folder holding "
                                    f"model.pt and config.json (e.g. <run>/checkpoint_000009)")
        return folder
    try:
        return local_copy(Location.of(checkpoint), scratch)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist (or holds no files): pass a folder "
                                f"holding model.pt and config.json") from None


def _validated_checkpoint(folder: Path, shown_as: str) -> Config:
    """The checkpoint's config, after proving its weights load into the model it describes.

    Refusing here, before ``promote`` writes anything, keeps a broken folder out of the
    registry, where a server following ``latest`` would otherwise try to load it.
    """
    missing = [name for name in registry.COPIED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{shown_as} is not a checkpoint: {', '.join(missing)} missing; pass a folder "
                                f"holding model.pt and config.json (e.g. <run>/checkpoint_000009)")
    load_model(folder)
    return read_config(folder)


def _carried_metrics(folder: Path) -> dict[str, Any]:
    """The metrics a checkpoint already holds: its ``metrics.json`` (a copied registry version), else the
    progress in ``state.json`` with the last epoch's validation figures. Nothing is evaluated."""
    saved = _json_file(Location.of(folder) / "metrics.json")
    if saved:
        return saved
    state = read_state(folder)
    last = (state.get("history") or [{}])[-1]
    carried = {key: last[key] for key in ("val_accuracy", "val_loss", "train_loss") if key in last}
    return {**carried, **{key: value for key, value in state.items() if key != "history"}}


def run_registry_command(action: Callable[[], Any]) -> int:
    """``mlp.console.run_command``'s exit codes, plus the registry's refusals: 2 for a request that cannot be
    done as asked (unknown version or alias, reserved name, not a checkpoint), 1 for storage failures."""
    try:
        return run_command(PROG, action)
    except (registry.RegistryError, CheckpointError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{PROG}: error: {err} (is the registry reachable, and writable by you?)", file=sys.stderr)
        return 1
