"""Command-line and YAML loading for the config tree in ``mlp.config``.

Every command (train, sweep, serve, pipeline) builds its parser here, so the
dotted options, ``--config`` and the exit-code-2 refusals behave the same
everywhere. Options are generated from the dataclass fields: adding a field
adds its ``--section.field`` flag and its ``--help`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml

from mlp.config import Config, ConfigError

_MISSING = object()


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the field type ``tp``; CLI strings are parsed as YAML scalars first.

    Numbers are widened (int -> float) but never narrowed, and bools are never
    accepted as numbers, so ``--optim.lr true`` is refused rather than read as 1.
    """
    tp, optional = _unwrap_optional(tp)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
        if optional:
            return None
        raise ConfigError(key, "a value is required")
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip().strip("[]")
            value = [v for v in (p.strip() for p in text.split(",")) if v]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(key, item_tp, v) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): coerce(f"{key}.{k}", val_tp, v) for k, v in value.items()}
    if isinstance(value, str) and tp is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(key, f"cannot read {value!r} as {tp.__name__}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected a whole number, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(key, f"expected text, got {value!r}")
    raise ConfigError(key, f"unsupported type {tp!r}")


def build_dataclass(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build ``cls`` from a nested mapping, refusing unknown keys by their dotted name."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "<config>", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}", f"unknown key (known: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = build_dataclass(tp, data[f.name] or {}, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = coerce(f"{prefix}{f.name}", tp, data[f.name])
    try:
        return cls(**kwargs)
    except TypeError as err:  # a missing positional can only come from a programming error
        raise ConfigError(prefix.rstrip("."), str(err)) from None


def _leaf_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """(dotted key, type, field) for every leaf of the config tree."""
    leaves = []
    for section in dataclasses.fields(Config):
        section_cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(section_cls)
        for f in dataclasses.fields(section_cls):
            leaves.append((f"{section.name}.{f.name}", hints[f.name], f))
    return leaves


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    section, _, rest = key.partition(".")
    tree.setdefault(section, {})
    if "." in rest:  # a dict field addressed by its own dotted key, e.g. tune.space.optim.lr
        field_name, _, sub_key = rest.partition(".")
        node = tree[section].setdefault(field_name, {})
        if not isinstance(node, dict):
            raise ConfigError(key, f"{section}.{field_name} is not a mapping")
        node[sub_key] = value
    else:
        tree[section][rest] = value


def load_yaml(path: str) -> dict[str, Any]:
    """Read a preset; a missing file or a non-mapping is a config error."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError("--config", f"cannot read {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of sections")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_parser(prog: str, description: str, sections: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """A parser with ``--config`` and one ``--section.field`` option per config leaf.

    ``sections`` limits which sections appear in ``--help``; every key is still
    accepted so one preset file can serve every command.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Precedence: defaults <- --config YAML <- --section.key options. "
               "Bad values exit with code 2 before anything is written.",
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML preset (see cluster/presets/)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults = Config()
    for key, tp, f in _leaf_fields():
        section = key.split(".")[0]
        shown = sections is None or section in sections
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} options") if shown else parser
        default = getattr(getattr(defaults, section), f.name)
        help_text = f.metadata.get("help", "") if shown else argparse.SUPPRESS
        if shown:
            help_text += f" (default: {default})"
        groups[section].add_argument(f"--{key}", dest=key, metavar=_metavar(tp), default=_MISSING,
                                     help=help_text)
    return parser


def _metavar(tp: Any) -> str:
    tp, _ = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is list:
        return "N[,N...]"
    if origin is dict:
        return "SPEC"
    return {int: "INT", float: "FLOAT", bool: "BOOL", str: "TEXT"}.get(tp, "VALUE")


def config_from_args(args: argparse.Namespace, unknown: Sequence[str] = ()) -> Config:
    """Defaults <- YAML <- dotted options; ``unknown`` holds ``--tune.space.KEY VALUE`` pairs."""
    tree: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if "." in key and value is not _MISSING:
            _set_dotted(overrides, key, value)
    for key, value in _pairs(unknown):
        _set_dotted(overrides, key, value)
    return Config.from_dict(_merge(tree, overrides))


_MAP_FIELDS = ("tune.space.",)


def _pairs(unknown: Sequence[str]) -> list[tuple[str, str]]:
    """Split leftover ``--a.b.c VALUE`` / ``--a.b.c=VALUE`` tokens; only mapping fields may use them."""
    pairs, items = [], list(unknown)
    while items:
        token = items.pop(0)
        if not token.startswith("--"):
            raise ConfigError(token, "unexpected argument")
        key, eq, value = token[2:].partition("=")
        if not any(key.startswith(p) and len(key) > len(p) for p in _MAP_FIELDS):
            raise ConfigError(key, "unknown option (see --help)")
        if not eq:
            if not items:
                raise ConfigError(key, "needs a value")
            value = items.pop(0)
        pairs.append((key, value))
    return pairs


def parse_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> tuple[Config, argparse.Namespace]:
    """Parse ``argv`` into (Config, namespace); on a bad value print it and exit 2."""
    args, unknown = parser.parse_known_args(argv)
    try:
        return config_from_args(args, unknown), args
    except ConfigError as err:
        print(f"{parser.prog}: error: config {err.key}: {err.message}", file=sys.stderr)
        raise SystemExit(2) from None
