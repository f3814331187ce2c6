"""mlp.preflight.checks on the session cluster (1 node, 2 CPUs, no GPU), plus one test that adds a node with its own disk.

The hang guard (``within``) is not a timing assertion: without a preflight these
requests wait forever, so the guard turns "waits" into a failure instead of a hung suite.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
import ray

from mlp.preflight.checks import PROBE_DIR, PreflightError, check_cluster

HANG_GUARD_S = 60


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(fn).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def files_under(folder: Path) -> list[str]:
    return sorted(str(Path(d, f).relative_to(folder)) for d, _, fs in os.walk(folder) for f in fs)


def test_use_gpu_without_gpus_fails_naming_gpu(config_factory):
    cfg = config_factory(scaling={"use_gpu": True, "num_workers": 2})
    with pytest.raises(PreflightError) as err:
        within(HANG_GUARD_S, lambda: check_cluster(cfg, "train"))
    (problem,) = err.value.problems
    assert problem.startswith("scaling.use_gpu: the request needs 2 workers x 1 GPU, but no node of this cluster "
                              "has a GPU")
    assert ray.util.get_node_ip_address() in problem and "Run without --scaling.use_gpu" in problem


def test_more_workers_than_cpus_fails_naming_cpu(config_factory):
    cfg = config_factory(scaling={"num_workers": 3, "cpus_per_worker": 1})
    with pytest.raises(PreflightError) as err:
        within(HANG_GUARD_S, lambda: check_cluster(cfg, "train"))
    (problem,) = err.value.problems
    assert problem.startswith("scaling.num_workers: the request needs 3 workers x 1 CPU")
    assert "the nodes hold at most 2" in problem


def test_unwritable_storage_names_the_node_and_the_path(config_factory, tmp_path: Path):
    (tmp_path / "file").write_text("a file where a folder should be")
    storage = tmp_path / "file" / "runs"
    cfg = config_factory(run={"storage_path": str(storage)})
    with pytest.raises(PreflightError) as err:
        within(HANG_GUARD_S, lambda: check_cluster(cfg, "train"))
    node_id = ray.get_runtime_context().get_node_id()
    on_node = [p for p in err.value.problems if node_id in p]
    assert len(on_node) == 1, err.value.problems
    assert on_node[0].startswith(f"run.storage_path: node {node_id} ({ray.util.get_node_ip_address()}) cannot write")
    assert str(storage) in on_node[0] and "Not a directory" in on_node[0]


def test_a_good_path_passes_and_leaves_no_probe(config_factory, tmp_path: Path):
    cfg = config_factory(run={"storage_path": str(tmp_path / "runs")})
    report = within(HANG_GUARD_S, lambda: check_cluster(cfg, "train"))
    assert [n.node_id for n in report.nodes] == [ray.get_runtime_context().get_node_id()]
    assert report.nodes[0].passed == ["wrote and read back a probe", "saw the driver's probe"]
    assert files_under(tmp_path / "runs") == [] and not (tmp_path / "runs" / PROBE_DIR).exists()
    report = check_cluster(cfg, "sweep")
    assert report.nodes[0].problems == [] and files_under(tmp_path / "runs") == []


def test_serve_checks_the_model_every_node_will_load(config_factory, tmp_path: Path):
    missing = config_factory(serve={"checkpoint": str(tmp_path / "ckpt")})
    with pytest.raises(PreflightError) as err:
        check_cluster(missing, "serve")
    (problem,) = err.value.problems
    assert problem.startswith("serve.checkpoint: node ") and "cannot read the model" in problem
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"weights")
    report = check_cluster(missing, "serve")
    assert report.nodes[0].passed == ["read the model"]
    with pytest.raises(PreflightError, match="^registry.path: no promoted model"):
        check_cluster(config_factory(), "serve")


def test_a_manual_cluster_is_not_taken_for_an_autoscaling_one(config_factory):
    # The session cluster runs autoscaler v1 in read-only mode; its status must not count as autoscaling,
    # or every request that does not fit would become a mere note.
    report = check_cluster(config_factory(), "train")
    assert report.autoscaling == "no autoscaler with node types in GCS"
    with pytest.raises(PreflightError):
        check_cluster(config_factory(scaling={"num_workers": 3}), "train")
