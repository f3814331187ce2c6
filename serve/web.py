"""HTTP glue shared by the Serve deployment and the plain-FastAPI peer: request -> input, result -> response.

Starlette-level only (no Ray): it reads the body under a size cap, dispatches
on the content type (JSON, multipart upload, raw PNG/JPEG; a table model's
rows come as JSON only), and renders
answers and errors as JSON. Keeping it here means the benchmark compares two
servers that do exactly the same per-request work, and the error contract
(4xx + ``{"error": ..., "status": ...}``) lives in one place.

Images are decoded in a ``DecodePool`` (a few threads per process), never on
the event loop: a large image keeps Pillow and numpy busy long enough to stall
every other request of the replica, ``/healthz`` included (docs/serve.md). JSON
stays on the loop: one instance parses quickly, and in threads it would hold
the GIL anyway.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from typing import Any, AsyncGenerator, Callable, TypeVar

import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response

from mlp.config import ServeConfig
from serve.images import INVERT_CHOICES, image_to_input, precheck
from serve.inputs import (IMAGE_TYPES, JSON_TYPES, MULTIPART_TYPE, REQUEST_ID_PATTERN, InputError, Parsed, TableForm,
                          check_body, check_length, feedback_labels, media_type, parse_json, parse_rows)

UPLOAD_FIELD = "file"
T = TypeVar("T")

try:
    import orjson

    _dumps = orjson.dumps
except ImportError:  # optional speed-up
    _dumps = json.dumps


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing it (413) as soon as it passes ``limit`` bytes."""
    check_length(request.headers.get("content-length"), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, f"body of {size}+ bytes is above the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload_bytes(request: Request, body: bytes) -> bytes:
    """The single image file of a multipart form (field ``file``, nothing else: the schema says so)."""
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=4).parse()
    except MultiPartException as err:
        raise InputError(400, f"malformed multipart form: {err.message}") from None
    try:
        items = form.multi_items()
        if len(items) != 1 or items[0][0] != UPLOAD_FIELD or not isinstance(items[0][1], UploadFile):
            raise InputError(422, f"multipart form needs one image file in field '{UPLOAD_FIELD}' and nothing else "
                                  f"(got {', '.join(_describe(name, item) for name, item in items) or 'no fields'})")
        return await items[0][1].read()
    finally:
        await form.close()


class DecodePool:
    """Image decoding off the event loop, bounded: ``threads`` decode at once, ``queue`` more wait, and any
    request beyond that is refused at once with 503 and ``Retry-After: 1`` instead of queueing without end.

    A wait is bounded too: each decode is capped by ``serve.max_image_pixels``, so a request waits at most
    about ``queue / threads + 1`` decodes (docs/serve.md has their time at the default cap).
    """

    def __init__(self, threads: int, queue: int) -> None:
        self.threads, self.queue = threads, queue
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="image-decode")
        self._slots = threading.BoundedSemaphore(threads + queue)  # released by whichever thread finishes

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._slots.acquire(blocking=False):
            raise InputError(503, f"busy decoding images: {self.threads} running and {self.queue} waiting on this "
                                  "replica (serve.decode_threads, serve.decode_queue); retry in a moment",
                             headers={"Retry-After": "1"})
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        # Released when the work is done, not when the request gives up: a decode that runs on after its
        # client left still holds its slot, so the bound counts real work.
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.wrap_future(future)


_pools: dict[tuple[int, int], DecodePool] = {}


def decode_pool(cfg: ServeConfig) -> DecodePool:
    """The process's pool for these settings (one replica or one peer worker per process)."""
    key = (cfg.decode_threads, cfg.decode_queue)
    if key not in _pools:
        _pools[key] = DecodePool(*key)
    return _pools[key]


def invert_choice(request: Request) -> str:
    """The ``invert`` query parameter, checked on every request (JSON too), so a typo is never ignored."""
    if not request.scope.get("query_string"):
        return "auto"
    invert = request.query_params.get("invert", "auto")
    if invert not in INVERT_CHOICES:
        raise InputError(422, f"invert must be one of {', '.join(INVERT_CHOICES)}, got {invert!r}")
    return invert


def _describe(name: str, item: Any) -> str:
    return f"file {name!r}" if isinstance(item, UploadFile) else f"text field {name!r}"


async def parse_request(request: Request, cfg: ServeConfig, dataset: str, table: TableForm | None = None) -> Parsed:
    """Validated float32 [N, 784] from a JSON, multipart or raw-image request; for a table model (``table``:
    ``Predictor.table_form``) raw rows by column name from JSON only (``serve.inputs.parse_rows``)."""
    kind = media_type(request.headers.get("content-type"))
    if table is not None:
        return await _parse_table_request(request, cfg, kind, table)
    if kind not in JSON_TYPES + IMAGE_TYPES + (MULTIPART_TYPE,):
        raise InputError(415, f"unsupported content type {kind or '(none)'!r}: send application/json, "
                              "multipart/form-data (field 'file') or image/png / image/jpeg")
    invert = invert_choice(request)
    body = await read_body(request, cfg.max_body_bytes)
    check_body(body, cfg.max_body_bytes)
    if kind in JSON_TYPES:
        return parse_json(body, cfg.max_instances)
    data = await _upload_bytes(request, body) if kind == MULTIPART_TYPE else body
    precheck(data, cfg.max_image_pixels)  # an empty or oversized PNG is refused without waiting for a thread
    x = await decode_pool(cfg).run(image_to_input, data, dataset, cfg.max_image_pixels, invert)
    return Parsed(x[None, :], single=True)


async def _parse_table_request(request: Request, cfg: ServeConfig, kind: str, table: TableForm) -> Parsed:
    """A table model's request: JSON rows by column name; anything else is refused before the body is read."""
    if kind not in JSON_TYPES:
        what = "an image or a form" if kind in IMAGE_TYPES + (MULTIPART_TYPE,) else repr(kind or "(none)")
        raise InputError(415, f"unsupported content type {kind or '(none)'!r}: this model takes table rows by "
                              f"column name, not {what}: send application/json {table.expected}")
    body = await read_body(request, cfg.max_body_bytes)
    check_body(body, cfg.max_body_bytes)
    return parse_rows(body, table, cfg.max_instances)


async def parse_feedback(request: Request, cfg: ServeConfig, class_names: Sequence[str]) -> tuple[str, list[int]]:
    """``POST /feedback``'s (request id, label indices): JSON only, under the body limit (``feedback_labels``)."""
    kind = media_type(request.headers.get("content-type"))
    if kind not in JSON_TYPES:
        raise InputError(415, f"unsupported content type {kind or '(none)'!r}: send application/json "
                              '{"request_id": ..., "label": ...}')
    body = await read_body(request, cfg.max_body_bytes)
    check_body(body, cfg.max_body_bytes)
    return feedback_labels(body, class_names, cfg.max_instances)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialised directly: FastAPI's ``jsonable_encoder`` walks every float and costs more than the model."""
    return Response(_dumps(content), status_code=status, media_type="application/json", headers=headers)


def error_response(err: InputError) -> Response:
    return json_response(err.to_dict(), status=err.status, headers=err.headers)


def prediction_body(predictions: list[dict[str, Any]], single: bool, version: str,
                    request_id: str | None = None) -> dict[str, Any]:
    """``{"version", **prediction}`` for one instance, ``{"version", "predictions": [...]}`` for a batch; with
    ``request_id`` (the id ``POST /feedback`` takes) first."""
    head = {"request_id": request_id, "version": version} if request_id else {"version": version}
    if single:
        return {**head, **predictions[0]}
    return {**head, "predictions": predictions}


def split_rows(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Cut a stacked batch back into the per-request pieces, in order."""
    return np.split(x, np.cumsum(sizes)[:-1]) if len(sizes) > 1 else [x]


# OpenAPI: what /predict and the other routes accept and answer, exactly, for one config (limits included),
# checked in CI by schemathesis with every check. Built once per replica, never on the request path.
PIXEL = {"type": "number", "minimum": 0, "maximum": 1}
BINARY = {"type": "string", "format": "binary"}
IMAGE_TYPES_DOC = "image/png, image/jpeg"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _obj(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {**required, **optional}, "required": list(required),
            "additionalProperties": False}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _batch_of(name: str, cfg: ServeConfig) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name), "minItems": 1, "maxItems": cfg.max_instances}


def pixel_requests(cfg: ServeConfig) -> dict[str, Any]:
    """An image model's request bodies: 784 pixels (flat or 28x28), wrapped or not, a batch, an upload."""
    return {
        "FlatInstance": {"type": "array", "items": PIXEL, "minItems": 784, "maxItems": 784,
                         "description": "784 pixel values in [0, 1] (pixel / 255), row by row"},
        "NestedInstance": {"type": "array", "minItems": 28, "maxItems": 28, "description": "28 rows of 28 values",
                           "items": {"type": "array", "items": PIXEL, "minItems": 28, "maxItems": 28}},
        "Instance": {"oneOf": [_ref("FlatInstance"), _ref("NestedInstance")]},
        "WrappedInstance": _obj({"instance": _ref("Instance")}),
        "Batch": {**_obj({"instances": {"oneOf": [_batch_of("FlatInstance", cfg), _batch_of("NestedInstance", cfg)]}}),
                  "description": f"1 to {cfg.max_instances} instances, all flat or all nested"},
        "PredictRequest": {"oneOf": [_ref("Instance"), _ref("WrappedInstance"), _ref("Batch")]},
        "ImageUpload": {**_obj({UPLOAD_FIELD: BINARY}), "description": f"one PNG or JPEG in field '{UPLOAD_FIELD}'"},
    }


def table_requests(cfg: ServeConfig, table: TableForm) -> dict[str, Any]:
    """A table model's request bodies: one row or a batch of rows, each every feature column by name, with
    the value range ``serve.inputs.table_rows`` accepts (raw values: the server standardises them)."""
    columns = {name: {"type": ["number", "boolean"], "minimum": float(low), "maximum": float(high)}
               for name, low, high in zip(table.features, table.low, table.high)}
    return {
        "Row": {**_obj(columns), "description": f"one row: the model's {len(table.features)} feature columns by "
                                                "name, raw values as in the training table (true/false read as 1/0)"},
        "WrappedRow": _obj({"instance": _ref("Row")}),
        "Batch": {**_obj({"instances": _batch_of("Row", cfg)}), "description": f"1 to {cfg.max_instances} rows"},
        "PredictRequest": {"oneOf": [_ref("WrappedRow"), _ref("Batch")]},
    }


def prediction_schemas(classes: Sequence[str], label_names: Sequence[str] = (), max_instances: int = 1) -> dict[str, Any]:
    """One answer per instance: the label, its class name and every probability. A table model's ``classes``
    are named (an enum); an image model's document keeps its ten classes unnamed."""
    n = len(classes) or 10
    class_name: dict[str, Any] = {"type": "string", "enum": list(classes)} if classes else {"type": "string"}
    prediction = {"label": {"type": "integer", "minimum": 0, "maximum": n - 1}, "class_name": class_name,
                  "probabilities": {"type": "array", "items": PIXEL, "minItems": n, "maxItems": n}}
    request_id = {"type": "string", "pattern": REQUEST_ID_PATTERN,
                  "description": "this answer's id: POST /feedback takes it with the true label(s)"}
    # feedback names a class by index or by name: the served model's names (``label_names``) when it has one
    n_labels = len(label_names) or n
    by_name = {"type": "string", "enum": list(label_names)} if label_names else {"type": "string"}
    label: dict[str, Any] = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": n_labels - 1}, by_name]}
    return {
        "Prediction": _obj(prediction),
        "SinglePrediction": _obj({"request_id": request_id, "version": {"type": "string"}, **prediction}),
        "BatchPrediction": _obj({"request_id": request_id, "version": {"type": "string"},
                                 "predictions": {"type": "array", "items": _ref("Prediction"), "minItems": 1}}),
        "Feedback": {"oneOf": [_obj({"request_id": request_id, "label": label}),
                               _obj({"request_id": request_id,
                                     "labels": {"type": "array", "items": label, "minItems": 1,
                                                "maxItems": max_instances}})],
                     "description": "the true label (a class index or name) of each instance the request sent"},
        "FeedbackResult": {"type": "object", "required": ["request_id", "version", "labelled", "correct"],
                           "properties": {"request_id": {"type": "string"}, "version": {"type": "string"},
                                          "labelled": {"type": "integer"}, "correct": {"type": "integer"},
                                          "shadow": {"type": "object"}, "decision": {"type": "object"}}},
    }


def openapi_schemas(cfg: ServeConfig, table: TableForm | None = None, classes: Sequence[str] = (),
                    label_names: Sequence[str] = ()) -> dict[str, Any]:
    """Request and response bodies (``components.schemas``); the batch size limit comes from ``cfg``; a table
    model's (``table``) name its feature columns, and its answers its ``classes``."""
    nullable_str = {"type": ["string", "null"]}
    requests = table_requests(cfg, table) if table is not None else pixel_requests(cfg)
    return {
        **requests,
        **prediction_schemas(classes if table is not None else (), label_names, cfg.max_instances),
        "Error": {**_obj({"error": {"type": "string"}, "status": {"type": "integer", "minimum": 400}}),
                  "description": "every refusal: a message naming the problem, and the HTTP status"},
        "Health": _obj({"status": {"const": "ok"}}),
        "Ready": _obj({"ready": {"const": True}, "version": {"type": "string"}, "problem": nullable_str,
                       "replica": {"type": "string"}}),
        "NotReady": _obj({"ready": {"const": False}, "error": {"type": "string"}, "replica": {"type": "string"}}),
        "ModelInfo": _obj({key: {"type": "string"} for key in ("version", "path", "dataset", "replica")}
                          | {"class_names": {"type": "array", "items": {"type": "string"}},
                             "model": {"type": "object"}, "metrics": {"type": "object"},
                             "provenance": {"type": "object"}, "loaded_at": {"type": "number"},
                             "source": {"type": "object"}, "problem": nullable_str}),
        "Reload": _obj({"version": {"type": "string"}, "changed": {"type": "boolean"}, "problem": nullable_str}),
        "RolloutStatus": _obj({"rollout": {"type": ["object", "null"]}, "versions": {"type": "object"},
                               "agreement": {"type": ["object", "null"]}, "last_decision": {"type": ["object", "null"]}}),
    }


# Ray Serve itself answers 503 in plain text when a replica's queue is full (any route).
BACKPRESSURE = {"text/plain": {"schema": {"type": "string"}}}


ANSWERS = {"description": "one prediction (an instance or an image) or one per instance of a batch",
           "content": {"application/json": {"schema": {"oneOf": [_ref("SinglePrediction"),
                                                                 _ref("BatchPrediction")]}}}}


def _timeout(cfg: ServeConfig) -> dict[str, Any]:
    return _error(f"prediction slower than {cfg.request_timeout_s}s (serve.request_timeout_s)")


def _no_model() -> dict[str, Any]:
    no_model = _error("no model loaded yet, or Ray Serve's queue full (text/plain)")
    no_model["content"].update(BACKPRESSURE)
    return no_model


def _pixel_predict(cfg: ServeConfig) -> dict[str, Any]:
    """``POST /predict`` of an image model: JSON pixels, a multipart upload or raw PNG/JPEG bytes."""
    busy = _error("no model loaded yet (only on a replica's own port while it starts: Serve routes nothing "
                  "there), image decoders busy (Retry-After: 1), or Ray Serve's queue full (text/plain)")
    busy["content"].update(BACKPRESSURE)
    busy["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds, when busy"}}
    return {
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("PredictRequest")},
            "multipart/form-data": {"schema": _ref("ImageUpload"),
                                    "encoding": {UPLOAD_FIELD: {"contentType": IMAGE_TYPES_DOC}}},
            "image/png": {"schema": BINARY},
            "image/jpeg": {"schema": BINARY},
        }},
        "parameters": [{"name": "invert", "in": "query", "required": False,
                        "schema": {"type": "string", "enum": list(INVERT_CHOICES), "default": "auto"},
                        "description": "images: invert dark-on-light images (auto: when the border is light); "
                                       "checked on every request"}],
        "responses": {
            "200": ANSWERS,
            "400": _error("malformed JSON or multipart form, empty body or file, Content-Length not a number"),
            "413": _error(f"body above {cfg.max_body_bytes} bytes, batch above {cfg.max_instances} instances, "
                          f"image above {cfg.max_image_pixels} pixels"),
            "415": _error("content type other than application/json, multipart/form-data, image/png, image/jpeg"),
            "422": _error("not a valid instance or image: wrong length or shape, non-numeric, NaN/Inf, outside "
                          "[0, 1], nested too deep, undecodable or zero-size image, bad 'invert'"),
            "503": busy,
            "504": _timeout(cfg),
        },
    }


def _table_predict(cfg: ServeConfig) -> dict[str, Any]:
    """``POST /predict`` of a table model: JSON rows by column name, nothing else (no images, no ``invert``)."""
    return {
        "summary": "Classify one row or a batch of rows, by column name",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PredictRequest")}}},
        "responses": {
            "200": {**ANSWERS, "description": "one prediction (an instance) or one per row of a batch"},
            "400": _error("malformed JSON, empty body, Content-Length not a number"),
            "413": _error(f"body above {cfg.max_body_bytes} bytes, batch above {cfg.max_instances} rows"),
            "415": _error("content type other than application/json, images and forms included: this model "
                          "takes table rows by column name"),
            "422": _error("not a valid row: a missing or unknown column, a value that is not a number or boolean, "
                          "NaN/Inf, a value outside its column's range, nested too deep"),
            "503": _no_model(),
            "504": _timeout(cfg),
        },
    }


# With serve.api_keys_file: either scheme carries the same key (serve.keys.presented_key).
API_KEY_SCHEMES = {
    "apiKeyBearer": {"type": "http", "scheme": "bearer",
                     "description": "an API key as 'Authorization: Bearer <key>' (serve.api_keys_file)"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "the same API key as 'X-API-Key: <key>'"},
}


def _with_api_key(predict: dict[str, Any]) -> dict[str, Any]:
    """``POST /predict`` when ``serve.api_keys_file`` is set: either key scheme, and the 401 without a valid key."""
    unauthorized = _error("no API key, or not one of this endpoint's keys (checked before the body is read)")
    unauthorized["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
    responses = dict(sorted({**predict["responses"], "401": unauthorized}.items()))
    return {**predict, "security": [{name: []} for name in API_KEY_SCHEMES], "responses": responses}


def _operations(cfg: ServeConfig, admin_mode: str, table: bool = False) -> dict[tuple[str, str], dict[str, Any]]:
    """requestBody / parameters / responses of each route, as the server really behaves with ``cfg`` (and a
    table model's ``/predict`` when ``table``)."""
    predict = _table_predict(cfg) if table else _pixel_predict(cfg)
    if cfg.api_keys_file:
        predict = _with_api_key(predict)
    no_model = _no_model()
    not_ready = _json("NotReady", "no model loaded yet, or Ray Serve's queue full (text/plain)")
    not_ready["content"].update(BACKPRESSURE)
    reload: dict[str, Any] = {"responses": {"200": _json("Reload", "checked the source; changed: loaded a "
                                                                      "new version"), "503": no_model}}
    if admin_mode == "token":
        reload["security"] = [{"adminToken": []}]
        reload["responses"]["401"] = _error("missing or wrong bearer token")
        reload["responses"]["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
    elif admin_mode == "off":
        reload["responses"] = {"403": _error("the route is off: the endpoint listens beyond loopback and no admin "
                                             "token is configured (the message says how to enable it)")}
    feedback: dict[str, Any] = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Feedback")}}},
        "responses": {
            "200": _json("FeedbackResult", "scored against the answer the request got; 'decision' when the "
                                           "rollout gate decided on it"),
            "400": _error("malformed JSON, empty body, Content-Length not a number"),
            "404": _error("no answered request with that id (unknown, or too old)"),
            "409": _error("that request already has feedback, or had another number of instances than the labels"),
            "413": _error(f"body above {cfg.max_body_bytes} bytes"),
            "415": _error("content type other than application/json"),
            "422": _error("not a feedback object, a request id of the wrong form, or an unknown class"),
            "503": no_model,
        },
    }
    if cfg.api_keys_file:
        feedback = _with_api_key(feedback)
    return {
        ("/predict", "post"): predict,
        ("/feedback", "post"): feedback,
        ("/rollout", "get"): {"responses": {"200": _json("RolloutStatus", "the running rollout (null when none), "
                                                                            "live figures per version, last decision"),
                                            "503": no_model}},
        ("/healthz", "get"): {"responses": {"200": _json("Health", "the replica runs")}},
        ("/readyz", "get"): {"responses": {"200": _json("Ready", "a model is loaded"), "503": not_ready}},
        ("/model", "get"): {"responses": {"200": _json("ModelInfo", "the model being served"), "503": no_model}},
        ("/admin/reload", "post"): reload,
    }


def openapi_document(base: dict[str, Any], cfg: ServeConfig, admin_mode: str, table: TableForm | None = None,
                     classes: Sequence[str] = (), label_names: Sequence[str] = ()) -> dict[str, Any]:
    """FastAPI's document for the routes (``base``: paths, summaries, operation ids) with every request and
    response described for this config (with ``serve.api_keys_file``, ``/predict``'s key schemes and 401);
    ``admin_mode`` is ``serve.options.AdminAccess.mode``. For a table
    model (``table``: ``Predictor.table_form``) ``/predict`` takes its feature columns by name and answers
    with its ``classes``; ``label_names`` (the served model's class names) are what ``/feedback`` accepts."""
    doc = json.loads(json.dumps(base))  # a deep copy; FastAPI caches ``base``
    for (path, method), operation in _operations(cfg, admin_mode, table is not None).items():
        doc["paths"].setdefault(path, {}).setdefault(method, {}).update(operation)
    if table is not None:
        doc["info"]["description"] = (f"Classifier of table rows ({len(table.features)} feature columns, "
                                      f"{len(classes)} classes) served by Ray Serve. POST JSON rows by column "
                                      "name to /predict.")
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(openapi_schemas(cfg, table, classes, label_names))
    schemes: dict[str, Any] = {}
    if admin_mode == "token":
        schemes["adminToken"] = {"type": "http", "scheme": "bearer",
                                 "description": "serve.admin_token_file or $MLP_ADMIN_TOKEN"}
    if cfg.api_keys_file:
        schemes.update(API_KEY_SCHEMES)
    if schemes:
        components["securitySchemes"] = schemes
    return doc
