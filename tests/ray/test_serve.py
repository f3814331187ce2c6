"""The Serve endpoint over real HTTP on the shared local cluster.

One application serves ``latest`` from a temporary registry (v1 at first; the
hot-swap test promotes v2), trained for a moment on a Fashion-MNIST subset.
Every answer is compared with the offline ``Predictor`` of the version the
answer names. The health tests deploy extra applications on registries of
their own (one empty, one whose ``latest`` breaks). Serve is shut down at the
end of the module.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from ray import serve

from mlp.checkpoint import save_checkpoint
from mlp.config import Config
from mlp.data import Splits, load_test
from mlp.loop import fit, prepare
from mlp.registry import make_provenance, model_dir, promote
from serve import client as serve_client
from serve.app import DEPLOYMENT_NAME, build_from_config, failure_reason
from serve.options import ADMIN_TOKEN_ENV, http_options
from serve.predictor import load_predictor
from s3server import free_port  # tests/ is on sys.path while pytest runs

N_TEST = 1000
SERVE = {"min_replicas": 1, "max_replicas": 1, "max_instances": 256, "max_body_bytes": 2_000_000,
         "max_image_pixels": 1_000_000}



def train_checkpoint(tmp: Path, seed: int, width: int) -> tuple[Path, Config]:
    """A few seconds of real training on 3,000 Fashion-MNIST images."""
    cfg = Config.from_dict({
        "data": {"dataset": "fashion-mnist", "seed": seed}, "model": {"hidden_sizes": [width]},
        "train": {"epochs": 2}, "run": {"storage_path": str(tmp / "runs")},
        "registry": {"path": str(tmp / "registry")}, "serve": {**SERVE, "port": free_port()}})
    model, optimizer, data, state = prepare(cfg, torch.device("cpu"))
    data = Splits(data.train_x[:3000], data.train_y[:3000], data.val_x[:500], data.val_y[:500])
    fit(cfg, model, optimizer, data, state, lambda *_: None)
    return save_checkpoint(tmp / f"checkpoint-{seed}", model, cfg, {"epoch": 2}), cfg


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    first, cfg = train_checkpoint(tmp, seed=0, width=32)
    second, _ = train_checkpoint(tmp, seed=1, width=64)
    promote(cfg.registry.path, "mlp", first, {"test_accuracy": 0.7}, make_provenance(cfg, str(first)))
    serve.start(http_options=http_options(cfg.serve))
    serve.run(build_from_config(cfg), name="mlp", route_prefix="/")
    url = f"http://127.0.0.1:{cfg.serve.port}"
    x, y = load_test(cfg.data)
    offline = {"v1": load_predictor(first)}
    with httpx.Client(base_url=url, timeout=30) as http:
        yield {"url": url, "http": http, "cfg": cfg, "x": x[:N_TEST], "y": y[:N_TEST], "offline": offline,
               "first": first, "second": second, "tmp": tmp}
    serve.shutdown()


def post_json(http: httpx.Client, body) -> httpx.Response:
    return http.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})


def assert_matches_offline(endpoint, answers: list[dict], x: torch.Tensor) -> None:
    for answer, row in zip(answers, x):
        expected = endpoint["offline"][answer["version"]].predict(row[None])[0]
        assert answer["label"] == expected["label"]
        assert np.allclose(answer["probabilities"], expected["probabilities"], atol=1e-5)


def test_health_ready_model_and_docs(endpoint):
    http = endpoint["http"]
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert (ready["ready"], ready["version"], ready["problem"]) == (True, "v1", None) and ready["replica"]
    model = http.get("/model").json()
    assert model["version"] == "v1" and model["dataset"] == "fashion-mnist"
    assert model["metrics"]["test_accuracy"] == 0.7 and model["provenance"]["version"] == "v1"
    assert model["class_names"][9] == "Ankle boot"
    assert "/predict" in http.get("/openapi.json").json()["paths"]
    assert http.get("/docs").status_code == 200


def test_json_batch_and_single_agree_with_offline_model(endpoint):
    http, x = endpoint["http"], endpoint["x"]
    offline = endpoint["offline"]["v1"].predict(x)
    batched = []
    for start in range(0, N_TEST, 100):
        resp = post_json(http, {"instances": x[start:start + 100].tolist()})
        assert resp.status_code == 200, resp.text
        batched += [{**p, "version": resp.json()["version"]} for p in resp.json()["predictions"]]
    assert [p["label"] for p in batched] == [p["label"] for p in offline]
    assert_matches_offline(endpoint, batched, x)

    def single(i: int) -> dict:
        resp = post_json(http, x[i].tolist() if i % 2 else x[i].reshape(28, 28).tolist())
        assert resp.status_code == 200, resp.text
        return resp.json()

    with ThreadPoolExecutor(8) as pool:  # concurrent, so the server's batching is exercised too
        singles = list(pool.map(single, range(N_TEST)))
    assert [p["label"] for p in singles] == [p["label"] for p in offline]
    assert_matches_offline(endpoint, singles, x)
    assert singles[0]["class_name"] == endpoint["offline"]["v1"].info.class_names[singles[0]["label"]]


def gray(row: torch.Tensor) -> Image.Image:
    """A model input row as the 8-bit grayscale picture it came from."""
    return Image.fromarray(np.rint(row.reshape(28, 28).numpy() * 255).astype(np.uint8), "L")


def encoded(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def png_bytes(row: torch.Tensor) -> bytes:
    return encoded(gray(row))


def test_png_upload_predicts_like_its_array(endpoint):
    http, x = endpoint["http"], endpoint["x"]
    for i in range(20):
        as_json = post_json(http, x[i].tolist()).json()
        upload = http.post("/predict", files={"file": (f"{i}.png", png_bytes(x[i]), "image/png")}).json()
        raw = http.post("/predict", content=png_bytes(x[i]), headers={"content-type": "image/png"}).json()
        for answer in (upload, raw):
            assert answer["label"] == as_json["label"]
            assert np.allclose(answer["probabilities"], as_json["probabilities"], atol=1e-6)


def picture_forms(row: torch.Tensor) -> dict[str, bytes]:
    """One picture as a user might have it saved: 8 and 16 bits, colour, palette, CMYK JPEG."""
    img = gray(row)
    sixteen = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)  # 0..255 -> 0..65535, as a scanner writes
    assert sixteen.mode.startswith("I;16")
    return {"8-bit PNG": encoded(img), "16-bit PNG": encoded(sixteen), "RGB PNG": encoded(img.convert("RGB")),
            "palette PNG": encoded(img.convert("P")), "CMYK JPEG": encoded(img.convert("CMYK"), "JPEG", quality=100)}


def test_every_bit_depth_and_colour_mode_gets_the_same_class(endpoint):
    """A 16-bit PNG is scaled to 8 bits, not clipped: it gives exactly the 8-bit picture's answer, and RGB,
    palette and CMYK JPEG copies get its class. The pictures are the ten of 200 the model is surest of
    (widest lead of the top class), so JPEG's rounding cannot flip them; clipping 16-bit values turns
    them all white."""
    http, x = endpoint["http"], endpoint["x"]
    lead = [np.diff(sorted(p["probabilities"])[-2:])[0] for p in endpoint["offline"]["v1"].predict(x[:200])]
    sure = sorted(range(200), key=lambda i: lead[i], reverse=True)[:10]
    assert lead[sure[-1]] > 0.05, lead[sure[-1]]
    for i in sure:
        answers = {}
        for form, data in picture_forms(x[i]).items():
            resp = http.post("/predict", files={"file": (f"{i}.img", data)})
            assert resp.status_code == 200, (form, resp.text)
            answers[form] = resp.json()
        assert {form: a["label"] for form, a in answers.items()} == {form: answers["8-bit PNG"]["label"]
                                                                      for form in answers}, i
        assert answers["16-bit PNG"]["probabilities"] == answers["8-bit PNG"]["probabilities"]


def _image(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("L", size).save(out, format=fmt)
    return out.getvalue()


def _zero_width_png() -> bytes:
    import zlib

    data = bytearray(_image((28, 28)))
    data[16:20] = (0).to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _huge_png_header() -> bytes:
    data = bytearray(_image((1, 1)))
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # a decompression bomb's header; pixels never decoded
    return bytes(data)


JSON = {"content-type": "application/json"}
ROW = [0.5] * 784
BAD_REQUESTS = {
    "malformed JSON": (dict(content=b'{"instances": [0.1,', headers=JSON), 400, "malformed JSON"),
    "wrong content type": (dict(content=b"0.1 0.2", headers={"content-type": "text/plain"}), 415,
                           "unsupported content type 'text/plain'"),
    "empty body": (dict(content=b"", headers=JSON), 400, "empty body"),
    "empty batch": (dict(content=b'{"instances": []}', headers=JSON), 422, "empty batch"),
    "batch above the limit": (dict(content=json.dumps({"instances": [[0] * 784] * 257}), headers=JSON), 413,
                              "batch of 257 instances is above the limit of 256"),
    "body above the size limit": (dict(content=b"[" + b"0.5," * 600_000 + b"0.5]", headers=JSON), 413,
                                  "above the limit of 2000000 bytes"),
    "wrong vector length": (dict(content=json.dumps(ROW[:100]), headers=JSON), 422, "wrong vector length"),
    "non-numeric values": (dict(content=json.dumps(ROW[:-1] + ["0.5"]), headers=JSON), 422, "non-numeric"),
    "NaN": (dict(content=json.dumps(ROW[:-1] + [float("nan")]), headers=JSON), 422, "NaN or infinite"),
    "Inf": (dict(content=json.dumps({"instances": [ROW, ROW[:-1] + [float("inf")]]}), headers=JSON), 422,
            "NaN or infinite value in instance 1"),
    "values outside [0, 1]": (dict(content=json.dumps(ROW[:-1] + [255]), headers=JSON), 422, "outside [0, 1]"),
    "ragged nested arrays": (dict(content=json.dumps([[0.5] * 28] * 27 + [[0.5] * 3]), headers=JSON), 422,
                             "ragged"),
    "undecodable image": (dict(files={"file": ("x.png", b"\x89PNG but not really", "image/png")}), 422,
                          "cannot decode image"),
    "undecodable raw image": (dict(content=b"\xff\xd8 not a jpeg", headers={"content-type": "image/jpeg"}), 422,
                              "cannot decode image"),
    "zero-byte image": (dict(files={"file": ("x.png", b"", "image/png")}), 400, "empty image"),
    "zero-size image": (dict(files={"file": ("x.png", _zero_width_png(), "image/png")}), 422, "zero-size image"),
    "image above the pixel limit": (dict(files={"file": ("big.png", _image((1001, 1000)), "image/png")}), 413,
                                    "1001x1000 = 1001000 pixels is above the limit of 1000000"),
    "multipart without a file": (dict(data={"note": "hi"}, files={"other": ("x", b"1")}), 422, "field 'file'"),
    "multipart with more than the file": (dict(data={"note": "hi"}, files={"file": ("x.png", _image((28, 28)))}),
                                          422, "field 'file' and nothing else"),
    "deep nesting": (dict(content=b"[" * 5000 + b"]" * 5000, headers=JSON), 422, "nesting too deep"),
    # 300,000 levels overflowed orjson's C stack: the replica died and the client saw a dropped connection.
    "nesting past the decoder's stack": (dict(content=b"[" * 300_000 + b"]" * 300_000, headers=JSON), 422,
                                         "nesting too deep: arrays/objects nest 300000 levels"),
    "nesting behind a string": (dict(content=b'["' + b"]" * 5000 + b'", ' + b"[" * 5000 + b"]" * 5000 + b"]",
                                     headers=JSON), 422, "nesting too deep"),
    "huge integer": (dict(content=b"[" + b"0.5," * 783 + b"1" * 5000 + b"]", headers=JSON), 422,
                     "NaN or infinite value in instance 0"),  # was a 500 (Python's int digit limit)
    "UTF-16 JSON": (dict(content=json.dumps(ROW[:-1] + [True]).encode("utf-16"), headers=JSON), 400, "not UTF-8"),
    "more arrays than any batch": (dict(content=b"[" + b"[]," * 100_000 + b"[]]", headers=JSON), 413,
                                   "too many values"),
    "invert not in the list": (dict(content=json.dumps(ROW), headers=JSON, params={"invert": "TRUE"}), 422,
                               "invert must be one of auto, true, false"),
    "PNG header claiming 100000x100000": (dict(content=_huge_png_header(), headers={"content-type": "image/png"}),
                                          413, "100000x100000 = 10000000000 pixels is above the limit"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_named_4xx_and_the_server_stays_healthy(endpoint, case):
    kwargs, status, words = BAD_REQUESTS[case]
    with httpx.Client(base_url=endpoint["url"], timeout=30) as http:  # a fresh connection per case
        resp = http.post("/predict", **kwargs)
        assert resp.status_code == status, resp.text
        assert words in resp.json()["error"], resp.json()
        assert http.get("/healthz").status_code == 200
    assert post_json(endpoint["http"], ROW).status_code == 200


def test_unknown_paths_and_methods_get_the_same_json_error(endpoint):
    http = endpoint["http"]
    wrong = http.put("/predict")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST", wrong.headers
    assert wrong.json() == {"error": "Method Not Allowed: PUT /predict", "status": 405}
    assert http.get("/nope").json() == {"error": "Not Found: GET /nope", "status": 404}


def test_client_scores_the_endpoint(endpoint, capsys):
    url = endpoint["url"]
    assert serve_client.main(["--url", url, "score", "--limit", "500", "--batch-size", "100"]) == 0
    offline = endpoint["offline"]["v1"].predict(endpoint["x"][:500])
    accuracy = np.mean([p["label"] == int(t) for p, t in zip(offline, endpoint["y"][:500])])
    assert f"accuracy {accuracy:.4f} on 500 images" in capsys.readouterr().out
    assert serve_client.main(["--url", url, "sample", "--index", "3"]) == 0
    assert "#3:" in capsys.readouterr().out


def test_hot_swap_under_load(endpoint):
    """Promote v2 while clients send continuously: no request fails and the answers switch to v2."""
    cfg, x = endpoint["cfg"], endpoint["x"]
    endpoint["offline"]["v2"] = load_predictor(endpoint["second"])
    answers: list[tuple[int, dict]] = []
    failures: list[str] = []
    stop = threading.Event()

    def user(offset: int) -> None:
        with httpx.Client(base_url=endpoint["url"], timeout=30) as http:
            i = offset
            while not stop.is_set():
                try:
                    resp = post_json(http, x[i % N_TEST].tolist())
                    if resp.status_code == 200:
                        answers.append((i % N_TEST, resp.json()))
                    else:
                        failures.append(f"{resp.status_code} {resp.text}")
                except httpx.HTTPError as err:
                    failures.append(repr(err))
                i += 4

    threads = [threading.Thread(target=user, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    promote(cfg.registry.path, "mlp", endpoint["second"], {"test_accuracy": 0.8}, make_provenance(cfg, "v2"))
    deadline = time.time() + 20
    while time.time() < deadline and not any(a["version"] == "v2" for _, a in answers[-5:]):
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    versions = [a["version"] for _, a in answers]
    assert versions[0] == "v1" and versions[-1] == "v2", "answers switched to the new version"
    assert_matches_offline(endpoint, [a for _, a in answers], torch.stack([x[i] for i, _ in answers]))
    assert endpoint["http"].get("/model").json()["version"] == "v2"


def test_pinned_version_via_user_config_and_reload(endpoint):
    """Redeploying with ``serve.version=v1`` serves v1 although latest is v2; /admin/reload keeps it."""
    cfg = Config.from_dict({**endpoint["cfg"].to_dict(), "serve": {**endpoint["cfg"].to_dict()["serve"],
                                                                    "version": "v1"}})
    serve.run(build_from_config(cfg), name="mlp", route_prefix="/")
    http = endpoint["http"]
    assert http.get("/model").json()["version"] == "v1"
    assert http.post("/admin/reload").json() == {"version": "v1", "changed": False, "problem": None}
    assert post_json(http, ROW).json()["version"] == "v1"


ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


@pytest.mark.skipif(ADMIN_TOKEN_ENV in os.environ, reason=f"${ADMIN_TOKEN_ENV} reaches the replicas")
def test_admin_reload_beyond_loopback_needs_the_token_or_is_off(endpoint, tmp_path):
    """``serve.host`` 0.0.0.0 (the decision is the config's; the requests still go to 127.0.0.1): with a token
    file the route wants ``Authorization: Bearer <token>``, compared in full; without one it is off, saying how
    to enable it. Predictions are not affected either way."""
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    apps = {"guarded": with_registry(endpoint, Path(endpoint["cfg"].registry.path), host="0.0.0.0",
                                     admin_token_file=str(token_file)),
            "closed": with_registry(endpoint, Path(endpoint["cfg"].registry.path), host="0.0.0.0")}
    for name, cfg in apps.items():
        serve.run(build_from_config(cfg), name=name, route_prefix=f"/{name}")
    try:
        with httpx.Client(base_url=endpoint["url"] + "/guarded", timeout=30) as http:
            for headers in ({}, {"authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
                            {"authorization": f"Bearer {ADMIN_TOKEN[:-1]}X"}, {"authorization": ADMIN_TOKEN}):
                denied = http.post("/admin/reload", headers=headers)
                assert denied.status_code == 401, (headers, denied.text)
                assert denied.headers["www-authenticate"].startswith("Bearer") and denied.json()["status"] == 401
            assert "Authorization: Bearer <token>" in http.post("/admin/reload").json()["error"]
            allowed = http.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
            assert allowed.status_code == 200 and allowed.json()["changed"] is False, allowed.text
            assert post_json(http, ROW).status_code == 200
            doc = http.get("/openapi.json").json()
            assert doc["paths"]["/admin/reload"]["post"]["security"] == [{"adminToken": []}]
            assert doc["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
        with httpx.Client(base_url=endpoint["url"] + "/closed", timeout=30) as http:
            off = http.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
            assert off.status_code == 403, off.text
            assert off.json()["error"].startswith("POST /admin/reload is off: the endpoint listens on 0.0.0.0")
            assert "serve.admin_token_file" in off.json()["error"] and ADMIN_TOKEN_ENV in off.json()["error"]
            assert post_json(http, ROW).status_code == 200
            assert list(http.get("/openapi.json").json()["paths"]["/admin/reload"]["post"]["responses"]) == ["403"]
    finally:
        for name in apps:
            serve.delete(name)


def test_overload_answers_503_not_500_and_recovers(endpoint):
    tight = Config.from_dict({**endpoint["cfg"].to_dict(), "serve": {
        **endpoint["cfg"].to_dict()["serve"], "max_ongoing_requests": 1, "max_queued_requests": 1,
        "batch_wait_timeout_s": 0.05, "max_batch_size": 2}})  # every request waits 50 ms for company
    serve.run(build_from_config(tight), name="tight", route_prefix="/tight")
    url = endpoint["url"] + "/tight"
    barrier = threading.Barrier(24)

    def one(_: int) -> int:
        with httpx.Client(base_url=url, timeout=30) as http:
            barrier.wait()
            return post_json(http, ROW).status_code

    try:
        with ThreadPoolExecutor(24) as pool:
            statuses = list(pool.map(one, range(24)))
        assert 503 in statuses and 200 in statuses, statuses
        assert set(statuses) <= {200, 503}, statuses
        with httpx.Client(base_url=url, timeout=30) as http:
            assert [post_json(http, ROW).status_code for _ in range(5)] == [200] * 5
    finally:
        serve.delete("tight")


def test_slow_prediction_answers_504_naming_the_timeout(endpoint):
    """A batch that waits longer than serve.request_timeout_s is cut off with a JSON 504."""
    slow = Config.from_dict({**endpoint["cfg"].to_dict(), "serve": {
        **endpoint["cfg"].to_dict()["serve"], "batch_wait_timeout_s": 0.5, "max_batch_size": 2,
        "request_timeout_s": 0.05}})
    serve.run(build_from_config(slow), name="slow", route_prefix="/slow")
    try:
        with httpx.Client(base_url=endpoint["url"] + "/slow", timeout=30) as http:
            resp = post_json(http, ROW)
            assert resp.status_code == 504
            assert "longer than 0.05s" in resp.json()["error"]
            assert http.get("/healthz").status_code == 200
    finally:
        serve.delete("slow")


def with_registry(endpoint, registry: Path, **serve_keys) -> Config:
    """The endpoint's config, serving from another registry, with some ``serve`` keys changed."""
    base = endpoint["cfg"].to_dict()
    return Config.from_dict({**base, "registry": {**base["registry"], "path": str(registry)},
                             "serve": {**base["serve"], **serve_keys}})


def point_latest_at(registry: Path, version: str) -> None:
    """Swap the registry's ``latest`` pointer the way ``promote`` does, to any version name (even a missing one)."""
    latest = model_dir(registry, "mlp") / "latest"
    staged = latest.with_name(".latest-test")
    if latest.is_symlink():
        os.symlink(version, staged)
    else:  # a pointer file
        staged.write_text(version)
    os.replace(staged, latest)


def get_or_none(http: httpx.Client, path: str) -> httpx.Response | None:
    try:
        return http.get(path)
    except httpx.HTTPError:  # nothing answers at all: as good as a refusal here
        return None


def test_empty_registry_fails_the_deploy_and_names_the_registry(endpoint):
    """No replica without a model serves: the deploy fails saying why; after a promotion it serves 200s."""
    registry = endpoint["tmp"] / "empty-registry"
    cfg = with_registry(endpoint, registry, load_grace_s=0.5)
    with pytest.raises(RuntimeError, match="Deploying application empty failed"):
        serve.run(build_from_config(cfg), name="empty", route_prefix="/empty")
    try:
        app = serve.status().applications["empty"]
        deployment = app.deployments[DEPLOYMENT_NAME]
        assert app.status == "DEPLOY_FAILED"
        assert "no model to serve after 0.5s (serve.load_grace_s)" in deployment.message, deployment.message
        assert f"no promoted model in {model_dir(registry, 'mlp')}" in deployment.message, deployment.message
        assert deployment.replica_states.get("RUNNING", 0) == 0, deployment.replica_states
        reason = failure_reason("empty")
        assert reason.startswith(f"{DEPLOYMENT_NAME}: RuntimeError: no model to serve") and str(registry) in reason
        with httpx.Client(base_url=endpoint["url"] + "/empty", timeout=5) as http:
            liveness = get_or_none(http, "/healthz")  # a modelless replica would answer 200 here
            assert liveness is None or liveness.status_code != 200, liveness.text

        promote(registry, "mlp", endpoint["first"], {"test_accuracy": 0.7}, make_provenance(cfg, "v1"))
        serve.run(build_from_config(cfg), name="empty", route_prefix="/empty")  # a new code version: restarts
        with httpx.Client(base_url=endpoint["url"] + "/empty", timeout=30) as http:
            resp = post_json(http, endpoint["x"][0].tolist())
            assert resp.status_code == 200, resp.text
            assert resp.json()["version"] == "v1"
            assert_matches_offline(endpoint, [resp.json()], endpoint["x"][:1])
    finally:
        serve.delete("empty")


def test_replica_that_loses_its_source_keeps_serving_and_says_why(endpoint):
    """``latest`` pointed at a missing version: the loaded model keeps answering, the replica stays healthy
    (same replica over several fast health checks) and /readyz, /model and /admin/reload name the problem."""
    registry = endpoint["tmp"] / "lost-registry"
    cfg = with_registry(endpoint, registry, health_check_period_s=0.5, health_check_timeout_s=2)
    promote(registry, "mlp", endpoint["first"], {"test_accuracy": 0.7}, make_provenance(cfg, "v1"))
    serve.run(build_from_config(cfg), name="lost", route_prefix="/lost")
    try:
        with httpx.Client(base_url=endpoint["url"] + "/lost", timeout=10) as http:
            replica = http.get("/readyz").json()["replica"]
            point_latest_at(registry, "v99")
            deadline = time.time() + 10
            while time.time() < deadline and http.get("/readyz").json()["problem"] is None:
                time.sleep(0.2)
            time.sleep(3.0)  # 6 health periods: a replica failing its checks (3 in a row) would be gone by now
            ready = http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert (ready.json()["ready"], ready.json()["version"], ready.json()["replica"]) == (True, "v1", replica)
            problem = ready.json()["problem"]
            assert problem and f"in registry {registry}" in problem, problem
            assert http.get("/model").json()["problem"] == problem
            reload = http.post("/admin/reload")
            assert reload.status_code == 200 and reload.json()["problem"] == problem, reload.text
            resp = post_json(http, endpoint["x"][0].tolist())
            assert resp.status_code == 200 and resp.json()["version"] == "v1", resp.text
            assert_matches_offline(endpoint, [resp.json()], endpoint["x"][:1])
            assert serve.status().applications["lost"].status == "RUNNING"

            point_latest_at(registry, "v1")  # the source is back: the problem clears, nothing reloads
            deadline = time.time() + 10
            while time.time() < deadline and http.get("/readyz").json()["problem"] is not None:
                time.sleep(0.2)
            assert http.get("/readyz").json()["problem"] is None
    finally:
        serve.delete("lost")
