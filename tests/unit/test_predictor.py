"""Ray-free serving pieces: predictor loading, JSON validation, image preprocessing, option mapping."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlp.checkpoint import save_checkpoint
from mlp.config import ConfigError
from mlp.data import CLASS_NAMES, synthetic
from mlp.model import build_model
from mlp.registry import make_provenance, promote
from serve.images import image_to_input
from serve.inputs import InputError, parse_json
from serve.options import config_from_app_args, deployment_options, http_options
from serve.predictor import ModelSource, load_predictor


@pytest.fixture
def registry(config_factory, tmp_path: Path):
    """Two promoted versions of different widths; returns the config pointing at the registry."""
    for version, width in ((1, 8), (2, 16)):
        cfg = config_factory(model={"hidden_sizes": [width]}, data={"seed": version})
        folder = save_checkpoint(tmp_path / f"ck{version}", build_model(cfg.model, seed=version), cfg, {"epoch": 1})
        promote(cfg.registry.path, cfg.registry.model_name, folder, {"test_accuracy": 0.5 + version / 10},
                make_provenance(cfg, str(folder)))
    return cfg


def png(pixels: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode=None).convert(mode).save(out, format=fmt)
    return out.getvalue()


def test_latest_and_pinned_versions_rebuild_the_saved_model(registry):
    latest = load_predictor(ModelSource.from_config(registry))
    assert latest.version == "v2" and latest.info.model["hidden_sizes"] == [16]
    assert latest.info.metrics["test_accuracy"] == pytest.approx(0.7)
    assert latest.info.provenance["version"] == "v2"
    assert latest.info.class_names == CLASS_NAMES["synthetic"]
    pinned = load_predictor(ModelSource(registry.registry.path, "mlp", "v1"))
    assert pinned.version == "v1" and pinned.info.model["hidden_sizes"] == [8]


def test_predictions_equal_the_offline_model(registry, tmp_path: Path):
    predictor = load_predictor(tmp_path / "ck2")
    assert predictor.version == "checkpoint:ck2"
    x, _ = synthetic(50, seed=2)
    expected = torch.softmax(predictor.model(x), dim=1).detach().numpy()
    out = predictor.predict(x.numpy())
    assert [p["label"] for p in out] == expected.argmax(1).tolist()
    assert np.allclose([p["probabilities"] for p in out], expected, atol=1e-6)
    assert out[0]["class_name"] == CLASS_NAMES["synthetic"][out[0]["label"]]


def test_missing_model_names_the_fix(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no promoted model"):
        ModelSource(str(tmp_path), "mlp").resolve()
    with pytest.raises(FileNotFoundError, match="model.pt is missing"):
        ModelSource(str(tmp_path), "mlp", checkpoint=str(tmp_path)).resolve()


def test_json_shapes():
    flat = [0.5] * 784
    nested = [[0.25] * 28 for _ in range(28)]
    for body, n, single in ((flat, 1, True), (nested, 1, True), ({"instance": flat}, 1, True),
                            ({"instances": [flat, flat, flat]}, 3, False), ({"instances": [nested]}, 1, False)):
        parsed = parse_json(json.dumps(body).encode(), max_instances=10)
        assert parsed.x.shape == (n, 784) and parsed.x.dtype == np.float32 and parsed.single is single
    assert parse_json(json.dumps(nested).encode(), 10).x[0, 0] == 0.25


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "malformed JSON"),
    (b'{"instances": []}', 422, "empty batch"),
    (json.dumps({"instances": [[0.1] * 784] * 3}).encode(), 413, "above the limit"),
    (json.dumps([0.1] * 780).encode(), 422, "wrong vector length"),
    (json.dumps([0.1] * 783 + ["x"]).encode(), 422, "non-numeric"),
    (json.dumps([0.1] * 783 + [True]).encode(), 422, "non-numeric"),
    (json.dumps([0.1] * 783 + [None]).encode(), 422, "non-numeric"),
    (b"[" + b"0.1, " * 783 + b"NaN]", 422, "NaN or infinite"),
    (b"[" + b"0.1, " * 783 + b"Infinity]", 422, "NaN or infinite"),
    (json.dumps([0.1] * 783 + [255]).encode(), 422, "outside [0, 1]"),
    (json.dumps([0.1] * 783 + [-0.5]).encode(), 422, "outside [0, 1]"),
    (json.dumps([[0.1] * 28] * 27 + [[0.1] * 27]).encode(), 422, "ragged"),
    (json.dumps({"instances": [[0.1] * 784, [0.1] * 700]}).encode(), 422, "ragged"),
    (json.dumps({"pixels": [0.1] * 784}).encode(), 422, "instances"),
    (b'"hello"', 422, "expected a JSON list or object"),
])
def test_bad_json_is_refused_with_a_named_problem(body, status, words):
    with pytest.raises(InputError) as err:
        parse_json(body, max_instances=2)
    assert err.value.status == status and words in err.value.message


def test_dataset_image_round_trips_exactly():
    x, _ = synthetic(1, seed=2)
    pixels = np.rint(x[0].numpy().reshape(28, 28) * 255)
    pixels[0, :] = pixels[-1, :] = pixels[:, 0] = pixels[:, -1] = 0  # a dark border, as in the datasets
    expected = pixels.reshape(784) / 255
    assert np.allclose(image_to_input(png(pixels), "mnist", 10**6), expected, atol=1e-7)
    assert np.allclose(image_to_input(png(pixels, "RGB"), "mnist", 10**6), expected, atol=1e-7)


def test_dark_ink_on_paper_photo_is_inverted_and_framed():
    photo = np.full((200, 120), 230.0)  # light paper, a dark vertical stroke off-centre
    photo[40:160, 20:40] = 20
    out = image_to_input(png(photo), "mnist", 10**6).reshape(28, 28)
    assert out.min() >= 0 and out.max() <= 1
    assert out[:, :4].max() < 0.05 and out[:, -4:].max() < 0.05, "background is dark after inversion"
    rows, cols = np.nonzero(out > 0.5)
    assert rows.max() - rows.min() + 1 == pytest.approx(20, abs=1), "longer side scaled to 20 px"
    assert abs(cols.mean() - 13.5) < 2, "centred by centre of mass"
    assert np.allclose(out, image_to_input(png(255 - photo), "mnist", 10**6, invert="false").reshape(28, 28),
                       atol=1e-6)
    jpeg = image_to_input(png(photo, fmt="JPEG"), "mnist", 10**6).reshape(28, 28)
    assert np.abs(jpeg - out).max() < 0.25


def zero_width_png() -> bytes:
    """A well-formed PNG whose header says 0 x 28 pixels."""
    data = bytearray(png(np.zeros((28, 28))))
    data[16:20] = (0).to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("data, pixels, status, words", [
    (b"", 10**6, 400, "empty image"),
    (b"GIF89a not an image at all", 10**6, 422, "cannot decode image"),
    (png(np.zeros((100, 100))), 5000, 413, "pixel"),
    (png(np.random.default_rng(0).integers(0, 256, (28, 28)))[:300], 10**6, 422, "cannot decode image"),
    (zero_width_png(), 10**6, 422, "zero-size image"),
])
def test_bad_images_are_refused(data, pixels, status, words):
    with pytest.raises(InputError) as err:
        image_to_input(data, "mnist", pixels)
    assert err.value.status == status and words in err.value.message


def test_app_args_become_the_typed_config(tmp_path: Path):
    preset = tmp_path / "serve.yaml"
    preset.write_text("serve:\n  max_batch_size: 8\n")
    cfg = config_from_app_args({"config": str(preset), "serve.version": "v3",
                                "registry": {"path": str(tmp_path)}, "serve.min_replicas": "2"})
    assert (cfg.serve.max_batch_size, cfg.serve.version, cfg.registry.path) == (8, "v3", str(tmp_path))
    options = deployment_options(cfg.serve)
    assert options["num_replicas"] == 2 and options["user_config"] == {"version": "v3", "checkpoint": None}
    assert options["ray_actor_options"] == {"num_cpus": 0.5}
    assert http_options(cfg.serve)["host"] == "127.0.0.1"
    assert "autoscaling_config" in deployment_options(config_from_app_args({}).serve)
    with pytest.raises(ConfigError, match="serve.version"):
        config_from_app_args({"serve.version": "9lives"})
    with pytest.raises(ConfigError, match="port"):
        config_from_app_args({"port": 1})
