"""Request bodies -> validated model input, or an ``InputError`` that names the problem.

Ray-free and HTTP-framework-free (bytes in, float32 [N, 784] out), so the Serve
deployment and the plain-FastAPI benchmark peer validate identically and unit
tests need no server. Nothing here unpickles anything: bodies are JSON text
or PNG/JPEG bytes (see ``serve.images``).

Accepted JSON bodies (values are floats in [0, 1], the same scale as training,
``mlp.data.to_model_input``)::

    [784 numbers]                       one instance, flat
    [[28 numbers] x 28]                 one instance, nested
    {"instance": <one instance>}        the same, wrapped
    {"instances": [<instance>, ...]}    a batch (each flat or nested, not mixed)

Parsing is vectorised (one JSON decode, one ``numpy`` conversion, a few
whole-array checks), because per-value Python checks would cost more than the
model itself. ``orjson`` decodes when installed (about 7x faster than the
standard library on 784 floats); the standard library then only runs on bodies
orjson refuses, so NaN/Infinity are still reported by name, not as "malformed".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlp.model import INPUT_SIZE

SIDE = 28
JSON_TYPES = ("application/json",)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg")
MULTIPART_TYPE = "multipart/form-data"
# ``true``/``false``/``null`` would become 1/0/object in numpy; they are never valid
# here (the only keys are fixed), so a substring scan of the raw bytes refuses them cheaply.
_LITERALS = (b"true", b"false", b"null")

try:
    import orjson

    _fast_loads = orjson.loads
except ImportError:  # optional speed-up
    _fast_loads = json.loads


class InputError(ValueError):
    """A client mistake: ``status`` is the 4xx code, ``message`` names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


@dataclass
class Parsed:
    """Validated model input and whether the client sent one instance (not a batch)."""

    x: np.ndarray  # float32 [N, 784]
    single: bool


def media_type(content_type: str | None) -> str:
    """``'application/json; charset=utf-8'`` -> ``'application/json'``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_length(declared: str | None, limit: int) -> None:
    """Refuse a too-large body from its Content-Length before reading it."""
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise InputError(400, f"Content-Length {declared!r} is not a number") from None
    if size > limit:
        raise InputError(413, f"body of {size} bytes is above the limit of {limit} bytes")


def check_body(body: bytes, limit: int) -> None:
    if not body:
        raise InputError(400, "empty body: send JSON instances or an image")
    if len(body) > limit:
        raise InputError(413, f"body of {len(body)}+ bytes is above the limit of {limit} bytes")


def parse_json(body: bytes, max_instances: int) -> Parsed:
    """Decode and validate a JSON body (see the module docstring for the shapes)."""
    try:
        data = _fast_loads(body)
    except ValueError:  # orjson refuses NaN/Infinity; the standard library says what else is wrong
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(400, f"malformed JSON: {err}") from None
    single = True
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"instance", "instances"})
        if unknown or len(data) != 1:
            raise InputError(422, 'expected {"instances": [...]} or {"instance": [...]}, '
                                  f"got keys {sorted(data)}")
        if "instances" in data:
            single = False
            data = data["instances"]
            if not isinstance(data, list):
                raise InputError(422, f"'instances' must be a list, got {type(data).__name__}")
            if not data:
                raise InputError(422, "empty batch: 'instances' has no items")
            if len(data) > max_instances:
                raise InputError(413, f"batch of {len(data)} instances is above the limit of {max_instances}")
        else:
            data = data["instance"]
    elif not isinstance(data, list):
        raise InputError(422, f"expected a JSON list or object, got {type(data).__name__}")
    if any(word in body for word in _LITERALS):
        raise InputError(422, "non-numeric values: true/false/null are not pixel values")
    return Parsed(to_array(data if not single else [data]), single)


def to_array(instances: list[Any]) -> np.ndarray:
    """A list of instances -> float32 [N, 784], refusing ragged, non-numeric, non-finite, out-of-range."""
    if not instances:
        raise InputError(422, "empty instance: no values")
    try:
        arr = np.asarray(instances)
    except ValueError:  # numpy refuses inhomogeneous nesting
        raise InputError(422, "ragged nested arrays: every row must have the same length "
                              "(784 values, or 28 rows of 28)") from None
    if arr.dtype.kind not in "iuf":
        raise InputError(422, f"non-numeric values: expected numbers, found {_kind_name(arr)}")
    if arr.ndim == 1:
        raise InputError(422, "wrong vector length: each instance must be a list of 784 values "
                              "or 28x28, got single numbers")
    if arr.ndim == 2 and arr.shape[1] == INPUT_SIZE:
        pass
    elif arr.ndim == 3 and arr.shape[1:] == (SIDE, SIDE):
        arr = arr.reshape(len(arr), INPUT_SIZE)
    else:
        raise InputError(422, f"wrong vector length: each instance must be 784 values or 28x28, "
                              f"got shape {list(arr.shape[1:])}")
    finite = np.isfinite(arr)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise InputError(422, f"NaN or infinite value in instance {row}")
    low, high = float(arr.min()), float(arr.max())
    if low < 0.0 or high > 1.0:
        bad = (arr < 0) | (arr > 1)
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(422, f"value {float(arr[row, col]):g} outside [0, 1] in instance {row} "
                              f"(pixels are scaled to [0, 1], not 0..255)")
    return arr.astype(np.float32, copy=False)


def _kind_name(arr: np.ndarray) -> str:
    return {"U": "text", "S": "bytes", "b": "booleans", "O": "null, mixed or oversized values"}.get(
        arr.dtype.kind, str(arr.dtype))
