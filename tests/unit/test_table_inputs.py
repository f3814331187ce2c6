"""A table model's request rows, without a server: parsing by column name, the errors that name a column,
the structure limits of the object form, the OpenAPI schema of the rows, and ``python -m serve`` deploying it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from mlp.checkpoint import save_checkpoint
from mlp.config import Config, ServeConfig
from mlp.model import build_model
from serve.inputs import (
    MAX_DEVIATIONS,
    TABLE_DEPTH,
    InputError,
    TableForm,
    check_structure,
    parse_rows,
)
from serve.web import openapi_document

# Column names a real table may have: a comma, brackets and a quote must not upset the structure check.
FEATURES = ["alcohol", "weight[kg]", 'say "hi"', "a,b"]
MEAN = [13.0, 2.0, 0.0, 100.0]
STD = [0.8, 1.0, 2.0, 50.0]
FORM = TableForm.from_schema(FEATURES, MEAN, STD)
ROW = {"alcohol": 13.2, "weight[kg]": 2, 'say "hi"': True, "a,b": -40.5}


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def refused(value: Any, max_instances: int = 4) -> InputError:
    with pytest.raises(InputError) as err:
        parse_rows(value if isinstance(value, bytes) else body(value), FORM, max_instances)
    return err.value


def test_rows_by_column_name_come_out_raw_in_the_models_order():
    shuffled = dict(reversed(list(ROW.items())))  # the client's key order does not matter
    one = parse_rows(body({"instance": shuffled}), FORM, 4)
    assert one.single and one.x.dtype == np.float64
    assert one.x.tolist() == [[13.2, 2.0, 1.0, -40.5]]  # raw: the predictor standardises, not the parser
    batch = parse_rows(body({"instances": [ROW, {**ROW, "alcohol": 11}]}), FORM, 4)
    assert not batch.single and batch.x[:, 0].tolist() == [13.2, 11.0]


@pytest.mark.parametrize("row, words", [
    ({k: v for k, v in ROW.items() if k != "a,b"}, ["missing column 'a,b'", "instance 0"]),
    ({**ROW, "colour": 1}, ["unknown column 'colour'", "instance 0"]),
    ({k: v for k, v in ROW.items() if k != "alcohol"} | {"alcool": 13}, ["missing column 'alcohol'",
                                                                            "unknown column 'alcool'"]),
    ({**ROW, "alcohol": "13.2"}, ["non-numeric value in column 'alcohol' of instance 0", "text '13.2'"]),
    ({**ROW, "alcohol": None}, ["non-numeric value in column 'alcohol'", "got null"]),
    ({**ROW, "a,b": [1]}, ["non-numeric value in column 'a,b'", "list"]),
    ({**ROW, "a,b": {"x": 1}}, ["non-numeric value in column 'a,b'", "object"]),
    ({**ROW, "alcohol": 13 + 0.8 * MAX_DEVIATIONS * 1.01}, ["outside [", "column 'alcohol' of instance 0"]),
])
def test_a_bad_row_gets_422_naming_the_column(row, words):
    err = refused({"instance": row})
    assert err.status == 422
    assert all(w in err.message for w in words), err.message


def test_every_column_is_listed_when_one_is_missing_or_unknown():
    err = refused({"instances": [ROW, {**ROW, "extra": 0}]})
    assert err.message.startswith("instance 1: unknown column 'extra'")
    assert "this model takes exactly these 4 columns: 'alcohol', 'weight[kg]', 'say \"hi\"', 'a,b'" in err.message


def test_a_flood_of_unknown_columns_is_named_briefly():
    err = refused({"instance": {**ROW, **{f"c{i}": 0 for i in range(3)}}})
    assert "unknown columns 'c0', 'c1', 'c2'" in err.message
    many = {**ROW, **{f"x{i:04d}" * 20: 0 for i in range(1000)}}
    assert len(refused({"instance": many}, max_instances=1000).message) < 1000


@pytest.mark.parametrize("raw, status, words", [
    (b'{"instance": {"alcohol": NaN, "weight[kg]": 1, "say \\"hi\\"": 1, "a,b": 1}}', 422,
     "NaN or infinite value in column 'alcohol' of instance 0"),
    (b'{"instance": {"alcohol": 1, "weight[kg]": 1e400, "say \\"hi\\"": 1, "a,b": 1}}', 422,
     "NaN or infinite value in column 'weight[kg]'"),
    (b'{"instance": {"alcohol": 1, "weight[kg]": -Infinity, "say \\"hi\\"": 1, "a,b": 1}}', 422,
     "NaN or infinite value in column 'weight[kg]'"),
    (body(ROW), 422, 'expected {"instances": [{column: value, ...}, ...]} or {"instance": {column: value, ...}}'),
    (body([ROW]), 422, "got a JSON list: this model takes rows by column name"),
    (body({"instances": [[13.2, 2, 1, -40.5]]}), 422, "instance 0 is a JSON list, not an object"),
    (body({"instance": [0.5, 0.5]}), 422, "instance 0 is a JSON list"),
    (body({"instances": []}), 422, "empty batch"),
    (body({"instances": [ROW] * 5}), 413, "batch of 5 instances is above the limit of 4"),
    (body({"instance": ROW, "instances": [ROW]}), 422, "got keys ['instance', 'instances']"),
    (b"{not json", 400, "malformed JSON"),
])
def test_bodies_that_are_not_rows_get_a_named_4xx(raw, status, words):
    err = refused(raw)
    assert err.status == status and words in err.message, err.message


def test_the_object_form_is_one_level_shallower_than_pixels():
    deepest_valid = {"instances": [ROW]}  # object, array, object
    check_structure(body(deepest_valid), 4, FORM.limits)
    err = refused({"instances": [{**ROW, "alcohol": [[1]]}]})
    assert err.message.startswith(f"nesting too deep: arrays/objects nest 5 levels, at most {TABLE_DEPTH} are valid")
    assert refused(b'{"instances": [' + b"[" * 300_000 + b"]" * 300_000 + b"]}").status == 422


def test_valid_batches_pass_the_structure_check_and_floods_do_not():
    parse_rows(body({"instances": [ROW] * 4}), FORM, 4)  # commas inside names count toward the limit
    for flood in (b'{"instances": [' + b"{}," * 100_000 + b"{}]}",
                  b'{"instance": {"alcohol": 1' + b', "a": 1' * 100_000 + b"}}"):
        err = refused(flood)
        assert err.status == 413
        assert err.message == "too many values: more than twice the largest valid batch (4 instances of 4 columns)"


def test_features_kept_as_they_are_are_limited_by_float32_only():
    raw = TableForm.from_schema(["x"], [], [])
    assert parse_rows(body({"instance": {"x": 3e38}}), raw, 1).x.tolist() == [[3e38]]
    with pytest.raises(InputError, match="outside"):
        parse_rows(body({"instance": {"x": 3.5e38}}), raw, 1)


@pytest.fixture(scope="module")
def row_schema():
    base = {"openapi": "3.1.0", "info": {"title": "t", "version": "0", "description": "images"},
            "paths": {path: {method: {}} for path, method in (("/predict", "post"), ("/healthz", "get"),
                                                               ("/readyz", "get"), ("/model", "get"),
                                                               ("/admin/reload", "post"))}}
    doc = openapi_document(base, ServeConfig(max_instances=4), "open", FORM, ["class_0", "class_1"])
    return doc


def test_the_document_names_the_columns_and_classes(row_schema):
    schemas = row_schema["components"]["schemas"]
    row = schemas["Row"]
    assert list(row["properties"]) == FEATURES and row["required"] == FEATURES
    assert row["additionalProperties"] is False
    assert all(p["type"] == ["number", "boolean"] for p in row["properties"].values())
    assert schemas["Prediction"]["properties"]["class_name"]["enum"] == ["class_0", "class_1"]
    assert schemas["SinglePrediction"]["properties"]["probabilities"]["maxItems"] == 2
    predict = row_schema["paths"]["/predict"]["post"]
    assert list(predict["requestBody"]["content"]) == ["application/json"] and "parameters" not in predict
    assert "FlatInstance" not in schemas and "ImageUpload" not in schemas
    assert "table rows" in row_schema["info"]["description"]


@pytest.mark.parametrize("value", [
    {"instance": ROW}, {"instances": [ROW] * 4}, {"instance": {**ROW, "alcohol": 0}},
    {"instance": {**ROW, "alcohol": FORM.high[0]}}, {"instance": {**ROW, "alcohol": FORM.high[0] * 1.0001}},
    {"instance": {**ROW, "a,b": FORM.low[3]}}, {"instance": {**ROW, "a,b": FORM.low[3] - 1}},
    ROW, [ROW], {"instances": []}, {"instances": [ROW] * 5}, {"instance": {**ROW, "x": 1}},
    {"instance": {k: v for k, v in ROW.items() if k != "alcohol"}}, {"instance": {**ROW, "alcohol": "1"}},
    {"instance": {**ROW, "alcohol": None}}, {"instance": ROW, "extra": 1}, {}, {"instances": [[1, 2, 3, 4]]},
    {"instance": {**ROW, "alcohol": False}},
])
def test_the_schema_admits_exactly_what_the_server_accepts(row_schema, value):
    validator = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/PredictRequest",
                                                 "components": row_schema["components"]})
    try:
        parse_rows(body(value), FORM, 4)
        server_ok = True
    except InputError:
        server_ok = False
    assert validator.is_valid(value) == server_ok, (validator.is_valid(value), server_ok)


def test_python_m_serve_deploys_a_table_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """It used to refuse one, naming `mlp predict`; now it deploys it like any other model."""
    import serve.deploy
    from serve.__main__ import main

    cfg = Config.from_dict({"data": {"source": str(tmp_path / "wine.csv"), "label": "kind"},
                            "schema": {"input_size": 4, "features": FEATURES, "classes": ["a", "b"],
                                       "mean": MEAN, "std": STD}})
    folder = save_checkpoint(tmp_path / "ckpt", build_model(cfg.model, 0, 4, 2), cfg, {"epoch": 0})
    deployed: list[Config] = []
    monkeypatch.setattr(serve.deploy, "deploy_command", lambda prog, c: (deployed.append(c), (0, "http://h:1"))[1])
    monkeypatch.setattr(serve.deploy, "serve_until_interrupted", lambda: None)
    assert main(["--serve.checkpoint", str(folder)]) == 0
    assert [c.serve.checkpoint for c in deployed] == [str(folder)]
