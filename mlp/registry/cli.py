"""``mlp registry`` (also ``mlp-registry``, ``python -m mlp.registry``): look at and operate the model registry (``mlp.registry``) from a shell.

This module is the parser; ``mlp.registry.commands`` does the work. Subcommands map
one-to-one to registry functions: ``list`` (``describe_versions``),
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
from typing import Any, Optional, Sequence

from mlp.config import Config, RegistryConfig
from mlp.console import console_script
from mlp.options import load_yaml

PROG = "mlp-registry"
REFERENCE_HELP = "latest, a version vN, or an alias name (champion, ...)"


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


def _add(subparsers: Any, name: str, handler: Optional[str], help_text: str, description: str,
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
    shown = _add(commands, "list", "cmd_list", "every version: test accuracy, source run, when, aliases",
                 "One row per complete version, oldest first.", [common])
    shown.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    show = _add(commands, "show", "cmd_show", "one version's metrics, provenance and files",
                "Metrics, provenance and files of one version, and the aliases that point at it.", [common])
    show.add_argument("version", metavar="VERSION", help=REFERENCE_HELP)
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    promote = _add(commands, "promote", "cmd_promote", "copy a checkpoint folder in as the next version",
                   "Copy a checkpoint folder (model.pt + config.json; a local path or a URI such as s3://...) "
                   "into the next vN and point latest at it.\nIts weights are checked to load; its metrics are "
                   "the ones it carries (metrics.json or state.json): nothing is evaluated.", [common])
    promote.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder or URI")
    rollback = _add(commands, "rollback", "cmd_rollback", "move latest back to where it pointed before its last move",
                    "Undo latest's last move (a promotion, a rollback --to); repeat to go further back.\nServers "
                    "following latest load that version within a second. With --to, point latest at a version "
                    "of your choice instead (recorded, so a later rollback undoes it).", [common])
    rollback.add_argument("--to", metavar="VERSION", help=f"point latest here instead ({REFERENCE_HELP})")
    alias = _add(commands, "alias", None, "set, delete or list aliases",
                 "Aliases are named pointers to versions; a server started with --serve.version NAME follows "
                 "its alias as it moves.\n'latest' and vN are reserved.", [common])
    actions = alias.add_subparsers(dest="alias_command", metavar="ACTION", required=True)
    alias_set = _add(actions, "set", "cmd_alias_set", "point an alias at a version",
                     "Point alias NAME at a complete version (stored as the vN it names now).", [common])
    alias_set.add_argument("name", metavar="NAME", help="alias name: letters, digits, - and _; not latest or vN")
    alias_set.add_argument("version", metavar="VERSION", help=REFERENCE_HELP)
    alias_delete = _add(actions, "delete", "cmd_alias_delete", "remove an alias (its version stays)",
                        "Remove alias NAME; the version it pointed at is kept.", [common])
    alias_delete.add_argument("name", metavar="NAME")
    alias_list = _add(actions, "list", "cmd_alias_list", "every alias and its version (latest too)",
                      "Every alias and the version it points at, latest first.", [common])
    alias_list.add_argument("--json", action="store_true", help="print a JSON object {alias: version}")
    _add_rollout_commands(commands, common)
    return parser


def _add_rollout_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """``canary``, ``shadow`` and ``rollout show|end``: a candidate on live traffic, judged by the gate."""
    from mlp.registry.rollouts import DEFAULT_MIN_LABELLED, DEFAULT_TOLERANCE

    gate = argparse.ArgumentParser(add_help=False)
    group = gate.add_argument_group("gate options")
    group.add_argument("--min-labelled", type=int, default=DEFAULT_MIN_LABELLED, metavar="N",
                       help=f"labelled instances (POST /feedback) each version needs before the gate promotes or "
                            f"rolls back the candidate (default: {DEFAULT_MIN_LABELLED})")
    group.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="T",
                       help=f"accuracy the candidate may lose, and error rate it may add, and still be promoted "
                            f"(default: {DEFAULT_TOLERANCE})")
    how = ("Running apps that serve this model (latest or an alias) read it within a second. Labelled "
           "feedback (POST /feedback) feeds the gate, which promotes the candidate (moves the reference the app "
           "serves) or rolls it back, and records the decision with its figures (rollout show). See docs/serve.md.")
    canary = _add(commands, "canary", "cmd_canary", "send a share of /predict to a candidate version",
                  "Send --percent of POST /predict to VERSION, the rest to the served version, inside the "
                  f"running app; run it again to change the share.\n{how}", [common, gate])
    canary.add_argument("version", metavar="VERSION", help=REFERENCE_HELP)
    canary.add_argument("--percent", type=float, required=True, metavar="N", help="share of requests, 0 to 100")
    shadow = _add(commands, "shadow", "cmd_shadow", "compute every /predict with a candidate too, answer with the "
                  "served version", f"Every POST /predict is also computed by VERSION; clients get the served "
                  f"version's answer; agreement and the candidate's latency are recorded.\n{how}", [common, gate])
    shadow.add_argument("version", metavar="VERSION", help=REFERENCE_HELP)
    rollout = _add(commands, "rollout", None, "show or end the running canary or shadow",
                   "The running rollout and the decisions recorded so far.", [common])
    actions = rollout.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    show = _add(actions, "show", "cmd_rollout_show", "the running rollout and the recorded decisions",
                "The running rollout (rollout.json) and every recorded decision with its figures.", [common])
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add(actions, "end", "cmd_rollout_end", "stop routing to the candidate, with no decision",
         "End the running rollout without promoting the candidate: apps stop routing to it within a second.",
         [common])


def registry_config(args: argparse.Namespace) -> RegistryConfig:
    """Defaults <- the preset's registry section <- the options; validated like every other command's."""
    base = Config.from_dict(load_yaml(args.config)).registry if getattr(args, "config", None) else RegistryConfig()
    return RegistryConfig(path=getattr(args, "registry_path", base.path),
                          model_name=getattr(args, "model_name", base.model_name))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from mlp.registry import commands  # torch (checkpoints) only after --help and bad arguments

    handler = getattr(commands, args.handler)
    return commands.run_registry_command(lambda: handler(registry_config(args), args))


cli = console_script(main)


if __name__ == "__main__":
    cli()
