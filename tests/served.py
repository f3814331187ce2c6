"""Serve test helpers: an app of an untrained MNIST model (for tests where the weights do not matter), and
reading the endpoint's metrics from Ray's real metrics export port."""

from __future__ import annotations

from pathlib import Path

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families
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


Samples = list[tuple[str, dict[str, str], float]]


def metrics_urls() -> list[str]:
    """Every alive node's Prometheus endpoint: the port its metrics agent exports on."""
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert nodes and all(n.get("MetricsExportPort") for n in nodes), nodes
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in nodes]


def scrape(urls: list[str], app: str) -> Samples:
    """Application ``app``'s endpoint samples (``ray_mlp_*``) from every node: (name, labels, value)."""
    samples: Samples = []
    for url in urls:
        text = httpx.get(url, timeout=10).text
        for family in text_string_to_metric_families(text):
            samples += [(s.name, s.labels, s.value) for s in family.samples
                        if s.name.startswith("ray_mlp_") and s.labels.get("application") == app]
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series (replica, worker) of ``name`` whose labels include ``labels``."""
    return sum(value for n, tags, value in samples
               if n == name and all(tags.get(k) == v for k, v in labels.items()))
