"""The layout's promises, checked the way a newcomer would rely on them (docs/architecture.md).

The import-linter contracts in ``pyproject.toml`` check who imports whom; these tests
check what only running code shows: what a fresh interpreter loads, that the commands
start, and where Ray's private API may appear.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("mlp", "tune", "serve", "cluster")
CORE = ("mlp.config", "mlp.options", "mlp.model", "mlp.data", "mlp.loop", "mlp.checkpoint", "mlp.console", "mlp.procs",
        "mlp.tables")
COMPAT = Path("mlp/distributed/ray_compat.py")
OLD_SCRIPTS = ("mlp-train", "mlp-sweep", "mlp-serve", "mlp-client", "mlp-predict", "mlp-pipeline", "mlp-registry")


def fresh_modules(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running ``code`` in the repository."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_core_imports_no_ray_even_indirectly() -> None:
    loaded = fresh_modules("\n".join(f"import {module}" for module in CORE))
    assert "torch" in loaded  # the core is plain PyTorch, so this interpreter really imported it
    assert [m for m in loaded if m == "ray" or m.startswith("ray.")] == []
    platform = [m for m in loaded if m.split(".")[0] in ("tune", "serve", "cluster")
                or m.startswith(("mlp.distributed", "mlp.registry", "mlp.preflight", "mlp.reports"))]
    assert platform == []


def test_building_a_config_imports_neither_torch_nor_ray() -> None:
    loaded = fresh_modules("from mlp.config import Config\nConfig.from_dict(Config().to_dict())")
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "ray", "pyarrow")]


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES)
    cycles = [(a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
              if a != b and graph.chain_exists(importer=b, imported=a)]
    assert cycles == []


PRIVATE_RAY = re.compile(r"\bray(\.\w+)*\._(?!_)\w+|_get_global_client|ray_current_cluster|\b2\.60\b")


def test_ray_private_api_and_version_pins_live_only_in_the_compat_module() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE_RAY.search(line) and path.relative_to(REPO) != COMPAT:
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []
    assert PRIVATE_RAY.search((REPO / COMPAT).read_text())  # the pattern does match what the compat module holds


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=120)


def test_mlp_lists_its_subcommands_and_runs_them() -> None:
    mlp = shutil.which("mlp")
    assert mlp, "the mlp console script is missing: pip install -e ."
    listed = run(mlp, "--help")
    assert listed.returncode == 0, listed.stderr
    for name in ("train", "sweep", "serve", "client", "predict", "pipeline", "registry"):
        assert re.search(rf"^\s+{name}\s", listed.stdout, re.M), listed.stdout
    wrong = run(mlp, "trian")
    assert wrong.returncode == 2 and "unknown subcommand 'trian'" in wrong.stderr
    bad = run(mlp, "train", "--optim.lr", "0")  # the subcommand's own refusal, exit code and all
    assert bad.returncode == 2 and "config optim.lr:" in bad.stderr


@pytest.mark.parametrize("script", OLD_SCRIPTS)
def test_the_older_console_scripts_still_work(script: str) -> None:
    path = shutil.which(script)
    assert path, f"{script} is missing: pip install -e ."
    done = run(path, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_python_m_mlp_registry_is_the_registry_command(tmp_path: Path) -> None:
    done = run(sys.executable, "-m", "mlp.registry", "list", "--registry.path", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"no versions of model 'mlp' in {tmp_path}" in done.stdout
