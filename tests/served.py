"""A Serve app of an untrained MNIST model on the shared test cluster, for tests where the weights do not matter."""

from __future__ import annotations

from pathlib import Path

from ray import serve

from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.model import build_model
from mlp.registry import make_provenance, promote
from serve.app import build_from_config
from serve.options import http_options
from s3server import free_port


def deploy_untrained(tmp: Path, app: str) -> str:
    """Promote an untrained model into a registry under ``tmp`` and serve it as ``app`` (one replica, the
    default limits) on a free port; returns the endpoint's URL. The caller shuts Serve down."""
    cfg = Config.from_dict({"data": {"dataset": "mnist"}, "registry": {"path": str(tmp / "registry")},
                            "serve": {"port": free_port(), "min_replicas": 1, "max_replicas": 1}})
    checkpoint = save_checkpoint(tmp / "checkpoint", build_model(cfg.model, seed=0), cfg, {"epoch": 0})
    promote(cfg.registry.path, "mlp", checkpoint, {}, make_provenance(cfg, str(checkpoint)))
    serve.start(http_options=http_options(cfg.serve))
    serve.run(build_from_config(cfg), name=app, route_prefix="/")
    return f"http://127.0.0.1:{cfg.serve.port}"
