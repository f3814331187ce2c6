"""Uploaded PNG/JPEG -> one 28x28 model input: the core's image rule, with HTTP errors.

The rule itself (formats, EXIF, transparency, 16-bit, inversion, framing, scaling) is
``mlp.images``, shared with training on an image folder and with ``mlp predict``, so an
upload is decoded exactly as the training pictures were; its docstring (and docs/serve.md)
states it. This module adds what only the endpoint needs: each refusal becomes an
``InputError`` with its status (400 empty, 413 too many pixels, 422 undecodable or a bad
``invert``). ``serve.web`` runs it in a small bounded thread pool, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from mlp import images as rule
from mlp.images import (  # noqa: F401 - the public names callers import from here
    BOX,
    FORMATS,
    INK_LEVEL,
    INVERT_CHOICES,
    SIXTEEN_BIT_MODES,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
)
from serve.inputs import InputError

STATUS = {EmptyImageError: 400, ImageTooLargeError: 413}  # any other ImageError: 422


@contextmanager
def _http_errors() -> Iterator[None]:
    """The rule's refusals as the client's 4xx, with the rule's own message."""
    try:
        yield
    except ImageError as err:
        raise InputError(STATUS.get(type(err), 422), str(err)) from None


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Open PNG/JPEG bytes as grayscale (``mlp.images.decode``); a refusal is an ``InputError``."""
    with _http_errors():
        return rule.decode(data, max_pixels)


def precheck(data: bytes, max_pixels: int) -> None:
    """Refuse no bytes or a PNG header's oversized image in microseconds, before a decode thread is spent."""
    with _http_errors():
        rule.precheck(data, max_pixels)


def to_input(img: Image.Image, dataset: str, invert: str = "auto") -> np.ndarray:
    """A grayscale image -> float32 [784] in [0, 1] (``mlp.images.to_input``)."""
    with _http_errors():
        return rule.to_input(img, dataset, invert)


def image_to_input(data: bytes, dataset: str, max_pixels: int, invert: str = "auto") -> np.ndarray:
    """Bytes of an uploaded image -> float32 [784] in [0, 1]; a refusal is an ``InputError``."""
    with _http_errors():
        return rule.image_to_input(data, dataset, max_pixels, invert)
