"""A model trained on a table, served by column name over real HTTP on the shared local cluster.

scikit-learn's wine data set is written to CSV with its real class names, a small
model is trained on it for a moment with the plain loop and promoted to a temporary
registry; ``mlp predict`` scores the same rows (before Serve starts: its Ray Data
actors and the replica would not both fit on the session's 2 CPUs), then one
application serves ``latest``. Every answer is compared with the offline
``Predictor`` and with ``mlp predict``'s output row for the same row. Serve is shut
down at the end of the module.
"""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from ray import serve
from s3server import free_port  # tests/ is on sys.path while pytest runs
from owndata import wine_table  # tests/owndata.py

from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.data import resolve_data
from mlp.loop import fit, prepare
from mlp.registry import make_provenance, promote
from serve.app import build_from_config
from serve.options import http_options
from serve.predict import main as mlp_predict
from serve.predictor import load_predictor

SERVE = {"min_replicas": 1, "max_replicas": 1, "max_instances": 64, "access_log": False}
WINE_CLASSES = ["class_0", "class_1", "class_2"]  # load_wine().target_names


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-tables")
    frame = wine_table(tmp / "wine.csv")
    cfg = resolve_data(Config.from_dict({
        "data": {"source": str(tmp / "wine.csv"), "label": "kind"}, "model": {"hidden_sizes": [32]},
        "optim": {"name": "adam", "lr": 0.003}, "train": {"epochs": 10, "batch_size": 32},
        "run": {"storage_path": str(tmp / "runs")},
        "registry": {"path": str(tmp / "registry"), "model_name": "wine"}, "serve": {**SERVE, "port": free_port()}}))
    model, optimizer, data, state = prepare(cfg, torch.device("cpu"))
    fit(cfg, model, optimizer, data, state, lambda *_: None)
    folder = save_checkpoint(tmp / "checkpoint", model, cfg, {"epoch": cfg.train.epochs})
    promote(cfg.registry.path, "wine", folder, {}, make_provenance(cfg, str(folder)))

    rows = frame.drop(columns=["kind"]).assign(row=np.arange(len(frame)))  # the rows to score, no label
    rows.to_csv(tmp / "rows.csv", index=False)
    assert mlp_predict(["--registry.path", cfg.registry.path, "--registry.model_name", "wine",
                        "--input", str(tmp / "rows.csv"), "--output", str(tmp / "scored")]) == 0
    scored = pd.read_parquet(tmp / "scored").sort_values("row").reset_index(drop=True)

    serve.start(http_options=http_options(cfg.serve))
    try:
        serve.run(build_from_config(cfg), name="tables", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{cfg.serve.port}", timeout=30) as http:
            yield {"http": http, "cfg": cfg, "frame": frame, "scored": scored,
                   "offline": load_predictor(tmp / "registry" / "wine" / "v1")}
    finally:
        serve.shutdown()


def post_json(http: httpx.Client, body) -> httpx.Response:
    return http.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})


def as_rows(frame: pd.DataFrame) -> list[dict[str, float]]:
    """The frame's feature rows as JSON objects, each with its keys in another order than the model's."""
    features = [c for c in frame.columns if c != "kind"]
    rng = np.random.default_rng(0)
    return [{name: float(record[name]) for name in rng.permutation(features)}
            for record in frame[features].to_dict("records")]


def test_rows_by_column_name_are_answered_like_the_offline_model_and_mlp_predict(endpoint):
    http, frame, offline, scored = endpoint["http"], endpoint["frame"], endpoint["offline"], endpoint["scored"]
    rows = as_rows(frame)
    answers = []
    for start in range(0, len(rows), 50):
        resp = post_json(http, {"instances": rows[start:start + 50]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["version"] == "v1"
        answers += resp.json()["predictions"]
    singles = [post_json(http, {"instance": rows[i]}) for i in (0, 70, 177)]
    assert all(r.status_code == 200 for r in singles), [r.text for r in singles]
    for i, single in zip((0, 70, 177), singles):  # one row alone: the same answer as in its batch
        assert (single.json()["label"], single.json()["class_name"]) == (answers[i]["label"], answers[i]["class_name"])
        assert np.allclose(single.json()["probabilities"], answers[i]["probabilities"], atol=1e-6)

    features = endpoint["cfg"].schema.features
    expected = offline.predict_proba(offline.table_input(frame[features].to_numpy(np.float64)))
    labels = [a["label"] for a in answers]
    probs = np.array([a["probabilities"] for a in answers])
    assert labels == expected.argmax(axis=1).tolist()
    assert np.allclose(probs, expected, atol=1e-5)
    # mlp predict's output row for the same row: the same class, name and probabilities
    assert labels == scored["prediction"].tolist()
    assert [a["class_name"] for a in answers] == scored["class_name"].tolist()
    assert np.allclose(probs, np.stack(scored["probabilities"].to_numpy()), atol=1e-5)
    # the real class names of the CSV, and the standardisation applied: raw wine features (proline ~ 1,000)
    # would not classify this well unstandardised
    assert {a["class_name"] for a in answers} == set(WINE_CLASSES)
    assert all(a["class_name"] == WINE_CLASSES[a["label"]] for a in answers)
    assert (np.array([a["class_name"] for a in answers]) == frame["kind"].to_numpy()).mean() > 0.9


def test_model_names_the_wine_classes(endpoint):
    model = endpoint["http"].get("/model").json()
    assert model["class_names"] == WINE_CLASSES and model["version"] == "v1"


def refusal(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "status"} and body["status"] == status
    return body["error"]


def test_a_missing_unknown_or_text_column_is_refused_naming_it_and_the_server_stays_up(endpoint):
    http, row = endpoint["http"], as_rows(endpoint["frame"])[0]
    without_hue = {k: v for k, v in row.items() if k != "hue"}
    assert "missing column 'hue'" in refusal(post_json(http, {"instance": without_hue}), 422)
    assert "unknown column 'colour'" in refusal(post_json(http, {"instances": [row, {**row, "colour": 3}]}), 422)
    error = refusal(post_json(http, {"instance": {**row, "alcohol": "13.2"}}), 422)
    assert error.startswith("non-numeric value in column 'alcohol' of instance 0")
    assert "column 'alcohol'" in refusal(post_json(http, {"instance": {**row, "alcohol": None}}), 422)
    nan = json.dumps({"instance": row}).replace(f'"hue": {row["hue"]}', '"hue": NaN')
    assert "NaN or infinite value in column 'hue'" in refusal(
        http.post("/predict", content=nan, headers={"content-type": "application/json"}), 422)
    assert "nesting too deep" in refusal(post_json(http, {"instances": [[[0.5] * 28] * 28]}), 422)
    png = io.BytesIO()
    Image.new("L", (28, 28)).save(png, format="PNG")
    for upload in ({"files": {"file": ("x.png", png.getvalue(), "image/png")}},
                   {"content": png.getvalue(), "headers": {"content-type": "image/png"}}):
        assert "this model takes table rows by column name" in refusal(http.post("/predict", **upload), 415)
    # still up, still right
    assert http.get("/healthz").json() == {"status": "ok"}
    resp = post_json(http, {"instance": row})
    assert resp.status_code == 200 and resp.json()["class_name"] in WINE_CLASSES


def test_openapi_names_the_features_and_classes(endpoint):
    doc = endpoint["http"].get("/openapi.json").json()
    schemas, features = doc["components"]["schemas"], endpoint["cfg"].schema.features
    row = schemas["Row"]
    assert list(row["properties"]) == features and row["required"] == features
    assert row["additionalProperties"] is False
    assert all("number" in spec["type"] for spec in row["properties"].values())
    for name in ("Prediction", "SinglePrediction"):
        assert schemas[name]["properties"]["class_name"]["enum"] == WINE_CLASSES
    predict = doc["paths"]["/predict"]["post"]
    assert list(predict["requestBody"]["content"]) == ["application/json"]
    assert schemas["PredictRequest"] == {"oneOf": [{"$ref": "#/components/schemas/WrappedRow"},
                                                   {"$ref": "#/components/schemas/Batch"}]}
