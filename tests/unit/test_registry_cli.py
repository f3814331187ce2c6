"""``mlp-registry`` end to end, on a local folder and on a real S3-compatible server (moto's).

Commands run through ``main([...])`` in this process (what the console script calls), and
once through ``python -m mlp.registry.cli`` in a subprocess. Every check reads the registry
back through ``mlp.registry`` or loads the model, so a command that only printed the right
words would still fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlp import registry
from mlp.checkpoint import load_model, save_checkpoint
from mlp.model import build_model
from mlp.registry.cli import main
from mlp.registry.storage import Location
from serve.predictor import ModelSource, load_predictor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkpoints(tmp_path: Path, config_factory) -> list[Path]:
    """Two checkpoints with different weights and the test accuracy each carries in state.json."""
    cfg = config_factory(run={"name": "nightly"})
    return [save_checkpoint(tmp_path / f"ck{seed}", build_model(cfg.model, seed=seed), cfg,
                            {"epoch": 2, "test_accuracy": accuracy, "history": [{"val_accuracy": accuracy - 0.01}]})
            for seed, accuracy in ((1, 0.81), (2, 0.9))]


def cli(root: str, *args: str) -> int:
    return main(["--registry.path", root, *args])


def output(capsys: pytest.CaptureFixture, root: str, *args: str) -> str:
    """Stdout of a command that must succeed."""
    capsys.readouterr()
    code = cli(root, *args)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def snapshot(root: str) -> dict[str, bytes]:
    """Every file of the model's folder and its bytes: what a refused command must leave as it was."""
    folder = Location.of(root) / "mlp"
    return {name: (folder / name).read_bytes() for name in folder.list_files()}


def same_weights(folder: Path, checkpoint: Path) -> bool:
    x = torch.rand(4, 784)
    served, _ = load_model(folder)
    expected, _ = load_model(checkpoint)
    return torch.equal(served(x), expected(x))


def promote_both(capsys: pytest.CaptureFixture, root: str, checkpoints: list[Path]) -> None:
    for checkpoint in checkpoints:
        output(capsys, root, "promote", str(checkpoint))


def test_promote_then_list_and_show(root: str, checkpoints: list[Path], capsys) -> None:
    first = output(capsys, root, "promote", str(checkpoints[0]))
    assert first.strip() == f"promoted {checkpoints[0]} as v1 of model 'mlp' in {root} (latest: none -> v1)"
    second = output(capsys, root, "promote", str(checkpoints[1]))
    assert "as v2" in second and "(latest: v1 -> v2)" in second
    assert registry.list_versions(root, "mlp") == [1, 2] and registry.read_latest(root, "mlp") == "v2"
    assert same_weights(registry.resolve_version(root, "mlp", "v1"), checkpoints[0])
    assert same_weights(registry.resolve_version(root, "mlp", "v2"), checkpoints[1])

    table = output(capsys, root, "list").splitlines()
    assert table[0].split() == ["VERSION", "TEST", "ACC", "SOURCE", "RUN", "PROMOTED", "ALIASES"]
    assert table[1].split()[:3] == ["v1", "0.8100", "nightly"] and table[1].split()[-1] == "-"
    assert table[2].split()[:3] == ["v2", "0.9000", "nightly"] and table[2].split()[-1] == "latest"
    rows = json.loads(output(capsys, root, "list", "--json"))
    assert [(r["version"], r["test_accuracy"], r["aliases"]) for r in rows] == [("v1", 0.81, []),
                                                                               ("v2", 0.9, ["latest"])]
    assert all(r["promoted_at"] and r["run_name"] == "nightly" for r in rows)

    shown = json.loads(output(capsys, root, "show", "latest", "--json"))
    assert (shown["version"], shown["asked_for"], shown["aliases"]) == ("v2", "latest", ["latest"])
    assert shown["metrics"]["test_accuracy"] == 0.9 and shown["metrics"]["val_accuracy"] == pytest.approx(0.89)
    assert shown["provenance"]["source_checkpoint"] == str(checkpoints[1])
    assert shown["provenance"]["promoted_by"] == "mlp-registry"
    assert set(shown["files"]) == {"model.pt", "config.json", "metrics.json", "provenance.json"}
    assert shown["files"]["model.pt"] == (checkpoints[1] / "model.pt").stat().st_size
    text = output(capsys, root, "show", "v1")
    assert text.startswith(f"v1 of model 'mlp' in {root} (aliases: none)") and "test_accuracy" in text


def test_promote_from_a_bucket(s3_root: str, tmp_path: Path, checkpoints: list[Path], capsys) -> None:
    """A checkpoint that lives on the object store (where Ray Train reports them) promotes as it is."""
    remote = Location.of(s3_root) / "runs" / "checkpoint_000002"
    remote.upload_dir(checkpoints[1])
    registry_root = str(tmp_path / "registry")
    assert f"promoted {remote} as v1" in output(capsys, registry_root, "promote", str(remote))
    assert same_weights(registry.resolve_version(registry_root, "mlp"), checkpoints[1])
    assert json.loads(output(capsys, registry_root, "list", "--json"))[0]["test_accuracy"] == 0.9


def test_aliases_set_list_show_delete(root: str, checkpoints: list[Path], capsys) -> None:
    promote_both(capsys, root, checkpoints)
    assert output(capsys, root, "alias", "set", "champion", "v1").strip() == \
        f"alias champion of model 'mlp' in {root}: v1"
    assert output(capsys, root, "alias", "set", "candidate", "latest").strip().endswith(": v2")
    assert json.loads(output(capsys, root, "alias", "list", "--json")) == {"candidate": "v2", "champion": "v1"}
    assert registry.list_aliases(root, "mlp") == {"candidate": "v2", "champion": "v1"}
    assert output(capsys, root, "alias", "list").split() == ["ALIAS", "VERSION", "latest", "v2",
                                                             "candidate", "v2", "champion", "v1"]
    shown = json.loads(output(capsys, root, "show", "champion", "--json"))
    assert (shown["version"], shown["asked_for"], shown["metrics"]["test_accuracy"]) == ("v1", "champion", 0.81)
    assert same_weights(registry.resolve_version(root, "mlp", "champion"), checkpoints[0])
    assert load_predictor(ModelSource(root, "mlp", "champion")).version == "v1"  # what Serve loads
    rows = {r["version"]: r["aliases"] for r in json.loads(output(capsys, root, "list", "--json"))}
    assert rows == {"v1": ["champion"], "v2": ["latest", "candidate"]}

    assert output(capsys, root, "alias", "set", "champion", "v2").strip().endswith(": v1 -> v2")
    assert ModelSource(root, "mlp", "champion").resolve().name == "v2"  # a source following the alias moves
    assert "it pointed at v2" in output(capsys, root, "alias", "delete", "candidate")
    assert registry.list_aliases(root, "mlp") == {"champion": "v2"}
    assert registry.list_versions(root, "mlp") == [1, 2]  # deleting an alias keeps its version


def test_rollback_moves_latest_back_and_refuses_past_the_first(root: str, checkpoints: list[Path],
                                                              config_factory, capsys) -> None:
    promote_both(capsys, root, checkpoints)
    assert output(capsys, root, "rollback").strip() == \
        f"rolled back latest of model 'mlp' in {root}: v2 -> v1"
    assert registry.read_latest(root, "mlp") == "v1"
    assert same_weights(registry.resolve_version(root, "mlp"), checkpoints[0])

    before = snapshot(root)
    assert cli(root, "rollback") == 2
    assert "nothing to roll back to" in capsys.readouterr().err
    assert snapshot(root) == before and registry.read_latest(root, "mlp") == "v1"

    assert "v1 -> v2" in output(capsys, root, "rollback", "--to", "v2")  # a recorded move ...
    assert "v2 -> v1" in output(capsys, root, "rollback")  # ... that rollback undoes
    # the pipeline's own call after a failed verification: promote, then roll back in code
    registry.promote(root, "mlp", checkpoints[1], {"test_accuracy": 0.5},
                     registry.make_provenance(config_factory(), checkpoints[1], "bad"))
    assert registry.rollback(root, "mlp") == ("v3", "v1")


def test_rollback_refuses_when_latest_was_moved_by_hand(root: str, checkpoints: list[Path], capsys) -> None:
    promote_both(capsys, root, checkpoints)
    (Location.of(root) / "mlp" / "latest").write_text("v1\n")  # edited outside the registry tools
    assert cli(root, "rollback") == 2
    err = capsys.readouterr().err
    assert "latest holds v1, but its last recorded move was to v2" in err and "rollback --to vN" in err
    assert registry.read_latest(root, "mlp") == "v1"


def test_promote_repairs_a_damaged_latest_pointer(root: str, checkpoints: list[Path], capsys) -> None:
    output(capsys, root, "promote", str(checkpoints[0]))
    (Location.of(root) / "mlp" / "latest").write_text("../../etc\n")
    assert cli(root, "list") == 2
    assert "mlp/latest should hold a version name" in capsys.readouterr().err
    assert "(latest: unreadable -> v2)" in output(capsys, root, "promote", str(checkpoints[1]))
    assert registry.read_latest(root, "mlp") == "v2" and registry.read_history(root, "mlp") == []
    assert same_weights(registry.resolve_version(root, "mlp"), checkpoints[1])


@pytest.mark.parametrize("args, says", [
    (["show", "v9"], "versions: v1, v2"),
    (["show", "nope"], "no alias 'nope'"),
    (["show", "9lives"], "neither a version nor an alias"),
    (["show", "V1"], "(versions: v1, v2; aliases: none)"),
    (["alias", "set", "latest", "v1"], "is reserved"),
    (["alias", "set", "v3", "v1"], "is reserved"),
    (["alias", "set", "bad/name", "v1"], "cannot name an alias"),
    (["alias", "set", "champion", "v9"], "versions: v1, v2"),
    (["alias", "set", "champion", "nope"], "no alias 'nope'"),
    (["alias", "delete", "nope"], "aliases: none"),
    (["rollback", "--to", "v9"], "versions: v1, v2"),
    (["promote", "{tmp}/missing"], "does not exist"),
    (["promote", "{tmp}/no_weights"], "model.pt missing"),
    (["promote", "{tmp}/truncated"], "corrupt"),
    (["--registry.model_name", "a/b", "list"], "registry.model_name"),
])
def test_bad_input_exits_2_and_writes_nothing(root: str, checkpoints: list[Path], tmp_path: Path, capsys,
                                              args: list[str], says: str) -> None:
    promote_both(capsys, root, checkpoints)
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((checkpoints[0] / "config.json").read_text())
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((checkpoints[0] / "config.json").read_text())
    (truncated / "model.pt").write_bytes((checkpoints[0] / "model.pt").read_bytes()[:200])
    before = snapshot(root)
    assert cli(root, *[a.format(tmp=tmp_path) for a in args]) == 2
    out, err = capsys.readouterr()
    assert says in err and err.startswith("mlp-registry: error: ") and not out
    assert snapshot(root) == before


def test_console_entry_point_in_a_subprocess(s3_root: str, checkpoints: list[Path], capsys,
                                            s3_env: dict[str, str]) -> None:
    """``python -m mlp.registry.cli`` as a shell runs it, on the bucket: exit codes and one-line answers."""
    env = {**os.environ, **s3_env, "PYTHONPATH": str(REPO)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlp.registry.cli", "--registry.path", s3_root, *args],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=120)

    promote_both(capsys, s3_root, checkpoints)
    done = run("alias", "set", "champion", "v1")
    assert (done.returncode, done.stdout.strip()) == (0, f"alias champion of model 'mlp' in {s3_root}: v1")
    assert run("rollback").stdout.strip().endswith("v2 -> v1")
    refused = run("rollback")
    assert refused.returncode == 2 and "nothing to roll back to" in refused.stderr
    assert registry.read_latest(s3_root, "mlp") == "v1"
    assert registry.list_aliases(s3_root, "mlp") == {"champion": "v1"}


def test_following_an_alias_on_a_bucket_reads_only_its_pointer(s3_root: str, checkpoints: list[Path],
                                                                capsys) -> None:
    """What a replica pinned to an alias pays per watcher tick: one small read, no listing or download."""
    promote_both(capsys, s3_root, checkpoints)
    output(capsys, s3_root, "alias", "set", "champion", "v1")
    source = ModelSource(s3_root, "mlp", "champion")
    assert source.follows_registry and ModelSource(s3_root, "mlp").follows_registry
    assert not ModelSource(s3_root, "mlp", "v1").follows_registry
    first = source.resolve()
    assert first.name == "v1"
    calls: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for method in ("read_bytes", "download_dir", "list_files", "info", "children"):
            real = getattr(Location, method)
            patch.setattr(Location, method, lambda self, *a, _real=real, _m=method: calls.append(
                f"{_m} {self.name}") or _real(self, *a))
        assert [source.resolve() for _ in range(3)] == [first] * 3
    assert calls == ["read_bytes champion"] * 3
    output(capsys, s3_root, "alias", "set", "champion", "v2")  # the alias moves: the next tick follows it
    assert same_weights(source.resolve(), checkpoints[1])


def test_list_of_an_empty_registry_says_how_to_fill_it(tmp_path: Path, capsys) -> None:
    out = output(capsys, str(tmp_path / "registry"), "list")
    assert out.startswith("no versions of model 'mlp'") and "--promote" in out
    assert json.loads(output(capsys, str(tmp_path / "registry"), "list", "--json")) == []

