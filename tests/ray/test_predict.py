"""``mlp predict``: batch inference with Ray Data on the shared cluster, for a table model and an image model.

Each output row is joined back to its input row (a ``row`` column the table carries, an
image's ``path``) and compared with the offline ``Predictor`` of the same version, which
is the code path the endpoint answers with (``tests/ray/test_serve.py`` checks that).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from owndata import wine_table  # tests/owndata.py

from mlp import registry
from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.data import Splits, load_test, resolve_data
from mlp.loop import fit, prepare
from serve.images import image_to_input
from serve.predict import main
from serve.predictor import load_predictor


def promote_trained(cfg: Config, tmp: Path, name: str, limit: int | None = None) -> Path:
    model, optimizer, data, state = prepare(cfg, torch.device("cpu"))
    if limit:
        data = Splits(data.train_x[:limit], data.train_y[:limit], data.val_x[:200], data.val_y[:200])
    fit(cfg, model, optimizer, data, state, lambda *_: None)
    folder = save_checkpoint(tmp / f"ckpt-{name}", model, cfg, {"epoch": cfg.train.epochs})
    registry.promote(cfg.registry.path, cfg.registry.model_name, folder, {}, registry.make_provenance(cfg, folder))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    frame = wine_table(tmp / "wine.csv")
    table_cfg = resolve_data(Config.from_dict({
        "data": {"source": str(tmp / "wine.csv"), "label": "kind"}, "model": {"hidden_sizes": [32]},
        "optim": {"name": "adam", "lr": 0.003}, "train": {"epochs": 10, "batch_size": 32},
        "registry": {"path": str(tmp / "registry"), "model_name": "wine"}}))
    promote_trained(table_cfg, tmp, "wine")
    image_cfg = Config.from_dict({"data": {"dataset": "fashion-mnist"}, "model": {"hidden_sizes": [32]},
                                  "train": {"epochs": 1}, "optim": {"lr": 0.1},
                                  "registry": {"path": str(tmp / "registry"), "model_name": "fashion"}})
    promote_trained(image_cfg, tmp, "fashion", limit=3000)
    return {"tmp": tmp, "frame": frame, "table_cfg": table_cfg, "image_cfg": image_cfg}


def predict(models, name: str, *args: str) -> int:
    return main(["--registry.path", str(models["tmp"] / "registry"), "--registry.model_name", name, *args])


def test_a_table_is_scored_row_for_row_by_column_name(models, capsys) -> None:
    tmp, frame = models["tmp"], models["frame"]
    rows = frame.drop(columns=["kind"]).sample(frac=1.0, random_state=0)  # columns in another order, no label
    rows = rows[list(reversed(rows.columns))].assign(row=np.arange(len(rows)))
    rows.to_parquet(tmp / "new.parquet")
    assert predict(models, "wine", "--input", str(tmp / "new.parquet"), "--output", str(tmp / "scored")) == 0
    assert f"scored {len(rows)} rows with v1" in capsys.readouterr().out
    out = pd.read_parquet(tmp / "scored").sort_values("row")
    assert len(out) == len(rows) and out["row"].tolist() == list(range(len(rows)))
    predictor = load_predictor(models["tmp"] / "registry" / "wine" / "v1")
    features = models["table_cfg"].schema.features
    offline = predictor.predict_proba(predictor.table_input(rows.sort_values("row")[features].to_numpy()))
    assert out["prediction"].tolist() == offline.argmax(axis=1).tolist()
    assert np.allclose(np.stack(out["probabilities"].to_numpy()), offline, atol=1e-6)
    assert set(out["class_name"]) <= set(models["table_cfg"].schema.classes)
    # and it is a real classifier: a labelled copy (the label column passes through) scores above 0.9
    labelled = frame.assign(row=np.arange(len(frame)))
    labelled.to_csv(tmp / "labelled.csv", index=False)
    assert predict(models, "wine", "--input", str(tmp / "labelled.csv"), "--output", str(tmp / "scored2")) == 0
    scored = pd.read_parquet(tmp / "scored2").sort_values("row")
    assert (scored["class_name"].to_numpy() == labelled["kind"].to_numpy()).mean() > 0.9


def test_a_folder_of_images_is_scored_like_the_endpoint_scores_uploads(models) -> None:
    tmp = models["tmp"]
    x, _ = load_test(models["image_cfg"].data)
    folder = tmp / "images"
    folder.mkdir()
    for i in range(40):
        pixels = np.rint(x[i].reshape(28, 28).numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{i:03d}.png")
    assert predict(models, "fashion", "--input", str(folder), "--output", str(tmp / "scored-images")) == 0
    out = pd.read_parquet(tmp / "scored-images")
    out = out.assign(name=[Path(p).name for p in out["path"]]).sort_values("name")
    assert out["name"].tolist() == [f"{i:03d}.png" for i in range(40)]
    predictor = load_predictor(tmp / "registry" / "fashion" / "v1")
    uploads = np.stack([image_to_input((folder / n).read_bytes(), "fashion-mnist", 1 << 20) for n in out["name"]])
    offline = predictor.predict_proba(uploads)
    assert out["prediction"].tolist() == offline.argmax(axis=1).tolist()
    assert np.allclose(np.stack(out["probabilities"].to_numpy()), offline, atol=1e-6)


@pytest.mark.parametrize("case", ["missing column", "output exists", "images for a table model", "no version"])
def test_bad_jobs_exit_2_naming_the_problem_and_write_nothing(models, case: str, capsys) -> None:
    tmp = models["tmp"]
    models["frame"].drop(columns=["hue"]).to_csv(tmp / "no-hue.csv", index=False)
    (tmp / "taken").mkdir(exist_ok=True)
    args = {
        "missing column": ("wine", str(tmp / "no-hue.csv"), str(tmp / "out-a"), "no column 'hue'"),
        "output exists": ("wine", str(tmp / "wine.csv"), str(tmp / "taken"), "exists"),
        "images for a table model": ("wine", str(tmp / "images-none"), str(tmp / "out-b"), "trained on a table"),
        "no version": ("nothing", str(tmp / "wine.csv"), str(tmp / "out-c"), "no promoted model"),
    }[case]
    (tmp / "images-none").mkdir(exist_ok=True)
    (tmp / "images-none" / "a.png").write_bytes(b"")
    name, source, output, expected = args
    assert predict(models, name, "--input", source, "--output", output) == 2
    assert expected in capsys.readouterr().err
    assert case == "output exists" or not Path(output).exists()
