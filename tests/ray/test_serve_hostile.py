"""Hostile input, without a server: the JSON and image decoders, the decode pool, the admin rule, the schema.

Ray-free (they sit in tests/ray beside the live tests of the same code): every
case a client can send must end as an ``InputError`` with a 4xx (or a 503 that
says to retry), never as another exception, a crash or unbounded work.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import time

import jsonschema
import numpy as np
import pytest
from PIL import Image

from mlp.config import ConfigError, ServeConfig
from serve.images import image_to_input
from serve.inputs import MAX_DEPTH, InputError, check_structure, parse_json
from serve.options import ADMIN_TOKEN_ENV, UNKNOWN_HOST, AdminAccess, admin_access, is_loopback
from serve.web import DecodePool, openapi_document

ROW = [0.5] * 784
TOKEN = "s3cret-token-0123456789abcdef"


def refused(body: bytes, max_instances: int = 4) -> InputError:
    with pytest.raises(InputError) as err:
        parse_json(body, max_instances)
    return err.value


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000, 300_000])
def test_deep_nesting_is_refused_by_name_before_any_decoder(depth):
    # 300,000 levels overflowed orjson's C stack and killed the replica (a segfault, not an exception).
    err = refused(b"[" * depth + b"]" * depth)
    assert (err.status, err.message.split(":")[0]) == (422, "nesting too deep")
    assert f"nest {depth} levels" in err.message


@pytest.mark.parametrize("body", [
    b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'["' + b"]" * 5000 + b'", ' + b"[" * 5000 + b"]" * 5000 + b"]",  # closers hidden in a string
    b'["\\"' + b"]" * 5000 + b'", ' + b"[" * 5000 + b"]" * 5000 + b"]",  # ... after an escaped quote
    b'["\\\\", ' + b"[" * 5000 + b"]" * 5000 + b"]",  # an escaped backslash ends its string
    b'[NaN, ' + b"[" * 5000 + b"]" * 5000 + b"]",  # what orjson refuses goes to the standard library
    b'["' + b"[" * 5000,  # an unterminated string: the brackets count, better too many than too few
])
def test_nesting_cannot_hide_from_the_depth_check(body):
    assert refused(body).message.startswith("nesting too deep")


def test_brackets_inside_strings_are_text():
    check_structure(b'{"' + b"[" * 100 + b'": 1}', 4)  # deep-looking, but one level: refused later by key
    assert refused(b'{"' + b"[" * 100 + b'": 1}').message.startswith("expected {")


def test_valid_bodies_pass_the_structure_check_at_the_batch_limit():
    nested = np.full((28, 28), 0.5).tolist()
    for instances in ([ROW] * 4, [nested] * 4):
        assert parse_json(json.dumps({"instances": instances}).encode(), 4).x.shape == (4, 784)
    err = refused(json.dumps({"instances": [nested] * 5}).encode())  # a little too big: told its size
    assert (err.status, err.message) == (413, "batch of 5 instances is above the limit of 4")


@pytest.mark.parametrize("body", [b"[" + b"[]," * 100_000 + b"[]]", b"[" + b"0," * 100_000 + b"0]"])
def test_bodies_with_more_arrays_or_numbers_than_any_batch_are_refused_unparsed(body):
    err = refused(body)
    assert (err.status, err.message.split(":")[0]) == (413, "too many values")


@pytest.mark.parametrize("body, status, words", [
    (b"[" + b"0.5," * 783 + b"1" * 5000 + b"]", 422, "NaN or infinite value in instance 0"),  # was a 500
    (b"[" + b"0.5," * 783 + b"1e400]", 422, "NaN or infinite value in instance 0"),
    (json.dumps(ROW[:-1] + [True]).encode("utf-16"), 400, "not UTF-8"),  # would hide `true` from the scan
    (b"\xef\xbb\xbf" + json.dumps(ROW).encode(), 400, "malformed JSON"),
    (b'["\xe9"]', 400, "not UTF-8"),
    (b'["\\ud800"]', 422, "non-numeric values"),
    (b"[0.5] \x00", 400, "malformed JSON"),
    (b'"abc"', 422, "expected a JSON list or object"),
    (b"[" + b"0.5," * 783 + b"-0.0001]", 422, "outside [0, 1]"),
    (b'{"instance": null, "instances": []}', 422, "expected {"),
])
def test_decoder_edge_cases_get_a_named_4xx(body, status, words):
    err = refused(body)
    assert err.status == status and words in err.message, err.message


def _image_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    seeds = []
    for fmt, modes in (("PNG", ("L", "RGB", "RGBA", "P", "1", "LA")), ("JPEG", ("L", "RGB", "CMYK"))):
        for mode in modes:
            out = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).convert(mode).save(out, format=fmt)
            seeds.append(out.getvalue())
    return seeds


def test_mutated_images_end_as_input_errors_only():
    seeds, rnd, statuses = _image_seeds(), random.Random(0), []
    for _ in range(1500):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 8)):
            at = rnd.randrange(len(data))
            if rnd.random() < 0.6:
                data[at] = rnd.randrange(256)
            else:
                del data[at:at + rnd.randint(1, 50)]
        try:
            image_to_input(bytes(data), "mnist", 1 << 20)
            statuses.append(200)
        except InputError as err:  # anything else fails the test
            statuses.append(err.status)
    assert set(statuses) <= {200, 400, 413, 422} and statuses.count(422) > 100, sorted(set(statuses))


def test_png_header_claiming_too_many_pixels_is_refused_before_decoding():
    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR: 100000 x 100000, CRC now wrong: never looked at
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        image_to_input(bytes(data), "mnist", 1 << 20)
    assert err.value.status == 413 and "100000x100000" in err.value.message
    assert time.perf_counter() - start < 0.1


def test_decode_pool_is_bounded_and_counts_work_until_it_ends():
    release = threading.Event()

    async def scenario() -> tuple[list, str]:
        pool = DecodePool(threads=1, queue=1)
        running = asyncio.ensure_future(pool.run(release.wait, 5))
        waiting = asyncio.ensure_future(pool.run(lambda: "second"))
        await asyncio.sleep(0.05)
        with pytest.raises(InputError) as busy:  # 1 running + 1 waiting: the third is refused at once
            await pool.run(lambda: "third")
        assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "1"}
        running.cancel()  # the client left; its decode still runs and still holds its slot
        await asyncio.sleep(0.05)
        with pytest.raises(InputError):
            await pool.run(lambda: "fourth")
        release.set()
        await asyncio.sleep(0.2)
        return [await waiting], await pool.run(lambda: "after")

    assert asyncio.run(scenario()) == (["second"], "after")


def test_decode_pool_keeps_the_event_loop_free():
    async def scenario() -> float:
        pool = DecodePool(threads=1, queue=4)
        worst, last = 0.0, time.perf_counter()
        work = asyncio.ensure_future(pool.run(time.sleep, 0.5))  # 0.5 s of "decoding"
        while not work.done():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now
        return worst

    assert asyncio.run(scenario()) < 0.1


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("::", False), ("10.0.0.5", False), ("example.com", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_admin_access_open_on_loopback_only(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert admin_access(ServeConfig(host="127.0.0.1"), "127.0.0.1", {}).mode == "open"
    assert admin_access(ServeConfig(host="127.0.0.1", admin_token_file=str(token_file)), None, {}).mode == "open"
    # A YAML whose http_options.host exposes the endpoint while args.serve.host says loopback:
    assert admin_access(ServeConfig(host="127.0.0.1"), "0.0.0.0", {}).mode == "off"
    assert admin_access(ServeConfig(host="127.0.0.1"), UNKNOWN_HOST, {}).mode == "off"  # fails closed
    exposed = ServeConfig(host="0.0.0.0")
    assert admin_access(exposed, None, {}).mode == "off"
    assert admin_access(exposed, None, {ADMIN_TOKEN_ENV: TOKEN}).mode == "token"
    assert admin_access(ServeConfig(host="0.0.0.0", admin_token_file=str(token_file)), None, {}).mode == "token"
    short = admin_access(exposed, None, {ADMIN_TOKEN_ENV: "short"})
    assert short.mode == "off" and "shorter than 16" in short.reason
    missing = admin_access(ServeConfig(host="0.0.0.0", admin_token_file=str(tmp_path / "nope")), None, {})
    assert missing.mode == "off" and "cannot be read" in missing.reason and str(tmp_path) not in missing.reason


def test_admin_check_wants_the_exact_token(tmp_path):
    access = admin_access(ServeConfig(host="0.0.0.0"), None, {ADMIN_TOKEN_ENV: TOKEN})
    access.check(f"Bearer {TOKEN}")
    access.check(f"bearer  {TOKEN} ")
    for header in (None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                   f"Bearer {TOKEN[:-1]}X", TOKEN):
        with pytest.raises(InputError) as err:
            access.check(header)
        assert err.value.status == 401 and "WWW-Authenticate" in err.value.headers, header
    with pytest.raises(InputError) as off:
        AdminAccess("off", "the endpoint listens on 0.0.0.0").check(f"Bearer {TOKEN}")
    assert off.value.status == 403
    assert "serve.admin_token_file" in off.value.message and ADMIN_TOKEN_ENV in off.value.message


def test_config_refuses_bad_limits():
    with pytest.raises(ConfigError, match="serve.decode_threads"):
        ServeConfig(decode_threads=0)
    with pytest.raises(ConfigError, match="serve.max_image_pixels"):
        ServeConfig(max_image_pixels=100_000 * 100_000)
    assert ServeConfig().max_image_pixels == 1024 * 1024


@pytest.fixture(scope="module")
def predict_schema():
    base = {"openapi": "3.1.0", "info": {"title": "t", "version": "0"},
            "paths": {path: {method: {}} for path, method in (("/predict", "post"), ("/healthz", "get"),
                                                               ("/readyz", "get"), ("/model", "get"),
                                                               ("/admin/reload", "post"))}}
    doc = openapi_document(base, ServeConfig(max_instances=4), "open")
    schema = {"$ref": "#/components/schemas/PredictRequest", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("body", [
    ROW, np.full((28, 28), 0.25).tolist(), {"instance": ROW}, {"instances": [ROW] * 4},
    {"instances": [np.zeros((28, 28)).tolist()]}, [0] * 784, [1] * 784,
    {"instance": None, "instances": []}, {"instances": []}, {"instances": [ROW] * 5}, ROW[:-1], ROW + [0.5],
    ROW[:-1] + [1.5], ROW[:-1] + [True], ROW[:-1] + [None], ROW[:-1] + ["0.5"], {"instances": [ROW, [[0.5] * 28] * 28]},
    {"instance": ROW, "extra": 1}, {}, [], [[0.5] * 28] * 27 + [[0.5] * 27], {"instances": ROW},
])
def test_the_schema_admits_exactly_what_the_server_accepts(predict_schema, body):
    schema_ok = predict_schema.is_valid(body)
    try:
        parse_json(json.dumps(body).encode(), 4)
        server_ok = True
    except InputError:
        server_ok = False
    assert schema_ok == server_ok, (schema_ok, server_ok)
