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
model itself. ``orjson`` decodes when installed (faster than the standard
library; docs/serve.md); the standard library then only runs on bodies
orjson refuses, so NaN/Infinity are still reported by name, not as "malformed".

Before either decoder runs, ``check_structure`` reads the raw bytes (C-speed
``bytes`` methods; docs/serve.md has its cost) for what would hurt the decoders
themselves: nesting deeper than any valid body (orjson overflows the C stack
and kills the process when nesting is deep enough; the standard library raises
RecursionError near 1,000), and more arrays or numbers than the largest valid
batch (an 8 MB body of ``[],`` would become 2.7 million Python lists).
"""

from __future__ import annotations

import json
import re
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
# Deepest valid body: {"instances": [[[28 values] x 28 rows], ...]} is an object and three arrays.
MAX_DEPTH = 4
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')  # bytes.translate deletes these
_OPENERS = b"[{"
_STRING = re.compile(rb'"[^"]*"')  # after escaped quotes are gone, a string is quote, non-quotes, quote

try:
    import orjson

    _fast_loads = orjson.loads
except ImportError:  # optional speed-up
    _fast_loads = json.loads


class InputError(ValueError):
    """A refused request: ``status`` is the code (4xx: the client's mistake; 503: try again later),
    ``message`` names the problem, ``headers`` go into the response (e.g. ``Retry-After``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

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


def check_structure(body: bytes, max_instances: int) -> None:
    """Refuse, from the raw bytes, JSON nested deeper than ``MAX_DEPTH`` or holding more arrays or numbers
    than a batch of ``max_instances`` can, before a decoder builds (or crashes on) it.

    Brackets inside strings are text, so strings are cut out first, paired the way a JSON parser pairs
    them (escaped backslashes, then escaped quotes removed). Only an invalid body contains strings other
    than the two keys, so the exact cut costs nothing on the hot path.
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = body.translate(None, _NOT_STRUCTURE)
    if b'"' in marks:
        marks = _STRING.sub(b"", marks).replace(b'"', b"")  # a quote left unpaired opens no string that ends
    arrays = marks.count(b"[") + marks.count(b"{")
    if arrays > MAX_DEPTH:
        depth = _depth(marks)
        if depth > MAX_DEPTH:
            raise InputError(422, f"nesting too deep: arrays/objects nest {depth} levels, at most {MAX_DEPTH} "
                                  'are valid ({"instances": [[[28 values] x 28 rows], ...]})')
    # A full batch of 28x28 instances has 29 arrays and 783 + 27 + 1 commas each. Twice that still reaches
    # the decoder, so a batch a little too large is told its size ("batch of N instances is above ...").
    most = 2 * max_instances
    commas = most * (INPUT_SIZE + SIDE)  # only a body longer than that can have more, so shorter ones skip counting
    if arrays > most * (SIDE + 1) + 2 or (len(body) > commas and body.count(b",") > commas):
        raise InputError(413, f"too many values: more than twice the largest valid batch ({max_instances} "
                              f"instances of {INPUT_SIZE} numbers)")


def _depth(marks: bytes) -> int:
    """Deepest nesting in a string of brackets alone (each opener +1, each closer -1)."""
    if len(marks) < 256:  # one nested instance (58 marks): a loop beats numpy's call overhead
        depth = deepest = 0
        for mark in marks:
            depth += 1 if mark in _OPENERS else -1
            deepest = max(deepest, depth)
        return deepest
    steps = np.frombuffer(marks, dtype=np.uint8)
    opens = (steps == ord("[")) | (steps == ord("{"))
    return int(np.cumsum(np.where(opens, 1, -1), dtype=np.int64).max())


def parse_json(body: bytes, max_instances: int) -> Parsed:
    """Decode and validate a JSON body (see the module docstring for the shapes)."""
    check_structure(body, max_instances)
    try:
        data = _fast_loads(body)
    except ValueError:  # orjson refuses NaN/Infinity; the standard library says what else is wrong
        data = _slow_loads(body)
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


def _slow_loads(body: bytes) -> Any:
    """The standard library's decoder, held to what orjson would accept but for NaN/Infinity and huge numbers.

    UTF-8 only (``json.loads(bytes)`` would also take UTF-16/32, where the literal scan in ``parse_json``
    cannot see ``true``); integers parse as floats, so a 5,000-digit number is a number out of range, not a
    Python int (whose parsing is quadratic and capped at 4,300 digits with a ValueError).
    """
    try:
        return json.loads(body.decode("utf-8"), parse_int=float)
    except UnicodeDecodeError as err:
        raise InputError(400, f"malformed JSON: not UTF-8 ({err})") from None
    except RecursionError:  # check_structure keeps bodies far from this; kept as a guard
        raise InputError(422, "nesting too deep for the JSON decoder") from None
    except ValueError as err:
        raise InputError(400, f"malformed JSON: {err}") from None


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
        raise InputError(422, f"NaN or infinite value in instance {row} (numbers beyond float range count as infinite)")
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
