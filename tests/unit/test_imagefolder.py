"""An image folder as ``data.source`` (one subfolder per class), built from real Fashion-MNIST test pictures.

The pictures are saved as 8-bit PNG files, so reading the folder back must give exactly
the dataset's pixels: the decoding rule (``mlp.images``) keeps a 28x28 picture as saved.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from owndata import save_pictures  # tests/ is on sys.path while pytest runs
from PIL import Image

from mlp.config import Config, DataConfig
from mlp.data import class_names, load_splits, load_test, resolve_data
from mlp.imagefolder import is_image_folder, read_folder
from mlp.images import to_pixels
from mlp.tables import TRAIN, DataError, split_codes

REPO = Path(__file__).resolve().parents[2]
CLASSES = {"Trouser": 1, "Bag": 8, "Sneaker": 7}  # folder name -> Fashion-MNIST label
PER_CLASS = 60


@pytest.fixture(scope="module")
def pictures() -> dict[str, np.ndarray]:
    """uint8 [PER_CLASS, 28, 28] per class folder name: the first test pictures of that class."""
    x, y = load_test(DataConfig(dataset="fashion-mnist"))
    pixels = np.rint(x.reshape(-1, 28, 28).numpy() * 255).astype(np.uint8)
    return {name: pixels[(y == label).numpy()][:PER_CLASS] for name, label in CLASSES.items()}


def config(source: Path, **data) -> Config:
    return Config.from_dict({"data": {"source": str(source), **data}})


def test_the_folder_decodes_to_exactly_the_saved_pixels(tmp_path: Path, pictures) -> None:
    root = save_pictures(tmp_path / "clothes", pictures)
    (root / "Bag" / "notes.txt").write_text("not a picture")  # ignored: not PNG/JPEG
    (root / "Bag" / ".DS_Store").write_bytes(b"\0junk")  # ignored: a dot name
    (root / "README.md").write_text("top-level files are not classes")
    folder = read_folder(str(root))
    assert folder.classes == sorted(CLASSES) == ["Bag", "Sneaker", "Trouser"]
    assert folder.images.dtype == torch.uint8 and folder.images.shape == (3 * PER_CLASS, 28, 28)
    for index, name in enumerate(folder.classes):
        assert torch.equal(folder.images[folder.labels == index], torch.from_numpy(pictures[name]))
    assert folder.files[0] == f"{root}/Bag/000.png"


def rows_with_labels(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, ...]]:
    """Each picture's pixels and label as one sortable tuple: the same list means the same pictures."""
    return sorted((*row.tolist(), int(label)) for row, label in zip(images.reshape(len(images), -1), labels))


def test_resolve_fills_the_schema_and_splits_as_tables_do(tmp_path: Path, pictures, monkeypatch) -> None:
    save_pictures(tmp_path / "clothes", pictures)
    monkeypatch.chdir(tmp_path)
    cfg = resolve_data(config(Path("clothes"), seed=3))  # relative: made absolute for the workers
    assert cfg.data.source == str(tmp_path / "clothes") and cfg.data.ingest == "memory"
    assert cfg.schema.classes == ["Bag", "Sneaker", "Trouser"] and cfg.schema.input_size == 784
    assert cfg.schema.features == [] and cfg.schema.mean == [] and cfg.schema.std == []
    assert class_names(cfg) == ["Bag", "Sneaker", "Trouser"]
    splits, (test_x, test_y) = load_splits(cfg.data, cfg.schema), load_test(cfg.data, cfg.schema)
    sizes = (len(splits.train_x), len(splits.val_x), len(test_x))
    assert sum(sizes) == 3 * PER_CLASS and len(splits.train_y) == sizes[0] and len(test_y) == sizes[2]
    assert 0.1 * 180 < sizes[2] < 0.3 * 180 and 0 < sizes[1] < 0.25 * (180 - sizes[2])
    assert (split_codes(splits.train_x.numpy(), cfg.data) == TRAIN).all()  # the tables' own split rule
    assert splits.train_x.dtype == torch.float32 and float(splits.train_x.max()) <= 1.0
    # every picture is in exactly one split, with its own label
    whole = read_folder(cfg.data.source)
    split_rows = torch.cat([splits.train_x, splits.val_x, test_x]).mul(255).round().to(torch.uint8)
    split_labels = torch.cat([splits.train_y, splits.val_y, test_y])
    assert rows_with_labels(split_rows, split_labels) == rows_with_labels(whole.images, whole.labels)
    other = resolve_data(config(tmp_path / "clothes", seed=4))
    assert not torch.equal(load_test(other.data, other.schema)[0], test_x)  # the seed moves the split


def test_jpeg_nested_and_other_sizes_follow_the_image_rule(tmp_path: Path, pictures) -> None:
    root = save_pictures(tmp_path / "mixed", {name: images[:3] for name, images in pictures.items()})
    big = Image.fromarray(pictures["Bag"][5], "L").resize((84, 70))
    (root / "Bag" / "more").mkdir()
    big.save(root / "Bag" / "more" / "big.png")
    Image.fromarray(255 - pictures["Trouser"][5], "L").convert("RGB").save(root / "Trouser" / "paper.JPG", quality=95)
    folder = read_folder(str(root))
    files = {Path(f).name: i for i, f in enumerate(folder.files)}
    assert len(folder.files) == 11 and folder.classes[int(folder.labels[files["big.png"]])] == "Bag"
    # framed by its box into the whole canvas, as the endpoint frames a Fashion-MNIST upload
    assert np.array_equal(folder.images[files["big.png"]].numpy(), to_pixels(big, "fashion-mnist"))
    paper = folder.images[files["paper.JPG"]].numpy().astype(int)  # dark on light: inverted back
    assert np.abs(paper - pictures["Trouser"][5]).mean() < 3


def test_a_second_folder_can_be_the_test_set(tmp_path: Path, pictures) -> None:
    save_pictures(tmp_path / "train", pictures)
    save_pictures(tmp_path / "held-out", {"Bag": pictures["Bag"][:7], "Sneaker": pictures["Sneaker"][:5]})
    cfg = resolve_data(config(tmp_path / "train", test_source=str(tmp_path / "held-out")))
    splits, (test_x, test_y) = load_splits(cfg.data, cfg.schema), load_test(cfg.data, cfg.schema)
    assert len(splits.train_x) + len(splits.val_x) == 3 * PER_CLASS
    assert test_y.tolist() == [0] * 7 + [1] * 5  # named by folder: Bag is 0, Sneaker 1 in the model's classes
    assert torch.equal((test_x[:7] * 255).round().to(torch.uint8).reshape(7, 28, 28),
                       torch.from_numpy(pictures["Bag"][:7]))


def bad_folders(tmp: Path, pictures) -> dict[str, tuple[Path, str]]:
    one = save_pictures(tmp / "one", {"Bag": pictures["Bag"][:3]})
    empty_class = save_pictures(tmp / "empty-class", {"Bag": pictures["Bag"][:3], "Sneaker": pictures["Sneaker"][:3]})
    (empty_class / "Trouser").mkdir()
    (empty_class / "Trouser" / "list.csv.txt").write_text("no pictures here")
    broken = save_pictures(tmp / "broken", {"Bag": pictures["Bag"][:3], "Sneaker": pictures["Sneaker"][:3]})
    (broken / "Sneaker" / "cut.png").write_bytes((broken / "Sneaker" / "000.png").read_bytes()[:60])
    (tmp / "empty").mkdir()
    few = save_pictures(tmp / "few", {"Bag": pictures["Bag"][:1], "Sneaker": pictures["Sneaker"][:2]})
    return {
        "fewer than two class folders": (one, f"{one} has only the class folder 'Bag'"),
        "a class folder with no pictures": (empty_class, f"class folder {empty_class}/Trouser holds no PNG or JPEG"),
        "an undecodable picture": (broken, f"cannot use the picture {broken}/Sneaker/cut.png"),
        "an empty folder": (tmp / "empty", f"{tmp / 'empty'} is an empty folder"),
        "too few pictures to split": (few, f"data.source {few}"),
    }


def test_bad_folders_are_refused_naming_the_folder_or_file(tmp_path: Path, pictures) -> None:
    for case, (source, expected) in bad_folders(tmp_path, pictures).items():
        assert is_image_folder(str(source)), case
        with pytest.raises(DataError) as err:
            resolve_data(config(source))
        assert expected in str(err.value), (case, str(err.value))
        assert err.value.exit_code == 2


def test_a_folder_of_tables_or_a_file_is_still_a_table(tmp_path: Path) -> None:
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "a.csv").write_text("x,label\n1,a\n")
    (tmp_path / "rows" / "sub").mkdir()
    assert not is_image_folder(str(tmp_path / "rows"))
    assert not is_image_folder(str(tmp_path / "rows" / "a.csv"))
    assert not is_image_folder(str(tmp_path / "rows" / "*.csv"))
    assert not is_image_folder(str(tmp_path / "missing"))


def test_mlp_train_refuses_a_bad_folder_with_exit_2_and_writes_nothing(tmp_path: Path, pictures) -> None:
    source, expected = bad_folders(tmp_path, pictures)["an undecodable picture"]
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "mlp.train", "--data.source", str(source),
                           "--run.storage_path", str(runs)], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "re-save it as PNG or JPEG, or remove it" in done.stderr
    assert not runs.exists()


def test_a_bucket_folder_reads_like_the_local_one(tmp_path: Path, pictures, s3_root: str) -> None:
    import pyarrow.fs as pafs

    local = save_pictures(tmp_path / "clothes", {name: images[:10] for name, images in pictures.items()})
    (local / "Bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    pafs.copy_files(str(local), f"{s3_root}/clothes")
    uri = f"{s3_root}/clothes/"
    assert is_image_folder(uri)
    with pytest.raises(DataError, match=f"cannot use the picture {s3_root}/clothes/Bag/broken.png"):
        read_folder(uri)
    (local / "Bag" / "broken.png").unlink()
    pafs.copy_files(str(local), f"{s3_root}/fixed")
    remote, here = read_folder(f"{s3_root}/fixed"), read_folder(str(local))
    assert remote.classes == here.classes and torch.equal(remote.images, here.images)
    assert torch.equal(remote.labels, here.labels) and remote.files[0] == f"{s3_root}/fixed/Bag/000.png"
