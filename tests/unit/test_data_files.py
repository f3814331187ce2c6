"""The file-loading path: a tiny IDX fixture in torchvision's raw layout, gzipped or not."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from mlp.config import DataConfig
from mlp.data import DataNotFoundError, find_dataset_root, load_splits, load_test, _load_tensors


def write_idx(folder: Path, n_train: int = 40, n_test: int = 10, packed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the four IDX files (big-endian header + uint8 payload); returns the train images and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    out = None
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=gen)
        files = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.numpy().tobytes(),
        }
        for name, payload in files.items():
            if packed:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(payload)
            else:
                (folder / name).write_bytes(payload)
        if prefix == "train":
            out = (images, labels)
    return out


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLP_DATA_DIR", raising=False)
    _load_tensors.cache_clear()


def test_gzipped_files_in_a_flat_folder_load_through_torchvision(tmp_path: Path) -> None:
    images, labels = write_idx(tmp_path / "flat", packed=True)
    cfg = DataConfig(dataset="mnist", dir=str(tmp_path / "flat"), val_fraction=0.25)
    splits = load_splits(cfg)
    assert len(splits.train_x) == 30 and len(splits.val_x) == 10
    assert splits.train_x.shape[1] == 784 and splits.train_x.dtype == torch.float32
    # Every loaded row is one of the written images, scaled to [0, 1].
    written = {tuple((images[i].flatten().float() / 255).tolist()): int(labels[i]) for i in range(len(images))}
    for x, y in zip(splits.train_x, splits.train_y):
        assert written[tuple(x.tolist())] == int(y)
    test_x, _ = load_test(cfg)
    assert len(test_x) == 10


def test_torchvision_layout_and_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx(tmp_path / "root" / "FashionMNIST" / "raw")
    monkeypatch.setenv("MLP_DATA_DIR", str(tmp_path / "root"))
    root = find_dataset_root(DataConfig(dataset="fashion-mnist"))
    assert root == tmp_path / "root"  # used in place, nothing copied
    assert len(load_splits(DataConfig(dataset="fashion-mnist", val_fraction=0.5)).train_x) == 20


def test_nothing_found_offline_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlp.data

    monkeypatch.setattr(mlp.data, "DEBIAN_ROOT", tmp_path / "no-debian")
    # Make the download fail fast and deterministically, as it does offline.
    monkeypatch.setattr(mlp.data, "_torchvision_dataset",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("network unreachable")))
    with pytest.raises(DataNotFoundError) as err:
        find_dataset_root(DataConfig(dataset="mnist", dir=str(tmp_path / "empty")))
    text = str(err.value)
    assert str(tmp_path / "empty") in text and "no-debian" in text
    assert "--data.dir" in text and "MLP_DATA_DIR" in text and "network unreachable" in text


def test_decoded_tensors_are_cached_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlp.data

    write_idx(tmp_path / "flat", packed=True)
    cfg = DataConfig(dataset="mnist", dir=str(tmp_path / "flat"), val_fraction=0.25)
    first = load_splits(cfg)
    assert list((tmp_path / "cache" / "tensors").glob("mnist-train-*.pt"))
    _load_tensors.cache_clear()
    # A second process would not need torchvision at all: prove it by making it fail.
    monkeypatch.setattr(mlp.data, "_torchvision_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    again = load_splits(cfg)
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.val_y, again.val_y)
