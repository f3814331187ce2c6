"""Typed config -> Ray Serve options, kept Ray-free so unit tests can check them without a cluster.

``config_from_app_args`` is how ``serve run`` / ``serve deploy`` arguments
become the one ``mlp.config.Config`` (same keys, validation and messages as
the CLI); ``deployment_options`` and ``http_options`` are the only places that
translate ``ServeConfig`` fields into Ray Serve's names.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Optional

from mlp.cli import config_from_args
from mlp.config import Config, ConfigError, ServeConfig


def config_from_app_args(args: Optional[Mapping[str, Any]]) -> Config:
    """``serve run ... serve.port=8001 config=x.yaml`` or YAML ``args: {serve: {...}}`` -> ``Config``."""
    flat: dict[str, Any] = {}
    for key, value in dict(args or {}).items():
        if key == "config":
            continue
        if isinstance(value, Mapping) and "." not in key:  # a whole section from a YAML config
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif "." in key:
            flat[key] = value
        else:
            raise ConfigError(key, "unknown argument: use section.key=value (e.g. serve.version=v2) or config=FILE")
    return config_from_args(argparse.Namespace(config=(args or {}).get("config"), **flat))


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """Ray options from the typed config: replicas/autoscaling, queue limits, CPUs, health checks, the model.

    Health checks run every ``health_check_period_s`` instead of Ray's 10 s (timeout 5 s instead of 30 s):
    a replica that goes bad is replaced within seconds. A replica that never loads a model fails its
    first check and never serves (see ``MLPService.check_health``).
    """
    options: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "ray_actor_options": {"num_cpus": cfg.replica_cpus},
        "user_config": {"version": cfg.version, "checkpoint": cfg.checkpoint},
        "logging_config": {"enable_access_log": cfg.access_log},
        "health_check_period_s": cfg.health_check_period_s,
        "health_check_timeout_s": cfg.health_check_timeout_s,
    }
    if cfg.min_replicas == cfg.max_replicas:
        options["num_replicas"] = cfg.min_replicas
    else:
        options["autoscaling_config"] = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                         "target_ongoing_requests": cfg.target_ongoing_requests}
    return options


def http_options(cfg: ServeConfig) -> dict[str, Any]:
    """``serve.start`` HTTP options: bind address (127.0.0.1 unless configured), port, proxy timeout."""
    return {"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s}
