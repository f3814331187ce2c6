"""Deploy the Serve application on Ray, and serve until interrupted: shared by ``mlp serve`` and the pipeline.

It joins ``RAY_ADDRESS`` when set, otherwise starts a local Ray with the serving
settings of ``mlp.distributed.rayenv`` (HAProxy ingress and friends), checks that every
node can read the model, and runs the application built by ``serve.app``.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

from mlp.config import Config
from mlp.console import run_command

APP_NAME = "mlp"
log = logging.getLogger("serve")


def deploy(cfg: Config) -> str:
    """Start Ray (or join ``RAY_ADDRESS``), deploy the app for ``cfg``, and return its URL.

    Shared by ``python -m serve`` and ``mlp-pipeline``; the model folder must
    already resolve (callers check first, so errors name the fix).
    """
    from ray import serve

    from mlp.distributed.trainer import init_ray
    from mlp.preflight.checks import check_cluster
    from serve.app import build_from_config, failure_reason
    from serve.options import http_options

    init_ray()  # a cluster it starts itself gets mlp.distributed.rayenv's serving settings
    log.info("%s", check_cluster(cfg, "serve").summary())  # every node can read the model it will load
    serve.start(http_options=http_options(cfg.serve))
    try:
        serve.run(build_from_config(cfg), name=APP_NAME, route_prefix="/")
    except RuntimeError as err:  # serve.run says only "Failed to update the deployments"; say why
        raise DeployFailed(f"the application did not start: {failure_reason(APP_NAME)}") from err
    return f"http://{cfg.serve.host}:{cfg.serve.port}"


def deploy_command(prog: str, cfg: Config) -> tuple[int, str]:
    """``deploy`` as a command's step: (0, url), or (exit code, "") after one stderr line.

    A failed preflight exits 2 (``run_command``); no replica able to start exits 1 with the replicas' reason.
    """
    urls: list[str] = []
    try:
        code = run_command(prog, lambda: urls.append(deploy(cfg)))
    except DeployFailed as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1, ""
    return code, urls[0] if urls else ""


class DeployFailed(RuntimeError):
    """No replica could start (e.g. none could load the model); the message carries the replicas' reason."""


def serve_until_interrupted() -> None:
    """Block until Ctrl-C or SIGTERM (systemd, `kill`, CI), then shut Serve down cleanly."""
    from ray import serve

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        serve.shutdown()
