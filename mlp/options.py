"""Every command's parser: ``--config FILE.yaml`` plus one ``--section.field`` per leaf of ``mlp.config``.

Precedence is defaults <- ``--config`` YAML <- ``--section.key`` options; adding a
field to ``mlp.config`` adds its option and its ``--help`` line here. Types and
values are checked by ``Config.from_dict`` (``mlp.config``), which needs nothing
from here, so a bad value exits 2 naming its key before anything is written.
Plain argparse: jsonargparse and tyro were tried and could not keep this contract
(comma lists, the dotted keys of ``tune.space``, ``none``) without more code than this.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from mlp.config import Config, ConfigError

_UNSET = object()
MAP_FIELDS = ("tune.space",)  # dict fields whose own keys are dotted: --tune.space.optim.lr SPEC


def load_yaml(path: str) -> dict[str, Any]:
    """Read a preset; a missing file or a non-mapping is a config error."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError("--config", f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of sections")
    return data


def _metavar(tp: Any) -> str:
    tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if type(None) in typing.get_args(tp) else tp
    return ({list: "N[,N...]", dict: "SPEC"}.get(typing.get_origin(tp))
            or {int: "INT", float: "FLOAT", bool: "BOOL", str: "TEXT"}.get(tp, "VALUE"))


def make_parser(prog: str, description: str, sections: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """``--config`` plus every leaf; ``sections`` limits ``--help``, but every key is still accepted."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Precedence: defaults <- --config YAML <- --section.key options. "
               "Bad values exit with code 2 before anything is written.")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML preset (see cluster/presets/)")
    defaults = Config()
    for section in dataclasses.fields(Config):
        if getattr(type(getattr(defaults, section.name)), "DERIVED", False):
            continue  # inferred from the data, never typed
        shown = sections is None or section.name in sections
        group = parser.add_argument_group(f"{section.name} options") if shown else parser
        cls = type(getattr(defaults, section.name))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = getattr(getattr(defaults, section.name), f.name)
            text = f"{f.metadata.get('help', '')} (default: {default})" if shown else argparse.SUPPRESS
            group.add_argument(f"--{section.name}.{f.name}", dest=f"{section.name}.{f.name}", default=_UNSET,
                               metavar=_metavar(hints[f.name]), help=text)
    return parser


def _pairs(unknown: Sequence[str]) -> list[tuple[str, Any]]:
    """Leftover ``--tune.space.KEY VALUE`` / ``--tune.space.KEY=VALUE`` tokens; anything else is refused."""
    pairs, items = [], list(unknown)
    while items:
        token = items.pop(0)
        key, eq, value = token[2:].partition("=")
        if not token.startswith("--"):
            raise ConfigError(token, "unexpected argument")
        if not any(key.startswith(f"{field}.") and len(key) > len(field) + 1 for field in MAP_FIELDS):
            raise ConfigError(key, "unknown option (see --help)")
        if not eq and not items:
            raise ConfigError(key, "needs a value")
        pairs.append((key, value if eq else items.pop(0)))
    return pairs


def config_from_args(args: argparse.Namespace, unknown: Sequence[str] = ()) -> Config:
    """Defaults <- YAML <- dotted options (a mapping field's own keys merge into the YAML's mapping)."""
    tree = load_yaml(args.config) if getattr(args, "config", None) else {}
    overrides = [(k, v) for k, v in vars(args).items() if "." in k and v is not _UNSET] + _pairs(unknown)
    for key, value in overrides:
        parts = key.split(".", 2)  # section, field[, key inside a mapping field]
        node = tree
        for depth, part in enumerate(parts[:-1]):
            node[part] = {} if node.get(part) is None else node[part]  # a bare `optim:` in YAML is empty
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(".".join(parts[:depth + 1]), f"expected a mapping, got {node!r}")
        node[parts[-1]] = value
    return Config.from_dict(tree)


def parse_config(parser: argparse.ArgumentParser,
                 argv: Optional[Sequence[str]] = None) -> tuple[Config, argparse.Namespace]:
    """Parse ``argv`` into (Config, namespace); on a bad value print it and exit 2."""
    args, unknown = parser.parse_known_args(argv)
    try:
        return config_from_args(args, unknown), args
    except ConfigError as err:
        print(f"{parser.prog}: error: config {err.key}: {err.message}", file=sys.stderr)
        raise SystemExit(2) from None
