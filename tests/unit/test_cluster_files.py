"""The shipped cluster files point at real entry points with options those entry points accept,
put runs and the registry on storage every node reaches, and start nodes with the project's Ray
settings (``mlp.rayenv.CLUSTER_ENV``)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pytest
import yaml

from mlp.options import make_parser, parse_config
from mlp.config import Config
from mlp.distributed.rayenv import CLUSTER_ENV

ROOT = Path(__file__).parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = ["kuberay/rayjob-train.yaml", "kuberay/rayservice.yaml"]
# Where cluster/Dockerfile puts this repository inside the image.
IMAGE_ROOT = re.search(r"^WORKDIR\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)


@pytest.fixture(autouse=True)
def _node_local_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults resolve to ~/mlp, a node-local folder, so a path a manifest forgets to set cannot pass."""
    monkeypatch.delenv("MLP_HOME", raising=False)


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


def _repo_file(arg: str) -> Path:
    """A path as a manifest names it (relative, or inside the image) -> the file in this checkout."""
    path = PurePosixPath(arg)
    if path.is_relative_to(IMAGE_ROOT):
        path = path.relative_to(IMAGE_ROOT)
    return ROOT / path


def _training_config(command: str) -> Config:
    """`python -m mlp.train ...` inside a manifest, parsed exactly as the CLI would parse it."""
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "mlp.train"], argv
    for arg in argv:
        if arg.endswith(".yaml"):
            assert _repo_file(arg).is_file(), f"{arg} does not exist"
    parser = make_parser("mlp-train", "")
    parser.add_argument("--promote", action="store_true")
    cfg, _ = parse_config(parser, [str(_repo_file(a)) if a.endswith(".yaml") else a for a in argv[3:]])
    return cfg


def _serve_application(doc: dict[str, Any]) -> dict[str, Any]:
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"]) if doc.get("kind") == "RayService" else doc
    (app,) = serve_config["applications"]
    return app


def _ray_cluster(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return spec["rayClusterSpec"] if doc["kind"] == "RayJob" else spec["rayClusterConfig"]


def _containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, container, pod spec) for the head and every worker group."""
    cluster = _ray_cluster(doc)
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    for group, spec in groups:
        pod = spec["template"]["spec"]
        for container in pod["containers"]:
            yield f"{group}/{container['name']}", container, pod


def _env(container: dict[str, Any]) -> dict[str, str]:
    names = [e["name"] for e in container.get("env") or []]
    assert len(names) == len(set(names)), f"duplicate env names in {container['name']}: {names}"
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def _shared_mounts(container: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    """Mount paths of the volumes that are the shared claim of cluster/kuberay/pvc.yaml."""
    claim = _load("kuberay/pvc.yaml")["metadata"]["name"]
    shared = {v["name"] for v in pod.get("volumes") or []
              if (v.get("persistentVolumeClaim") or {}).get("claimName") == claim}
    return [m["mountPath"] for m in container.get("volumeMounts") or [] if m["name"] in shared]


def _on_shared_volume(path: str, doc: dict[str, Any]) -> None:
    """``path`` lies on the shared volume as every Ray container of ``doc`` mounts it."""
    containers = list(_containers(doc))
    assert len(containers) >= 2, "expected a head and at least one worker group"
    for label, container, pod in containers:
        mounts = _shared_mounts(container, pod)
        assert mounts, f"{label} does not mount the shared claim of cluster/kuberay/pvc.yaml"
        assert any(PurePosixPath(path).is_relative_to(m) for m in mounts), \
            f"{path} is not on the shared volume in {label} (mounted at {mounts})"


# ---------------------------------------------------------------- entry points and options

def test_rayjob_entrypoint_is_a_valid_training_command() -> None:
    job = _load("kuberay/rayjob-train.yaml")
    assert job["kind"] == "RayJob"
    assert job["spec"]["rayClusterSpec"]["rayVersion"].startswith("2.60")
    assert job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    cfg = _training_config(job["spec"]["entrypoint"])
    assert cfg.data.dataset == "fashion-mnist"
    for label, container, _ in _containers(job):
        assert container["workingDir"] == IMAGE_ROOT, label


def test_cluster_launcher_config_parses() -> None:
    launcher = _load("cluster.yaml")
    assert launcher["provider"]["type"] == "local"
    assert any("RAY_AUTH_MODE=token" in c for c in launcher["head_start_ray_commands"])


@pytest.mark.parametrize("source", ["serve_config.yaml", "kuberay/rayservice.yaml"])
def test_serve_configs_build_a_valid_application_config(source: str) -> None:
    from serve.options import config_from_app_args, deployment_options

    app = _serve_application(_load(source))
    module, _, attr = app["import_path"].partition(":")
    assert (module, attr) == ("serve.app", "build_app")
    cfg = config_from_app_args(app["args"])  # the same validation build_app applies
    assert deployment_options(cfg.serve)["max_queued_requests"] == cfg.serve.max_queued_requests


# ---------------------------------------------------------------- shared storage (KubeRay)

def test_shared_claim_is_read_write_many() -> None:
    pvc = _load("kuberay/pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "head and workers on different nodes mount it"


def test_training_job_writes_runs_and_registry_to_the_shared_volume() -> None:
    job = _load("kuberay/rayjob-train.yaml")
    cfg = _training_config(job["spec"]["entrypoint"])
    _on_shared_volume(cfg.run.storage_path, job)
    _on_shared_volume(cfg.registry.path, job)


def test_rayservice_reads_the_registry_the_training_job_promotes_into() -> None:
    from serve.options import config_from_app_args

    service = _load("kuberay/rayservice.yaml")
    served = config_from_app_args(_serve_application(service)["args"]).registry
    _on_shared_volume(served.path, service)
    trained = _training_config(_load("kuberay/rayjob-train.yaml")["spec"]["entrypoint"]).registry
    assert (served.path, served.model_name) == (trained.path, trained.model_name)


@pytest.mark.parametrize("manifest", KUBERAY)
def test_kuberay_default_home_is_on_the_shared_volume(manifest: str) -> None:
    """MLP_HOME in the pods makes the default run and registry paths shared as well."""
    doc = _load(manifest)
    homes = {label: _env(container).get("MLP_HOME") for label, container, _ in _containers(doc)}
    assert None not in homes.values(), f"MLP_HOME missing in {homes}"
    for home in set(homes.values()):
        _on_shared_volume(home, doc)


# ---------------------------------------------------------------- the project's Ray settings

@pytest.mark.parametrize("manifest", KUBERAY)
def test_kuberay_containers_carry_exactly_the_project_cluster_env(manifest: str) -> None:
    containers = list(_containers(_load(manifest)))
    assert len(containers) >= 2, "expected a head and at least one worker group"
    for label, container, _ in containers:
        env = _env(container)
        ray_settings = {k: v for k, v in env.items() if k in CLUSTER_ENV or k.startswith("RAY_")}
        assert ray_settings == CLUSTER_ENV, f"{manifest} {label}"


def _start_command(launcher: dict[str, Any], key: str) -> str:
    starts = [c for c in launcher[key] if "ray start" in c]
    assert len(starts) == 1, starts
    return starts[0]


def _run_start_command(command: str, tmp_path: Path, python_works: bool = True) -> subprocess.CompletedProcess:
    """Run a launcher start command with `ray` replaced by a stub that prints what `ray start` would see.

    A clean environment (no project settings inherited from this process); `python` is this
    interpreter, so ``python -m mlp.distributed.rayenv`` prints this checkout's settings, or a stand-in
    that fails like a node where the package is not installed.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python"
    python.unlink(missing_ok=True)
    if python_works:
        python.symlink_to(sys.executable)
    else:
        python.write_text("#!/bin/sh\necho 'No module named mlp' >&2\nexit 1\n")
        python.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT), "RAY_HEAD_IP": "10.0.0.10"}
    stub = 'ray() { if [ "$1" = start ]; then env -0; printf "\\0ARGS\\0%s" "$*"; fi; }'
    return subprocess.run(["bash", "-c", f"{stub}\n{command}"], env=env, cwd=tmp_path, capture_output=True,
                          timeout=60)


def _seen_by_ray_start(out: subprocess.CompletedProcess) -> tuple[dict[str, str], list[str]]:
    """(environment, arguments) the stub `ray start` printed."""
    assert out.returncode == 0, out.stderr.decode()
    fields = out.stdout.decode().split("\0")
    assert "ARGS" in fields, "`ray start` was not reached"
    at = fields.index("ARGS")
    return dict(f.split("=", 1) for f in fields[:at] if "=" in f), fields[at + 1].split()


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_launcher_start_commands_apply_the_project_env(key: str, tmp_path: Path) -> None:
    launcher = _load("cluster.yaml")
    seen, args = _seen_by_ray_start(_run_start_command(_start_command(launcher, key), tmp_path))
    assert args[0] == "start"
    assert ("--head" in args) == (key == "head_start_ray_commands")
    assert {k: seen.get(k) for k in CLUSTER_ENV} == CLUSTER_ENV
    assert seen.get("RAY_AUTH_MODE") == "token"
    # MLP_HOME (the default runs and registry) is the shared folder the setup commands mount.
    mounted = [shlex.split(c)[2] for c in launcher["setup_commands"] if c.startswith("mountpoint -q ")]
    assert mounted and seen.get("MLP_HOME") == mounted[0]


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_launcher_does_not_start_ray_without_the_project_env(key: str, tmp_path: Path) -> None:
    """`eval "$(python -m mlp.distributed.rayenv)"` alone would eval nothing and go on when the package is missing."""
    out = _run_start_command(_start_command(_load("cluster.yaml"), key), tmp_path, python_works=False)
    assert out.returncode != 0
    assert b"ARGS" not in out.stdout, "`ray start` ran although `python -m mlp.distributed.rayenv` failed"


# ---------------------------------------------------------------- Grafana dashboard

def _exported_metrics() -> dict[str, set[str]]:
    """Each name Ray exports for a metric serve/metrics.py defines -> the labels its series carry."""
    import ast

    kinds = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_count", "_sum")}
    exported: dict[str, set[str]] = {}
    for call in ast.walk(ast.parse((ROOT / "serve" / "metrics.py").read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) in kinds:
            tags = next(ast.literal_eval(k.value) for k in call.keywords if k.arg == "tag_keys")
            for suffix in kinds[call.func.id]:
                labels = {*tags, "application", "deployment", "replica"} | ({"le"} if suffix == "_bucket" else set())
                exported[f"ray_{ast.literal_eval(call.args[0])}{suffix}"] = labels
    return exported


def test_grafana_dashboard_queries_only_metrics_the_endpoint_exports() -> None:
    dashboard = json.loads((CLUSTER / "grafana_dashboard.json").read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource"}
    exported = _exported_metrics()
    assert len(exported) == 4 * 1 + 2 * 3 + 1, exported  # 4 counters, 2 histograms, 1 gauge
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 9
    for title, expr in queries:
        names = set(re.findall(r"\bray_\w+", expr))
        assert names and names <= set(exported), (title, names - set(exported))
        known = set().union(*(exported[n] for n in names))
        used = {label for group in re.findall(r"\bby \(([^)]*)\)", expr) for label in re.split(r",\s*", group)}
        used |= set(re.findall(r"[{,]\s*(\w+)\s*(?:=~|!=|!~|=)", expr))
        assert used <= known, (title, used - known)
