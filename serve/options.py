"""Typed config -> Ray Serve options and the admin route's access rule, kept Ray-free so unit tests can check
them without a cluster.

``config_from_app_args`` is how ``serve run`` / ``serve deploy`` arguments
become the one ``mlp.config.Config`` (same keys, validation and messages as
the CLI); ``deployment_options`` and ``http_options`` are the only places that
translate ``ServeConfig`` fields into Ray Serve's names. ``admin_access``
decides who may call ``POST /admin/reload``: anyone when the endpoint only
listens on loopback, else only the holder of a token (and nobody when there
is no token). ``POST /predict`` needs an API key whenever ``serve.api_keys_file``
is set (``serve.keys``); without it, it stays open, and ``open_predict_notice``
is the warning a replica logs when that endpoint listens beyond loopback.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from mlp.options import config_from_args
from mlp.config import Config, ConfigError, ServeConfig
from serve.inputs import InputError

ADMIN_TOKEN_ENV = "MLP_ADMIN_TOKEN"
MIN_TOKEN_CHARS = 16  # a short secret can be guessed over HTTP; secrets.token_urlsafe(32) gives 43
UNKNOWN_HOST = "an address Serve did not report"  # not loopback: an unknown address counts as exposed


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


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for 0.0.0.0, ::, other addresses and names."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def exposed_address(cfg: ServeConfig, bound_host: Optional[str] = None) -> Optional[str]:
    """The first of ``serve.host`` and the bound address that is not loopback; None while both are loopback."""
    exposed = [host for host in (cfg.host, bound_host) if host is not None and not is_loopback(host)]
    return exposed[0] if exposed else None


def open_predict_notice(cfg: ServeConfig, bound_host: Optional[str] = None) -> Optional[str]:
    """The start-up warning for ``POST /predict`` left open beyond loopback (no ``serve.api_keys_file``); None
    when keys are required or the endpoint listens on loopback only (open there, as always)."""
    exposed = exposed_address(cfg, bound_host)
    if cfg.api_keys_file or exposed is None:
        return None
    return (f"POST /predict is open to anyone who can reach {exposed}:{cfg.port}: to require API keys, make one "
            "with `python -m serve.keys new --name NAME --file FILE` and serve with --serve.api_keys_file FILE "
            "(serve.api_keys_file in a YAML)")


@dataclass(frozen=True)
class AdminAccess:
    """Who may call the admin routes: ``open`` (loopback only), ``token`` (a bearer token) or ``off``."""

    mode: str
    reason: str = ""  # shown to clients: why the route is off, or where the token comes from
    digest: bytes = b""
    detail: str = ""  # for the replica's log only (may name files and OS errors)

    def check(self, authorization: Optional[str]) -> None:
        """Return if the request may pass; raise the 401/403 ``InputError`` that says why not and how to fix it."""
        if self.mode == "open":
            return
        if self.mode == "off":
            raise InputError(403, f"POST /admin/reload is off: {self.reason}. To enable it, put a token of at "
                                  f"least {MIN_TOKEN_CHARS} characters in the file named by serve.admin_token_file "
                                  f"(or in ${ADMIN_TOKEN_ENV} of the replicas' environment), redeploy, and send "
                                  "'Authorization: Bearer <token>'")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise InputError(401, "admin token required: this endpoint listens beyond loopback, send "
                                  "'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
        # Digests of equal length, compared in constant time: neither the token nor its length leaks.
        if not hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(), self.digest):
            raise InputError(401, "admin token rejected", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def admin_access(cfg: ServeConfig, bound_host: Optional[str] = None,
                 environ: Optional[Mapping[str, str]] = None) -> AdminAccess:
    """The access rule for ``cfg``; ``bound_host`` is the address Serve's HTTP ingress really binds, when known.

    Open only while both ``serve.host`` and the bound address are loopback (a ``serve deploy`` YAML sets
    ``http_options.host`` apart from ``args.serve.host``). Otherwise a token is required: the contents of
    ``serve.admin_token_file`` (whitespace around it dropped), else ``$MLP_ADMIN_TOKEN``; with neither, or
    one too short, the route is off. Read once, when the replica starts.
    """
    exposed = exposed_address(cfg, bound_host)
    if exposed is None:
        return AdminAccess("open")
    where = f"the endpoint listens on {exposed}, not a loopback address"
    environ = os.environ if environ is None else environ
    if cfg.admin_token_file:
        source = f"serve.admin_token_file {cfg.admin_token_file}"
        try:
            token = Path(cfg.admin_token_file).expanduser().read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            return AdminAccess("off", f"{where}, and serve.admin_token_file cannot be read",
                               detail=f"{source} cannot be read: {err}")
    else:
        source, token = f"${ADMIN_TOKEN_ENV}", environ.get(ADMIN_TOKEN_ENV, "").strip()
        if not token:
            return AdminAccess("off", f"{where}, and no admin token is configured")
    if len(token) < MIN_TOKEN_CHARS:
        return AdminAccess("off", f"{where}, and the admin token is shorter than {MIN_TOKEN_CHARS} characters",
                           detail=f"the token in {source} has {len(token)} characters")
    digest = hashlib.sha256(token.encode()).digest()
    return AdminAccess("token", "a bearer token", digest, detail=f"token from {source}")
