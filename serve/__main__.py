"""``python -m serve`` (console script ``mlp-serve``): serve the promoted model locally until Ctrl-C.

With no arguments it serves ``latest`` from the default registry
(``$MLP_HOME/registry``) on http://127.0.0.1:8000. Every ``--serve.*`` and
``--registry.*`` option of ``mlp.config`` applies, as does ``--config FILE.yaml``.
It joins ``RAY_ADDRESS`` when set, otherwise starts a local Ray with the
serving settings of ``mlp.distributed.rayenv`` (HAProxy ingress and friends). For a
cluster, prefer ``serve deploy cluster/serve_config.yaml`` (same application).

A model trained on a table (``data.source``) is served the same way; its
``/predict`` takes rows by column name (``serve.inputs.parse_rows``).
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
    from serve.deploy import deploy_command, serve_until_interrupted  # Ray and torch: after --help and bad options
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
    log.info("serving %s (%s) at %s, taking %s  -- docs: %s/docs, Ctrl-C to stop", source.version
             if not source.checkpoint else source.checkpoint, folder, url, takes, url)
    serve_until_interrupted()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
