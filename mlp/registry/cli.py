"""``mlp-registry``: look at and operate the model registry (``mlp.registry``) from a shell.

Subcommands map one-to-one to registry functions: ``list`` (``describe_versions``),
``show`` (one version's files), ``promote`` (``promote`` a checkpoint folder),
``rollback`` (``rollback`` / ``set_latest``) and ``alias set|delete|list``. The
registry is a local folder or a URI (``s3://bucket/registry``), chosen with
``--registry.path`` / ``--registry.model_name`` as in every other command.

Bad input (an unknown version or alias, a reserved alias name, a folder that is
not a checkpoint) exits with code 2 and one line that says what to do, before
anything is written. What this is not: a trainer or an evaluator; ``promote``
records the metrics a checkpoint already carries and computes none.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from mlp import registry
from mlp.checkpoint import CheckpointError, load_model, read_config, read_state
from mlp.console import console_script, run_command
from mlp.options import load_yaml
from mlp.config import Config, RegistryConfig
from mlp.registry.storage import Location, local_copy, local_path

PROG = "mlp-registry"
REFERENCE_HELP = "latest, a version vN, or an alias name (champion, ...)"


# --- the commands: each takes the registry config and the parsed arguments --------------------


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


# --- the parser --------------------------------------------------------------------------------


def _registry_options() -> argparse.ArgumentParser:
    """Options every subcommand takes; SUPPRESS lets them stand before or after the subcommand."""
    defaults = RegistryConfig()
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("registry options")
    group.add_argument("--registry.path", dest="registry_path", metavar="PATH_OR_URI", default=argparse.SUPPRESS,
                       help=f"the registry: a folder or a URI such as s3://bucket/registry (default: {defaults.path})")
    group.add_argument("--registry.model_name", dest="model_name", metavar="NAME", default=argparse.SUPPRESS,
                       help=f"the model's name in the registry (default: {defaults.model_name})")
    group.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                       help="take the registry section of a preset; the options above override it")
    return options


def _add(subparsers: Any, name: str, handler: Optional[Callable[..., None]], help_text: str, description: str,
         parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=description, parents=parents,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _registry_options()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="List, inspect and operate the model registry: promote a checkpoint, roll latest back, "
                    "and name versions with aliases (champion, candidate, ...) that Serve can follow "
                    "(--serve.version champion).",
        epilog="Bad input exits with code 2 and writes nothing. See docs/registry.md.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    shown = _add(commands, "list", cmd_list, "every version: test accuracy, source run, when, aliases",
                 "One row per complete version, oldest first.", [common])
    shown.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    show = _add(commands, "show", cmd_show, "one version's metrics, provenance and files",
                "Metrics, provenance and files of one version, and the aliases that point at it.", [common])
    show.add_argument("version", metavar="VERSION", help=REFERENCE_HELP)
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    promote = _add(commands, "promote", cmd_promote, "copy a checkpoint folder in as the next version",
                   "Copy a checkpoint folder (model.pt + config.json; a local path or a URI such as s3://...) "
                   "into the next vN and point latest at it.\nIts weights are checked to load; its metrics are "
                   "the ones it carries (metrics.json or state.json): nothing is evaluated.", [common])
    promote.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder or URI")
    rollback = _add(commands, "rollback", cmd_rollback, "move latest back to where it pointed before its last move",
                    "Undo latest's last move (a promotion, a rollback --to); repeat to go further back.\nServers "
                    "following latest load that version within a second. With --to, point latest at a version "
                    "of your choice instead (recorded, so a later rollback undoes it).", [common])
    rollback.add_argument("--to", metavar="VERSION", help=f"point latest here instead ({REFERENCE_HELP})")
    alias = _add(commands, "alias", None, "set, delete or list aliases",
                 "Aliases are named pointers to versions; a server started with --serve.version NAME follows "
                 "its alias as it moves.\n'latest' and vN are reserved.", [common])
    actions = alias.add_subparsers(dest="alias_command", metavar="ACTION", required=True)
    alias_set = _add(actions, "set", cmd_alias_set, "point an alias at a version",
                     "Point alias NAME at a complete version (stored as the vN it names now).", [common])
    alias_set.add_argument("name", metavar="NAME", help="alias name: letters, digits, - and _; not latest or vN")
    alias_set.add_argument("version", metavar="VERSION", help=REFERENCE_HELP)
    alias_delete = _add(actions, "delete", cmd_alias_delete, "remove an alias (its version stays)",
                        "Remove alias NAME; the version it pointed at is kept.", [common])
    alias_delete.add_argument("name", metavar="NAME")
    alias_list = _add(actions, "list", cmd_alias_list, "every alias and its version (latest too)",
                      "Every alias and the version it points at, latest first.", [common])
    alias_list.add_argument("--json", action="store_true", help="print a JSON object {alias: version}")
    return parser


def registry_config(args: argparse.Namespace) -> RegistryConfig:
    """Defaults <- the preset's registry section <- the options; validated like every other command's."""
    base = Config.from_dict(load_yaml(args.config)).registry if getattr(args, "config", None) else RegistryConfig()
    return RegistryConfig(path=getattr(args, "registry_path", base.path),
                          model_name=getattr(args, "model_name", base.model_name))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_registry_command(lambda: args.handler(registry_config(args), args))


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


cli = console_script(main)


if __name__ == "__main__":
    cli()
