"""API keys for /predict over real HTTP on the shared local cluster: refusals, both headers, rotation.

One application serves a checkpoint (a small model trained for a moment on the synthetic dataset) with
``serve.api_keys_file`` set, on loopback: keys are required there too. Answers are compared with the
offline ``Predictor``. Serve is shut down at the end of the module.
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
import torch
from ray import serve

from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.data import synthetic
from mlp.loop import fit, prepare
from serve.app import build_from_config, failure_reason
from serve.keys import CHALLENGE, new_key
from serve.options import http_options
from serve.predictor import load_predictor
from s3server import free_port  # tests/ is on sys.path while pytest runs

SERVE = {"min_replicas": 1, "max_replicas": 1, "max_instances": 64, "max_body_bytes": 1_000_000}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-keys")
    cfg = Config.from_dict({
        "data": {"dataset": "synthetic", "synthetic_size": 2000}, "train": {"epochs": 1},
        "run": {"storage_path": str(tmp / "runs")}, "registry": {"path": str(tmp / "registry")}})
    model, optimizer, data, state = prepare(cfg, torch.device("cpu"))
    fit(cfg, model, optimizer, data, state, lambda *_: None)
    folder = save_checkpoint(tmp / "checkpoint", model, cfg, {"epoch": 1})
    keys_file = tmp / "secrets" / "predict-keys"
    keys_file.parent.mkdir()
    alice, _ = new_key("alice", keys_file)
    served = Config.from_dict({**cfg.to_dict(), "serve": {**SERVE, "port": free_port(), "host": "127.0.0.1",
                                                          "checkpoint": str(folder),
                                                          "api_keys_file": str(keys_file)}})
    serve.start(http_options=http_options(served.serve))
    serve.run(build_from_config(served), name="keyed", route_prefix="/")
    url = f"http://127.0.0.1:{served.serve.port}"
    x, _ = synthetic(32, seed=2)
    with httpx.Client(base_url=url, timeout=30) as http:
        yield {"http": http, "url": url, "cfg": served, "keys_file": keys_file, "alice": alice, "x": x.numpy(),
               "offline": load_predictor(folder), "tmp": tmp}
    serve.shutdown()


def post_json(http: httpx.Client, body, **headers: str) -> httpx.Response:
    return http.post("/predict", content=json.dumps(body), headers={"content-type": "application/json", **headers})


def assert_refused(resp: httpx.Response, starts: str) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["status"] == 401 and resp.json()["error"].startswith(starts), resp.text
    assert resp.headers["www-authenticate"].startswith(CHALLENGE)


def test_no_key_gets_401_before_the_body_is_read(keyed):
    http, x = keyed["http"], keyed["x"]
    resp = post_json(http, x[0].tolist())
    assert_refused(resp, "API key required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    assert resp.headers["www-authenticate"] == CHALLENGE
    # Refused for the key, not for the body: an oversized body, a bad content type, an upload all get the 401.
    unread = [dict(content=b"[" + b"0," * 600_000 + b"0]", headers={"content-type": "application/json"}),
              dict(content=b"x", headers={"content-type": "text/plain"}),
              dict(files={"file": ("a.png", b"\x89PNG", "image/png")}),
              dict(content=json.dumps(x[0].tolist()), headers={"content-type": "application/json",
                                                               "authorization": "Basic YWxpY2U6cHc="})]
    for kwargs in unread:
        with httpx.Client(base_url=keyed["url"], timeout=30) as fresh:  # a body left unread may end the connection
            assert_refused(fresh.post("/predict", **kwargs), "API key required")
    assert http.get("/healthz").status_code == 200


def test_wrong_key_gets_401(keyed):
    http, x, alice = keyed["http"], keyed["x"], keyed["alice"]
    for headers in ({"authorization": f"Bearer {alice[:-1]}"}, {"authorization": f"Bearer {alice}x"},
                    {"x-api-key": alice.upper()}, {"authorization": alice}):
        resp = post_json(http, x[0].tolist(), **headers)
        if "authorization" in headers and not headers["authorization"].startswith("Bearer"):
            assert_refused(resp, "API key required")
        else:
            assert_refused(resp, "API key rejected")
            assert 'error="invalid_token"' in resp.headers["www-authenticate"]
        assert alice not in resp.text


def test_right_key_in_either_header_predicts_like_the_offline_model(keyed):
    http, x, alice = keyed["http"], keyed["x"], keyed["alice"]
    expected = keyed["offline"].predict(x)
    for headers in ({"authorization": f"Bearer {alice}"}, {"x-api-key": alice}):
        batch = post_json(http, {"instances": x.tolist()}, **headers)
        assert batch.status_code == 200, batch.text
        answers = batch.json()["predictions"]
        assert [a["label"] for a in answers] == [e["label"] for e in expected]
        assert np.allclose([a["probabilities"] for a in answers], [e["probabilities"] for e in expected], atol=1e-5)
        single = post_json(http, x[3].tolist(), **headers)
        assert single.status_code == 200 and single.json()["label"] == expected[3]["label"], single.text


def test_other_routes_stay_open_and_the_schema_names_the_keys(keyed):
    http = keyed["http"]
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json()["ready"] is True
    assert http.get("/model").status_code == 200
    assert http.get("/docs").status_code == 200
    doc = http.get("/openapi.json").json()
    predict = doc["paths"]["/predict"]["post"]
    assert predict["security"] == [{"apiKeyBearer": []}, {"apiKeyHeader": []}] and "401" in predict["responses"]
    assert doc["components"]["securitySchemes"]["apiKeyHeader"]["name"] == "X-API-Key"
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_rotation_takes_effect_within_seconds_without_a_restart(keyed):
    http, x, alice, keys_file = keyed["http"], keyed["x"], keyed["alice"], keyed["keys_file"]
    row = x[0].tolist()
    replica = http.get("/readyz").json()["replica"]
    assert post_json(http, row, authorization=f"Bearer {alice}").status_code == 200
    carol, line = new_key("carol", None)
    keys_file.write_text(f"# rotated: alice revoked\n{line}\n")  # rewritten in place
    began = time.monotonic()
    old = new = None
    while time.monotonic() - began < 10:
        old = post_json(http, row, authorization=f"Bearer {alice}").status_code
        new = post_json(http, row, **{"x-api-key": carol}).status_code
        if (old, new) == (401, 200):
            break
        assert {old, new} <= {200, 401}
        time.sleep(0.05)
    took = time.monotonic() - began
    assert (old, new) == (401, 200), (old, new)
    assert took < 2.5, f"rotation took {took:.2f}s"
    print(f"rotation: the old key refused and the new one accepted after {took:.2f}s")
    assert post_json(http, row, authorization=f"Bearer {carol}").status_code == 200
    assert http.get("/readyz").json()["replica"] == replica  # the same replica: nothing restarted
    # The file vanishing keeps the last good keys (an unmounted secret does not lock everyone out).
    keys_file.unlink()
    time.sleep(1.2)
    assert post_json(http, row, authorization=f"Bearer {carol}").status_code == 200
    keys_file.write_text(f"{line}\n")
    assert http.get("/healthz").status_code == 200


def test_a_missing_keys_file_fails_the_deploy_naming_it(keyed):
    """At start-up a missing keys file is a configuration mistake: no replica starts, and the reason names it."""
    missing = keyed["tmp"] / "no-such-keys"
    base = keyed["cfg"].to_dict()
    cfg = Config.from_dict({**base, "serve": {**base["serve"], "api_keys_file": str(missing)}})
    try:
        with pytest.raises(RuntimeError):
            serve.run(build_from_config(cfg), name="nokeys", route_prefix="/nokeys")
        reason = failure_reason("nokeys")
        assert "serve.api_keys_file" in reason and str(missing) in reason, reason
    finally:
        serve.delete("nokeys")
    assert keyed["http"].get("/healthz").status_code == 200


def test_without_keys_predict_stays_open_even_when_exposed(keyed):
    """No serve.api_keys_file and serve.host 0.0.0.0: /predict answers without a key, as before (the replica's
    start-up log says it is open to anyone); the schema declares no key."""
    base = keyed["cfg"].to_dict()
    cfg = Config.from_dict({**base, "serve": {**base["serve"], "api_keys_file": None, "host": "0.0.0.0"}})
    serve.run(build_from_config(cfg), name="open", route_prefix="/open")
    try:
        with httpx.Client(base_url=keyed["url"] + "/open", timeout=30) as http:
            resp = post_json(http, keyed["x"][0].tolist())
            assert resp.status_code == 200, resp.text
            assert "security" not in http.get("/openapi.json").json()["paths"]["/predict"]["post"]
    finally:
        serve.delete("open")
