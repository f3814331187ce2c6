"""``python -m serve`` (console script ``mlp-serve``): serve the promoted model locally until Ctrl-C.

With no arguments it serves ``latest`` from the default registry
(``$MLP_HOME/registry``) on http://127.0.0.1:8000. Every ``--serve.*`` and
``--registry.*`` option of ``mlp.config`` applies, as does ``--config FILE.yaml``.
It joins ``RAY_ADDRESS`` when set, otherwise starts a local Ray with the
serving settings of ``mlp.distributed.rayenv`` (HAProxy ingress and friends). For a
cluster, prefer ``serve deploy cluster/serve_config.yaml`` (same application).

A model trained on a table (``data.source``) is served the same way; its
``/predict`` takes rows by column name (``serve.inputs.parse_rows``).

With ``--serve.api_keys_file FILE`` ``/predict`` needs an API key (``serve.keys``); a FILE that is
missing, unreadable or holds no digest exits 2 before Ray starts. Without it, on an address other than
loopback, the start-up line says that ``/predict`` is open to anyone and how to require keys.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

from mlp.options import make_parser, parse_config

log = logging.getLogger("serve")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser("python -m serve", "Serve the promoted MLP over HTTP with Ray Serve "
                         "(JSON pixels or PNG/JPEG images, or a table model's rows by column name, to POST "
                         "/predict; docs at /docs).",
                         sections=("serve", "registry"))
    cfg, _ = parse_config(parser, argv)
    access = ""  # what the start-up line says about who may call /predict
    if cfg.serve.api_keys_file:
        from mlp.config import ConfigError
        from serve.keys import KeyRing

        try:
            keys = KeyRing(cfg.serve.api_keys_file)  # the replicas read it again; here a mistake costs no Ray start
        except ConfigError as err:
            print(f"{parser.prog}: error: config {err.key}: {err.message}", file=sys.stderr)
            return 2
        # Absolute: replicas may run in another working directory (on a cluster, the path must exist on every node).
        cfg.serve.api_keys_file = str(keys.path.absolute())
        access = f"\n/predict needs an API key ({keys.describe()} in {keys.path}; re-read when it changes)"
    from serve.deploy import deploy_command, serve_until_interrupted  # Ray and torch: after --help and bad options
    from serve.options import open_predict_notice
    from serve.predictor import ModelSource

    source = ModelSource.from_config(cfg)
    try:
        folder = source.resolve()  # fail here, with the fix in the message, not inside a replica
    except FileNotFoundError as err:
        print(f"python -m serve: {err}", file=sys.stderr)
        return 1
    from mlp.checkpoint import read_config

    features = read_config(folder).schema.features
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    code, url = deploy_command(parser.prog, cfg)
    if code:
        return code
    takes = f"rows by column name: {', '.join(features)}" if features else "JSON pixels or PNG/JPEG images"
    notice = open_predict_notice(cfg.serve)  # None with keys, or on loopback
    if notice:
        access = f"\nWARNING: {notice}"
    log.info("serving %s (%s) at %s, taking %s  -- docs: %s/docs, Ctrl-C to stop%s", source.version
             if not source.checkpoint else source.checkpoint, folder, url, takes, url, access)
    serve_until_interrupted()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
