"""The search space: readable specs by dotted config key, validated before Ray starts.

A space maps a config key to a spec string (``--tune.space.KEY SPEC`` or the
``tune.space`` mapping of a YAML preset)::

    choice:32,64,128        one of these values (a list field takes 256/128 for two layers)
    uniform:LO:HI[:N]       float in [LO, HI]
    loguniform:LO:HI[:N]    float, log-uniform in [LO, HI] (LO > 0)
    randint:LO:HI[:N]       whole number in [LO, HI], both ends included
    lograndint:LO:HI[:N]    whole number, log-uniform in [LO, HI]

``N`` is only used by ``--tune.search grid``: the range becomes N evenly
(or log-evenly) spaced points and every ``choice`` becomes a grid axis.
Random search and Optuna sample the ranges and ignore ``N``.

Every spec is parsed into a ``Dim`` and every value it can produce is checked
against the config's own validation, so ``choice:0`` for a hidden size or
``loguniform:0.5:0.001`` fails here with exit code 2, not inside a trial.
This module knows Ray only in ``to_param_space``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Optional

from mlp.config import Config, ConfigError, coerce

KINDS = ("choice", "uniform", "loguniform", "randint", "lograndint")
RANGE_KINDS = KINDS[1:]
# train.epochs is ASHA's max_t and train.threads a machine setting: neither is a hyperparameter.
TUNABLE_SECTIONS = ("model", "optim", "train", "data")
NOT_TUNABLE = ("train.epochs", "train.threads", "train.target_accuracy", "data.dataset", "data.dir",
               "data.synthetic_size")
LAYER_SEP = "/"


@dataclass(frozen=True)
class Dim:
    """One searched config key: a list of choices or a numeric range."""

    key: str
    kind: str
    values: tuple[Any, ...] = ()  # choice: scalars as they appear in results ("256/128" for two layers)
    low: float = 0.0
    high: float = 0.0
    points: Optional[int] = None  # grid points of a range
    is_int: bool = False

    @property
    def log(self) -> bool:
        return self.kind in ("loguniform", "lograndint")

    def grid_values(self) -> list[Any]:
        """The values a grid search visits; ``[]`` when a range has no point count."""
        if self.kind == "choice":
            return list(self.values)
        if not self.points:
            return []
        n = self.points
        if n == 1:
            raw = [self.low]
        elif self.log:
            ratio = math.log(self.high / self.low)
            raw = [self.low * math.exp(ratio * i / (n - 1)) for i in range(n)]
        else:
            raw = [self.low + (self.high - self.low) * i / (n - 1) for i in range(n)]
        if self.is_int:
            return sorted({int(round(v)) for v in raw})
        return [float(f"{v:.6g}") for v in raw]


def field_types() -> dict[str, Any]:
    """Dotted key -> field type for every leaf of the config tree."""
    types: dict[str, Any] = {}
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        for key, tp in typing.get_type_hints(cls).items():
            types[f"{section.name}.{key}"] = tp
    return types


def tunable_keys() -> list[str]:
    return sorted(k for k in field_types() if k.split(".")[0] in TUNABLE_SECTIONS and k not in NOT_TUNABLE)


def _is_int_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list and typing.get_args(tp) == (int,)


def to_config_value(key: str, value: Any) -> Any:
    """A sampled value -> the config's own type (``64`` -> ``[64]``, ``"256/128"`` -> ``[256, 128]``)."""
    tp = field_types()[key]
    if _is_int_list(tp):
        if isinstance(value, str):
            return coerce(key, tp, value.replace(LAYER_SEP, ","))
        return [int(value)]
    if tp is int:
        return int(value)
    return coerce(key, tp, value) if isinstance(value, str) else value


def _check_value(spec_key: str, key: str, value: Any) -> None:
    """Let the config's own ``__post_init__`` judge a value, reported under the space key."""
    section, name = key.split(".", 1)
    try:
        Config.from_dict({section: {name: to_config_value(key, value)}})
    except ConfigError as err:
        raise ConfigError(spec_key, f"value {value!r} is not allowed: {err.message}") from None


def _number(spec_key: str, text: str, whole: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(spec_key, f"{text!r} is not a number") from None
    if whole and value != int(value):
        raise ConfigError(spec_key, f"{text!r} is not a whole number")
    return value


def parse_dim(key: str, spec: str) -> Dim:
    """Parse one ``KIND:ARGS`` spec for ``key``; ConfigError names ``tune.space.<key>``."""
    spec_key = f"tune.space.{key}"
    types = field_types()
    if key not in types:
        raise ConfigError(spec_key, f"unknown key (searchable: {', '.join(tunable_keys())})")
    if key not in tunable_keys():
        raise ConfigError(spec_key, f"cannot be searched (searchable: {', '.join(tunable_keys())})")
    kind, sep, rest = str(spec).strip().partition(":")
    if not sep or kind not in KINDS:
        raise ConfigError(spec_key, f"spec {spec!r} must start with one of {', '.join(k + ':' for k in KINDS)}")
    tp = types[key]
    numeric_int = tp is int or _is_int_list(tp)
    if kind == "choice":
        items = [item.strip() for item in rest.split(",") if item.strip()]
        if not items:
            raise ConfigError(spec_key, "choice needs at least one value, e.g. choice:32,64,128")
        values = tuple(_choice_value(spec_key, key, tp, item) for item in items)
        if len(set(values)) != len(values):
            raise ConfigError(spec_key, f"choice lists a value twice: {rest}")
        return Dim(key, kind, values=values, is_int=numeric_int)
    if tp not in (int, float) and not _is_int_list(tp):
        raise ConfigError(spec_key, f"{kind} needs a numeric key; use choice: for this one")
    parts = rest.split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(spec_key, f"expected {kind}:LOW:HIGH[:N], got {spec!r}")
    whole = kind in ("randint", "lograndint")
    if whole and not numeric_int:
        raise ConfigError(spec_key, f"{kind} needs a whole-number key; use uniform/loguniform")
    low, high = _number(spec_key, parts[0], whole), _number(spec_key, parts[1], whole)
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(spec_key, f"low ({parts[0]}) must be below high ({parts[1]})")
    if kind.startswith("log") and low <= 0:
        raise ConfigError(spec_key, f"{kind} needs low > 0, got {parts[0]}")
    points = None
    if len(parts) == 3:
        points = int(_number(spec_key, parts[2], True))
        if points < 1:
            raise ConfigError(spec_key, f"grid point count must be >= 1, got {parts[2]}")
    is_int = whole or numeric_int
    for end in (low, high):
        _check_value(spec_key, key, int(end) if is_int else end)
    return Dim(key, kind, low=low, high=high, points=points, is_int=is_int)


def _choice_value(spec_key: str, key: str, tp: Any, item: str) -> Any:
    """A choice item as a JSON/Optuna-friendly scalar, validated through the config."""
    if _is_int_list(tp) and LAYER_SEP not in item:
        value: Any = int(_number(spec_key, item, True))
    elif _is_int_list(tp):
        value = LAYER_SEP.join(str(int(_number(spec_key, p, True))) for p in item.split(LAYER_SEP))
    else:
        try:
            value = coerce(key, tp, item)
        except ConfigError as err:
            raise ConfigError(spec_key, f"value {item!r}: {err.message}") from None
    _check_value(spec_key, key, value)
    return value


def parse_space(space: dict[str, str], search: str = "random") -> list[Dim]:
    """Every dim of the space, checked as a whole (also: grid needs point counts)."""
    if not space:
        raise ConfigError("tune.space", "is empty: give at least one --tune.space.KEY SPEC")
    dims = [parse_dim(key, spec) for key, spec in space.items()]
    if search == "grid":
        for dim in dims:
            if not dim.grid_values():
                raise ConfigError(f"tune.space.{dim.key}",
                                  f"grid search needs a point count, e.g. {dim.kind}:{dim.low:g}:{dim.high:g}:5")
    return dims


def grid_size(dims: list[Dim]) -> int:
    return math.prod(len(d.grid_values()) for d in dims)


def to_param_space(dims: list[Dim], search: str) -> dict[str, Any]:
    """Ray Tune domains keyed by the dotted config key (flat, so Optuna sees plain names)."""
    from ray import tune

    out: dict[str, Any] = {}
    for dim in dims:
        if search == "grid":
            out[dim.key] = tune.grid_search(dim.grid_values())
        elif dim.kind == "choice":
            out[dim.key] = tune.choice(list(dim.values))
        elif dim.kind == "uniform":
            out[dim.key] = tune.randint(int(dim.low), int(dim.high) + 1) if dim.is_int \
                else tune.uniform(dim.low, dim.high)
        elif dim.kind == "loguniform":
            out[dim.key] = tune.lograndint(int(dim.low), int(dim.high) + 1) if dim.is_int \
                else tune.loguniform(dim.low, dim.high)
        elif dim.kind == "randint":
            out[dim.key] = tune.randint(int(dim.low), int(dim.high) + 1)
        else:
            out[dim.key] = tune.lograndint(int(dim.low), int(dim.high) + 1)
    return out


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """The base config (as ``to_dict``) with sampled values set by dotted key, validated."""
    tree = copy.deepcopy(base)
    for key, value in params.items():
        section, name = key.split(".", 1)
        tree[section][name] = to_config_value(key, value)
    return Config.from_dict(tree)


def describe(dims: list[Dim]) -> str:
    """One line per dim, for the sweep's start-up banner."""
    lines = []
    for d in dims:
        if d.kind == "choice":
            lines.append(f"  {d.key}: one of {', '.join(map(str, d.values))}")
        else:
            grid = f", {d.points} grid points" if d.points else ""
            lines.append(f"  {d.key}: {d.kind} in [{d.low:g}, {d.high:g}]{grid}")
    return "\n".join(lines)
