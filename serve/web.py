"""HTTP glue shared by the Serve deployment and the plain-FastAPI peer: request -> input, result -> response.

Starlette-level only (no Ray): it reads the body under a size cap, dispatches
on the content type (JSON, multipart upload, raw PNG/JPEG), and renders
answers and errors as JSON. Keeping it here means the benchmark compares two
servers that do exactly the same per-request work, and the error contract
(4xx + ``{"error": ..., "status": ...}``) lives in one place.
"""

from __future__ import annotations

import json
from typing import Any, AsyncGenerator

import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response

from mlp.config import ServeConfig
from serve.images import image_to_input
from serve.inputs import (IMAGE_TYPES, JSON_TYPES, MULTIPART_TYPE, InputError, Parsed, check_body,
                          check_length, media_type, parse_json)

UPLOAD_FIELDS = ("file", "image")

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
    """The single image file of a multipart form (field ``file`` or ``image``)."""
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=4).parse()
    except MultiPartException as err:
        raise InputError(400, f"malformed multipart form: {err.message}") from None
    try:
        for name in UPLOAD_FIELDS:
            item = form.get(name)
            if isinstance(item, UploadFile):
                return await item.read()
        raise InputError(422, f"multipart form needs an image file in field 'file' (got fields {list(form)})")
    finally:
        await form.close()


async def parse_request(request: Request, cfg: ServeConfig, dataset: str) -> Parsed:
    """Validated float32 [N, 784] from a JSON, multipart or raw-image request."""
    kind = media_type(request.headers.get("content-type"))
    if kind not in JSON_TYPES + IMAGE_TYPES + (MULTIPART_TYPE,):
        raise InputError(415, f"unsupported content type {kind or '(none)'!r}: send application/json, "
                              "multipart/form-data (field 'file') or image/png / image/jpeg")
    body = await read_body(request, cfg.max_body_bytes)
    check_body(body, cfg.max_body_bytes)
    if kind in JSON_TYPES:
        return parse_json(body, cfg.max_instances)
    data = await _upload_bytes(request, body) if kind == MULTIPART_TYPE else body
    invert = request.query_params.get("invert", "auto").lower()
    return Parsed(image_to_input(data, dataset, cfg.max_image_pixels, invert)[None, :], single=True)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialised directly: FastAPI's ``jsonable_encoder`` walks every float and costs more than the model."""
    return Response(_dumps(content), status_code=status, media_type="application/json", headers=headers)


def error_response(err: InputError) -> Response:
    return json_response(err.to_dict(), status=err.status)


def prediction_body(predictions: list[dict[str, Any]], single: bool, version: str) -> dict[str, Any]:
    """``{"version", **prediction}`` for one instance, ``{"version", "predictions": [...]}`` for a batch."""
    if single:
        return {"version": version, **predictions[0]}
    return {"version": version, "predictions": predictions}


def split_rows(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Cut a stacked batch back into the per-request pieces, in order."""
    return np.split(x, np.cumsum(sizes)[:-1]) if len(sizes) > 1 else [x]


PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [
                {"type": "array", "description": "one instance: 784 numbers in [0, 1], or 28 rows of 28",
                 "items": {}},
                {"type": "object", "properties": {"instance": {"type": "array", "items": {}}}},
                {"type": "object", "properties": {"instances": {
                    "type": "array", "items": {"type": "array", "items": {}},
                    "description": "a batch of instances"}}},
            ]}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary", "description": "PNG or JPEG"}}}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [{"name": "invert", "in": "query", "required": False,
                    "schema": {"type": "string", "enum": ["auto", "true", "false"], "default": "auto"},
                    "description": "images only: invert dark-on-light images (auto: when the border is light)"}],
}
