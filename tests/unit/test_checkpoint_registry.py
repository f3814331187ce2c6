"""Checkpoints round-trip with weights_only=True; the registry works the same on a disk and on S3.

The registry tests run twice: on a local folder and on a real S3-compatible server
(moto's, see ``tests/s3server.py``), through the same ``pyarrow.fs`` client Ray Train uses.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from mlp import registry
from mlp.checkpoint import load_model, restore_training, save_checkpoint
from mlp.loop import build_optimizer
from mlp.model import build_model
from mlp.registry.storage import Location
from serve.predictor import ModelSource, load_predictor



def test_checkpoint_round_trip_weights_only(tmp_path: Path, config_factory) -> None:
    cfg = config_factory(model={"hidden_sizes": [32]}, optim={"momentum": 0.9})
    model = build_model(cfg.model, seed=3)
    optimizer = build_optimizer(cfg, model)
    x = torch.rand(8, 784)
    model(x).sum().backward()
    optimizer.step()  # gives the optimizer a momentum buffer to save
    save_checkpoint(tmp_path / "ck", model, cfg, {"epoch": 4, "elapsed_s": 1.5}, optimizer)

    state = torch.load(tmp_path / "ck" / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    loaded, loaded_cfg = load_model(tmp_path / "ck")
    assert loaded_cfg == cfg
    assert torch.allclose(loaded(x), model.eval()(x))

    fresh = build_model(cfg.model, seed=99)
    fresh_opt = build_optimizer(cfg, fresh)
    progress = restore_training(tmp_path / "ck", fresh, fresh_opt)
    assert progress["epoch"] == 4
    assert torch.allclose(fresh(x), model(x))
    assert fresh_opt.state_dict()["state"][0]["momentum_buffer"].shape == (32, 784)


# --- the registry, on a local folder and on S3 -------------------------------------------------



@pytest.fixture
def checkpoint(tmp_path: Path, config_factory) -> Path:
    cfg = config_factory()
    return save_checkpoint(tmp_path / "ck", build_model(cfg.model, seed=0), cfg, {"epoch": 1})


def promote(root: str, ck: Path, config_factory, trial: str, accuracy: float = 0.5) -> Any:
    cfg = config_factory()
    return registry.promote(root, "mlp", ck, {"test_accuracy": accuracy}, registry.make_provenance(cfg, ck, trial))


def entries(root: str) -> list[str]:
    """Every file under the model's folder, hidden ones included: what a failed promotion could leave."""
    return (Location.of(root) / "mlp").list_files()


def test_promote_numbers_versions_and_moves_latest(root: str, checkpoint: Path, config_factory) -> None:
    v1 = promote(root, checkpoint, config_factory, "t1", 0.5)
    v2 = promote(root, checkpoint, config_factory, "t2", 0.6)
    assert (v1.name, v2.name) == ("v1", "v2")
    assert str(v2) == f"{root}/mlp/v2"
    assert registry.list_versions(root, "mlp") == [1, 2]
    latest = Location.of(root) / "mlp" / "latest"
    assert latest.is_file() and latest.read_text().strip() == "v2"  # a pointer file, not a link
    assert registry.read_latest(root, "mlp") == "v2"

    folder = registry.resolve_version(root, "mlp")
    assert folder.name == "v2" and folder.is_dir()  # always a local folder, ready to load
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["trial_id"] == "t2" and provenance["version"] == "v2"
    assert provenance["libraries"]["torch"] and provenance["dataset"] == "synthetic"
    pinned = registry.resolve_version(root, "mlp", "v1")
    assert json.loads((pinned / "metrics.json").read_text())["test_accuracy"] == 0.5
    model, _ = load_model(folder)
    x = torch.rand(2, 784)
    expected, _ = load_model(checkpoint)
    assert torch.allclose(model(x), expected(x))
    assert entries(root) == ["latest", "latest.history"] + [f"v{n}/{f}" for n in (1, 2) for f in
                                          ("config.json", "metrics.json", "model.pt", "provenance.json")]


def test_served_model_equals_the_promoted_one(root: str, checkpoint: Path, config_factory) -> None:
    promote(root, checkpoint, config_factory, "t1")
    predictor = load_predictor(ModelSource(root, "mlp"))
    assert predictor.version == "v1" and predictor.info.provenance["trial_id"] == "t1"
    x = torch.rand(5, 784)
    expected, _ = load_model(checkpoint)
    assert torch.allclose(torch.as_tensor(predictor.predict_proba(x)), torch.softmax(expected(x), dim=1), atol=1e-6)


def test_nothing_promoted_explains_where_and_how(root: str) -> None:
    with pytest.raises(FileNotFoundError, match="--promote") as err:
        registry.resolve_version(root, "mlp")
    assert f"{root}/mlp" in str(err.value)
    with pytest.raises(FileNotFoundError, match="versions: none"):
        registry.resolve_version(root, "mlp", "v1")


def test_checkpoint_without_weights_promotes_nothing(root: str, checkpoint: Path, config_factory,
                                                     tmp_path: Path) -> None:
    promote(root, checkpoint, config_factory, "good")
    before = entries(root)
    broken = Path(shutil.copytree(checkpoint, tmp_path / "broken"))
    (broken / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        promote(root, broken, config_factory, "bad")
    assert entries(root) == before and registry.read_latest(root, "mlp") == "v1"


def test_failure_mid_promotion_leaves_no_version(root: str, checkpoint: Path, config_factory,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    promote(root, checkpoint, config_factory, "good")
    before = entries(root)
    real_copy, real_upload = shutil.copy2, Location.upload_file

    def fail_on_config(source: Any, *args: Any, **kwargs: Any) -> Any:  # model.pt is copied, config.json fails
        if str(source).endswith("config.json") or str(args[0] if args else "").endswith("config.json"):
            raise OSError("disk full (simulated)")
        return real_copy(source, *args, **kwargs)

    def upload_fail_on_config(self: Location, source: Any) -> None:
        if self.name == "config.json":
            raise OSError("connection reset (simulated)")
        real_upload(self, source)

    monkeypatch.setattr(shutil, "copy2", fail_on_config)
    monkeypatch.setattr(Location, "upload_file", upload_fail_on_config)
    with pytest.raises(OSError, match="simulated"):
        promote(root, checkpoint, config_factory, "bad")
    assert entries(root) == before  # no v2, no staging folder, no claim left behind
    assert registry.list_versions(root, "mlp") == [1] and registry.read_latest(root, "mlp") == "v1"


def test_version_without_provenance_is_not_listed(s3_root: str, checkpoint: Path, config_factory) -> None:
    """An upload that died before provenance.json (written last) is invisible and never reused."""
    promote(s3_root, checkpoint, config_factory, "t1")
    half = Location.of(s3_root) / "mlp" / "v2"
    (half / "model.pt").upload_file(checkpoint / "model.pt")
    (half / "config.json").upload_file(checkpoint / "config.json")
    assert registry.list_versions(s3_root, "mlp") == [1]
    with pytest.raises(FileNotFoundError, match=f"{half}.*versions: v1"):
        registry.resolve_version(s3_root, "mlp", "v2")
    assert promote(s3_root, checkpoint, config_factory, "t3").name == "v3"  # the half version's files stay apart
    assert registry.list_versions(s3_root, "mlp") == [1, 3]


def test_legacy_symlink_registry_still_resolves(tmp_path: Path, checkpoint: Path, config_factory) -> None:
    root = str(tmp_path / "registry")
    promote(root, checkpoint, config_factory, "t1")
    promote(root, checkpoint, config_factory, "t2")
    latest = Path(root) / "mlp" / "latest"
    latest.unlink()
    os.symlink("v1", latest)  # what the registry looked like before `latest` became a file
    assert registry.resolve_version(root, "mlp") == Path(root) / "mlp" / "v1"
    assert load_predictor(ModelSource(root, "mlp")).version == "v1"
    assert promote(root, checkpoint, config_factory, "t3").name == "v3"
    assert not latest.is_symlink() and latest.read_text().strip() == "v3"


def test_bad_pointer_names_the_file(root: str, checkpoint: Path, config_factory) -> None:
    promote(root, checkpoint, config_factory, "t1")
    (Location.of(root) / "mlp" / "latest").write_text("../../etc\n")
    with pytest.raises(ValueError, match=r"mlp/latest should hold a version name"):
        registry.resolve_version(root, "mlp")


def test_polling_latest_reads_only_the_pointer(s3_root: str, checkpoint: Path, config_factory,
                                               private_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    promote(s3_root, checkpoint, config_factory, "t1")
    source = ModelSource(s3_root, "mlp")
    first = source.resolve()
    assert private_cache in first.parents and (first / "model.pt").is_file()

    calls: list[str] = []
    for method in ("read_bytes", "download_dir", "list_files", "info", "children"):
        real = getattr(Location, method)
        monkeypatch.setattr(Location, method, lambda self, *a, _real=real, _m=method: calls.append(
            f"{_m} {self.name}") or _real(self, *a))
    assert [source.resolve() for _ in range(3)] == [first] * 3
    assert calls == ["read_bytes latest"] * 3  # one small read per poll: no listing, no download
    pinned = ModelSource(s3_root, "mlp", "v1")
    calls.clear()
    assert pinned.resolve() == first and pinned.resolve() == first
    assert calls == []  # a pinned version already checked needs no request at all

    promote(s3_root, checkpoint, config_factory, "t2")  # a promotion shows on the next poll
    calls.clear()
    assert source.resolve().name == "v2"
    assert "download_dir v2" in calls


def test_cache_notices_a_rewritten_registry(s3_root: str, tmp_path: Path, config_factory,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry wiped and promoted again under the same URI must not serve the old cached v1."""
    cfg = config_factory()
    old = save_checkpoint(tmp_path / "old", build_model(cfg.model, seed=1), cfg, {"epoch": 1})
    new = save_checkpoint(tmp_path / "new", build_model(cfg.model, seed=2), cfg, {"epoch": 1})
    promote(s3_root, old, config_factory, "old")
    assert load_predictor(ModelSource(s3_root, "mlp")).info.provenance["trial_id"] == "old"
    (Location.of(s3_root) / "mlp").delete()
    promote(s3_root, new, config_factory, "new")
    monkeypatch.setattr(registry.versions, "_verified", set())  # as a fresh replica process on the same node
    predictor = load_predictor(ModelSource(s3_root, "mlp"))
    assert predictor.version == "v1" and predictor.info.provenance["trial_id"] == "new"
    x = torch.rand(3, 784)
    expected, _ = load_model(new)
    assert torch.allclose(predictor.model(x), expected(x))


def test_concurrent_promotions_get_distinct_complete_versions(s3_root: str, checkpoint: Path,
                                                              config_factory) -> None:
    errors: list[BaseException] = []

    def run(trial: str) -> None:
        try:
            promote(s3_root, checkpoint, config_factory, trial, accuracy=float(trial))
        except BaseException as err:  # surfaced below: a thread's exception is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=run, args=(str(i),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    versions = registry.list_versions(s3_root, "mlp")
    assert len(versions) == 4  # distinct numbers; under contention one may be skipped, never shared
    trials = set()
    for n in versions:  # each version holds one promotion's files, never a mix of two
        folder = registry.resolve_version(s3_root, "mlp", f"v{n}")
        trial = json.loads((folder / "provenance.json").read_text())["trial_id"]
        assert json.loads((folder / "metrics.json").read_text())["test_accuracy"] == float(trial)
        trials.add(trial)
    assert trials == {"0", "1", "2", "3"}
    assert not [f for f in entries(s3_root) if ".claims" in f]  # claims are withdrawn or removed when done


def test_remote_checkpoint_is_served_from_the_cache(s3_root: str, checkpoint: Path) -> None:
    remote = Location.of(s3_root) / "runs" / "checkpoint_000001"
    remote.upload_dir(checkpoint)
    predictor = load_predictor(ModelSource(s3_root, "mlp", checkpoint=str(remote)))
    assert predictor.version == "checkpoint:checkpoint_000001"
    with pytest.raises(FileNotFoundError, match="checkpoint_000009"):
        ModelSource(s3_root, "mlp", checkpoint=str(remote.uri).replace("000001", "000009")).resolve()


def test_promoted_versions_are_readable_by_other_users(tmp_path: Path, checkpoint: Path, config_factory) -> None:
    version = promote(str(tmp_path / "registry"), checkpoint, config_factory, "t1")
    assert version.stat().st_mode & 0o755 == 0o755


def test_abandoned_staging_folders_are_removed_and_live_ones_kept(tmp_path: Path, checkpoint: Path,
                                                                  config_factory) -> None:
    """A killed promoter's hidden folder goes at the next promotion; a live promoter's stays, and a
    folder from another host (a shared disk) goes only once it is older than any promotion could be."""
    import socket
    import subprocess
    import sys
    import time

    folder = tmp_path / "mlp"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    host = socket.gethostname()
    names = {"dead": f".staging-{host}.{dead.stdout.strip()}.abc123", "live": f".staging-{host}.{os.getpid()}.def456",
             "other_new": ".staging-elsewhere.1.ghi789", "other_old": ".staging-elsewhere.2.jkl012",
             "unnamed_old": ".staging-mno345"}
    for name in names.values():
        (folder / name).mkdir()
        (folder / name / "model.pt").write_bytes(b"half")
    old = time.time() - registry.STAGING_MAX_AGE_S - 60
    for key in ("other_old", "unnamed_old"):
        os.utime(folder / names[key], (old, old))
    version = registry.promote(str(tmp_path), "mlp", checkpoint, {"test_accuracy": 0.5},
                               registry.make_provenance(config_factory(), "staging"))
    assert Path(version).name == "v1"
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([names["live"], names["other_new"], "latest", "v1"])
