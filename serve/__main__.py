"""``python -m serve`` (console script ``mlp-serve``): serve the promoted model locally until Ctrl-C.

With no arguments it serves ``latest`` from the default registry
(``$MLP_HOME/registry``) on http://127.0.0.1:8000. Every ``--serve.*`` and
``--registry.*`` option of ``mlp.config`` applies, as does ``--config FILE.yaml``.
It joins ``RAY_ADDRESS`` when set, otherwise starts a local Ray with the
serving settings of ``mlp.rayenv`` (HAProxy ingress and friends). For a
cluster, prefer ``serve deploy cluster/serve_config.yaml`` (same application).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Optional, Sequence

from mlp.cli import make_parser, parse_config, run_command
from mlp.config import Config
from serve.predictor import ModelSource

APP_NAME = "mlp"
log = logging.getLogger("serve")


def deploy(cfg: Config) -> str:
    """Start Ray (or join ``RAY_ADDRESS``), deploy the app for ``cfg``, and return its URL.

    Shared by ``python -m serve`` and ``mlp-pipeline``; the model folder must
    already resolve (callers check first, so errors name the fix).
    """
    from ray import serve

    from mlp.distributed import init_ray
    from mlp.preflight import check_cluster
    from serve.app import build_from_config, failure_reason
    from serve.options import http_options

    init_ray()  # a cluster it starts itself gets mlp.rayenv's serving settings
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser("python -m serve", "Serve the promoted MLP over HTTP with Ray Serve "
                         "(JSON pixels or PNG/JPEG images to POST /predict; docs at /docs).",
                         sections=("serve", "registry"))
    cfg, _ = parse_config(parser, argv)
    source = ModelSource.from_config(cfg)
    try:
        folder = source.resolve()  # fail here, with the fix in the message, not inside a replica
    except FileNotFoundError as err:
        print(f"python -m serve: {err}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    code, url = deploy_command(parser.prog, cfg)
    if code:
        return code
    log.info("serving %s (%s) at %s  -- docs: %s/docs, Ctrl-C to stop", source.version
             if not source.checkpoint else source.checkpoint, folder, url, url)
    serve_until_interrupted()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
