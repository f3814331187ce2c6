"""Request bodies -> validated model input, or an ``InputError`` that names the problem.

Ray-free and HTTP-framework-free (bytes in, float32 [N, 784] or a table model's rows out), so the Serve
deployment and the plain-FastAPI benchmark peer validate identically and unit
tests need no server. Nothing here unpickles anything: bodies are JSON text
or PNG/JPEG bytes (see ``serve.images``).

Accepted JSON bodies (values are floats in [0, 1], the same scale as training,
``mlp.data.to_model_input``)::

    [784 numbers]                       one instance, flat
    [[28 numbers] x 28]                 one instance, nested
    {"instance": <one instance>}        the same, wrapped
    {"instances": [<instance>, ...]}    a batch (each flat or nested, not mixed)

A model trained on a table (``data.source``) takes rows by column name instead
(``parse_rows``; its ``TableForm`` says which columns and values)::

    {"instance": {"alcohol": 13.2, ...}}          one row: every feature column, raw values
    {"instances": [{"alcohol": 13.2, ...}, ...]}  a batch

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
batch (an 8 MB body of ``[],`` would become 2.7 million Python lists). Its
limits (``BodyLimits``) are those of the model's form: ``PIXELS``, or a table's
(one level shallower, one object and as many values as columns per row).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Sequence
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
# ... and of a table model's: {"instances": [{column: value, ...}, ...]} is an object, an array and an object.
TABLE_DEPTH = 3
# A table model refuses a value more than this many of its column's standard deviations from the training rows'
# mean (with data.normalize none: more than this far from 0). Far beyond real data, even unscaled, yet it leaves
# the float32 model ~1e23 of headroom, so a few layers of sums and products cannot overflow into NaN answers.
MAX_DEVIATIONS = 1e15
_NUMBERS = (int, float, bool)  # JSON numbers and booleans; bool is an int, named for the reader
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
    """Validated input and whether the client sent one instance (not a batch)."""

    x: np.ndarray  # float32 [N, 784] pixels, or a table model's raw rows: float64 [N, features], not standardised
    single: bool


@dataclass(frozen=True)
class BodyLimits:
    """What the largest valid body of one form holds, per instance: ``check_structure``'s yardstick."""

    depth: int  # deepest valid nesting of arrays and objects
    containers: int  # arrays and objects per instance
    commas: int  # commas per instance, the one before the next instance included
    deepest: str  # the deepest valid body, shown when nesting is too deep
    instance: str  # what one instance holds, shown when a body has too many values


PIXELS = BodyLimits(MAX_DEPTH, SIDE + 1, INPUT_SIZE + SIDE, '{"instances": [[[28 values] x 28 rows], ...]}',
                    f"{INPUT_SIZE} numbers")


@dataclass(frozen=True)
class TableForm:
    """What a table model's request rows must hold: its feature columns (in input order), the accepted
    range of each (``MAX_DEVIATIONS`` standard deviations around the training rows' mean), and the body
    limits. Built once per loaded model (``from_schema``), so a request pays for none of it."""

    features: tuple[str, ...]
    low: np.ndarray  # float64 [features]
    high: np.ndarray
    limits: BodyLimits

    @classmethod
    def from_schema(cls, features: Sequence[str], mean: Sequence[float], std: Sequence[float]) -> TableForm:
        bound = float(np.finfo(np.float32).max)  # values beyond float32 would be infinite in the model anyway
        if not len(mean):  # features used as they are: float32's range is the only limit
            mean, std = [0.0] * len(features), [np.inf] * len(features)
        centre, spread = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        low = np.maximum(centre - MAX_DEVIATIONS * spread, -bound)
        high = np.minimum(centre + MAX_DEVIATIONS * spread, bound)
        # A row is one object of len(features) values; commas inside column names count too.
        commas = len(features) + sum(name.count(",") for name in features)
        limits = BodyLimits(TABLE_DEPTH, 1, commas, '{"instances": [{column: value, ...}, ...]}',
                            f"{len(features)} columns")
        return cls(tuple(features), low, high, limits)

    @property
    def expected(self) -> str:
        """The accepted bodies, for messages."""
        return '{"instances": [{column: value, ...}, ...]} or {"instance": {column: value, ...}}'


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


def check_structure(body: bytes, max_instances: int, limits: BodyLimits = PIXELS) -> None:
    """Refuse, from the raw bytes, JSON nested deeper than ``limits.depth`` or holding more arrays or numbers
    than a batch of ``max_instances`` can, before a decoder builds (or crashes on) it.

    Brackets inside strings are text, so strings are cut out first, paired the way a JSON parser pairs
    them (escaped backslashes, then escaped quotes removed). Only an invalid pixel body contains strings
    other than the two keys, so there the exact cut costs nothing on the hot path; a table row's column
    names are strings, cut by one regex pass over the few structural bytes left.
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = body.translate(None, _NOT_STRUCTURE)
    if b'"' in marks:
        marks = _STRING.sub(b"", marks).replace(b'"', b"")  # a quote left unpaired opens no string that ends
    arrays = marks.count(b"[") + marks.count(b"{")
    if arrays > limits.depth:
        depth = _depth(marks)
        if depth > limits.depth:
            raise InputError(422, f"nesting too deep: arrays/objects nest {depth} levels, at most {limits.depth} "
                                  f"are valid ({limits.deepest})")
    # A full batch of 28x28 instances has 29 arrays and 783 + 27 + 1 commas each (a table row: one object and
    # a comma per column). Twice that still reaches the decoder, so a batch a little too large is told its
    # size ("batch of N instances is above ...").
    most = 2 * max_instances
    commas = most * limits.commas  # only a body longer than that can have more, so shorter ones skip counting
    if arrays > most * limits.containers + 2 or (len(body) > commas and body.count(b",") > commas):
        raise InputError(413, f"too many values: more than twice the largest valid batch ({max_instances} "
                              f"instances of {limits.instance})")


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
    """Decode and validate a JSON body of pixels (see the module docstring for the shapes)."""
    check_structure(body, max_instances)
    data = _decode(body)
    wrapped = _unwrap(data, max_instances, '{"instances": [...]} or {"instance": [...]}')
    if wrapped is None:
        if not isinstance(data, list):
            raise InputError(422, f"expected a JSON list or object, got {type(data).__name__}")
        wrapped = [data], True
    if any(word in body for word in _LITERALS):
        raise InputError(422, "non-numeric values: true/false/null are not pixel values")
    instances, single = wrapped
    return Parsed(to_array(instances), single)


def parse_rows(body: bytes, form: TableForm, max_instances: int) -> Parsed:
    """Decode and validate a table model's JSON body: rows by column name, as raw float64 [N, features]
    in the model's feature order (the predictor standardises them, as training did)."""
    check_structure(body, max_instances, form.limits)
    data = _decode(body)
    wrapped = _unwrap(data, max_instances, form.expected)
    if wrapped is None:
        raise InputError(422, f"expected {form.expected}, got a JSON {_json_kind(data)}: this model takes "
                              f"rows by column name")
    instances, single = wrapped
    return Parsed(table_rows(instances, form), single)


def _decode(body: bytes) -> Any:
    """orjson where it can; the standard library for what it refuses (NaN/Infinity), which names the rest."""
    try:
        return _fast_loads(body)
    except ValueError:
        return _slow_loads(body)


def _unwrap(data: Any, max_instances: int, expected: str) -> tuple[list[Any], bool] | None:
    """(instances, single) of ``{"instances": [...]}`` (a batch) or ``{"instance": x}`` (one); None if
    ``data`` is not an object, for the caller to judge."""
    if not isinstance(data, dict):
        return None
    unknown = sorted(set(data) - {"instance", "instances"})
    if unknown or len(data) != 1:
        raise InputError(422, f"expected {expected}, got keys [{_names(sorted(data))}]")
    if "instance" in data:
        return [data["instance"]], True
    instances = data["instances"]
    if not isinstance(instances, list):
        raise InputError(422, f"'instances' must be a list, got {type(instances).__name__}")
    if not instances:
        raise InputError(422, "empty batch: 'instances' has no items")
    if len(instances) > max_instances:
        raise InputError(413, f"batch of {len(instances)} instances is above the limit of {max_instances}")
    return instances, False


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


def table_rows(instances: list[Any], form: TableForm) -> np.ndarray:
    """Objects of ``{column: value}`` -> float64 [N, features] in the model's order, refusing a missing or
    unknown column, a value that is not a number or boolean, and one outside its column's range.

    A per-value type check, unlike ``to_array``'s whole-array one: numpy would turn the text ``"1.5"`` into
    a number, and an error has to name the column.
    """
    wanted = set(form.features)
    rows = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise InputError(422, f"instance {i} is a JSON {_json_kind(instance)}, not an object of "
                                  f"{{column: value}}: this model takes rows by column name")
        if instance.keys() != wanted:
            raise InputError(422, _column_problem(i, instance, form.features))
        row = [instance[name] for name in form.features]
        for name, value in zip(form.features, row):
            if not isinstance(value, _NUMBERS):
                got = "null" if value is None else f"{_json_kind(value)} {_quote(value)}"
                raise InputError(422, f"non-numeric value in column {_quote(name)} of instance {i}: expected a "
                                      f"number or boolean, got {got}")
        rows.append(row)
    x = np.array(rows, dtype=np.float64)
    inside = (x >= form.low) & (x <= form.high)  # False for NaN too
    if not inside.all():
        row, col = (int(i) for i in np.argwhere(~inside)[0])
        name, value = _quote(form.features[col]), float(x[row, col])
        if not np.isfinite(value):
            raise InputError(422, f"NaN or infinite value in column {name} of instance {row} "
                                  "(numbers beyond float range count as infinite)")
        raise InputError(422, f"value {value:g} outside [{form.low[col]:g}, {form.high[col]:g}] in column {name} "
                              f"of instance {row}: more than {MAX_DEVIATIONS:g} standard deviations from the "
                              "training rows' mean, where the model's float32 arithmetic would overflow")
    return x


def _column_problem(i: int, instance: dict[str, Any], features: tuple[str, ...]) -> str:
    """``instance 0: missing column 'hue'; unknown column 'colour' (this model takes exactly ...)``."""
    missing = [name for name in features if name not in instance]
    unknown = [name for name in instance if name not in set(features)]
    parts = [f"{label} column{'s' if len(names) > 1 else ''} {_names(names)}"
             for label, names in (("missing", missing), ("unknown", unknown)) if names]
    return (f"instance {i}: {'; '.join(parts)} (this model takes exactly these {len(features)} columns: "
            f"{_names(list(features), limit=50)})")


def _names(names: list[Any], limit: int = 5) -> str:
    """Names for a message: quoted, at most ``limit`` of them (a hostile body may send thousands)."""
    shown = ", ".join(_quote(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _quote(value: Any, width: int = 60) -> str:
    """``repr`` cut to ``width`` characters: a message never echoes a whole body back."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _json_kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    return {bool: "boolean", str: "text", list: "list", dict: "object"}.get(type(value), "number")


def _kind_name(arr: np.ndarray) -> str:
    return {"U": "text", "S": "bytes", "b": "booleans", "O": "null, mixed or oversized values"}.get(
        arr.dtype.kind, str(arr.dtype))


# --- feedback: the true labels of an answered request ----------------------------------------------------------

REQUEST_ID = re.compile(r"^[0-9a-f]{1,16}-[0-9a-f]{12}$")
REQUEST_ID_PATTERN = REQUEST_ID.pattern


def new_request_id() -> str:
    """A prediction's id: its time in milliseconds (hex) and 48 random bits. The time lets the ledger tell an
    id whose answer may still be on its way (worth waiting for) from one that never existed."""
    return f"{int(time.time() * 1000):x}-{secrets.token_hex(6)}"


def request_id_time(request_id: str) -> float:
    """When ``request_id`` was issued, in seconds since the epoch (``new_request_id``)."""
    return int(request_id.split("-", 1)[0], 16) / 1000.0


def feedback_labels(body: bytes, class_names: Sequence[str], max_instances: int) -> tuple[str, list[int]]:
    """(request id, label indices) of ``{"request_id": id, "label": x}`` or ``{"request_id": id, "labels": [...]}``;
    a label is a class index or a class name. Anything else: a 4xx naming the problem."""
    try:
        data = _decode(body)
    except ValueError as err:
        raise InputError(400, f"malformed JSON: {err}") from None
    expected = ('send {"request_id": "<the id /predict answered>", "label": <class index or name>} '
                '(or "labels": [...] for a batch)')
    if not isinstance(data, dict):
        raise InputError(422, f"feedback must be a JSON object: {expected}")
    unknown = sorted(set(data) - {"request_id", "label", "labels"})
    if unknown:
        raise InputError(422, f"unknown key(s) {_names(unknown)}: {expected}")
    request_id = data.get("request_id")
    if not isinstance(request_id, str) or REQUEST_ID.match(request_id) is None:
        raise InputError(422, f"request_id must be the id a /predict answer carried (like "
                              f"{new_request_id()!r}), got {_quote(request_id)}")
    if ("label" in data) == ("labels" in data):
        raise InputError(422, f"give exactly one of 'label' and 'labels': {expected}")
    given = [data["label"]] if "label" in data else data["labels"]
    if not isinstance(given, list) or not 1 <= len(given) <= max_instances:
        raise InputError(422, f"'labels' must be a list of 1 to {max_instances} labels, got {_quote(given)}")
    return request_id, [_label_index(value, class_names) for value in given]


def _label_index(value: Any, class_names: Sequence[str]) -> int:
    """A class index (0 to n-1) or a class name, as the index."""
    if isinstance(value, str):
        if value in class_names:
            return list(class_names).index(value)
        raise InputError(422, f"unknown class {_quote(value)}: the classes are {_names(list(class_names))}")
    if isinstance(value, float) and value.is_integer():  # 4.0 is the integer 4 in JSON (and its schema)
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(class_names):
        raise InputError(422, f"a label must be a class index 0 to {len(class_names) - 1} or a class name, "
                              f"got {_quote(value)}")
    return value
