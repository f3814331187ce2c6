"""A PNG/JPEG picture -> one 28x28 model input, by a fixed, documented rule.

The one rule for every path a picture takes: training and evaluation on an image folder
(``mlp.imagefolder``), the endpoint's uploads (``serve.images``, which turns the errors
below into HTTP answers) and ``mlp predict``. It lives in the plain core (PIL and numpy,
no Ray, no serving code) so that all of them decode a picture identically. The rule
(also in docs/serve.md):

1. Only PNG and JPEG are decoded. The pixel count (width x height) is checked
   from the header *before* decoding, so a decompression bomb costs nothing.
   What does get decoded is capped by ``max_pixels`` (the endpoint's
   ``serve.max_image_pixels``, 1024x1024 by default).
2. EXIF orientation is applied (phone photos), transparency is flattened onto
   white (a transparent background reads as paper), then the image becomes
   8-bit grayscale. A 16-bit grayscale PNG is scaled to 8 bits first (value /
   257, rounded: 65535 is 255), never clipped, so it reads as the same picture
   saved with 8 bits; colour, palette and CMYK images go through Pillow's own
   conversion to grayscale.
3. Inversion: the datasets are light ink on a black background. With
   ``invert=auto`` (default) the image is inverted when the mean of its
   outermost one-pixel ring is above 127.5, i.e. when the background is light
   (dark ink on paper). ``invert=true`` / ``invert=false`` force it.
4. An image that is already 28x28 is used as it is, so a dataset image saved
   as PNG gives exactly its array back.
5. Any other size is framed the way the dataset was built: the background
   level (median of the ring) is subtracted and the contrast stretched, the
   image is cropped to the ink's bounding box, scaled so its longer side is
   20 px (MNIST; 28 px for Fashion-MNIST, synthetic and an image folder) and
   pasted into a black 28x28 canvas, centred on its centre of mass (MNIST) or
   its box (others).
6. Pixels are scaled with ``to_model_input`` (uint8 / 255, re-exported by
   ``mlp.data``), the one preprocessing training applies.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps

SIDE = 28  # the model sees SIDE x SIDE grayscale pixels
FORMATS = ("PNG", "JPEG")
INVERT_CHOICES = ("auto", "true", "false")
BOX = {"mnist": 20}  # longer side of the framed object; other datasets fill the canvas
INK_LEVEL = 0.2  # share of the brightest pixel that counts as ink when cropping
# How Pillow opens a 16-bit grayscale PNG; its convert("L") would clip every value above 255 to white.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
IMAGE_FOLDER_FRAMING = "image-folder"  # any name but "mnist": framed by its box into the whole canvas


class ImageError(ValueError):
    """A picture the rule refuses: undecodable, zero-size, or an unknown ``invert`` choice.

    The subclasses say why in a way a caller can map (the endpoint answers 400 / 413 / 422).
    """


class EmptyImageError(ImageError):
    """The picture has no bytes at all."""


class ImageTooLargeError(ImageError):
    """The picture has more pixels than the caller allows."""


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] (or [N, 784]) -> float32 [N, 784] in [0, 1] (step 6): the one scaling that
    training on every dataset, evaluation and serving apply; ``mlp.data`` re-exports it."""
    return images.reshape(images.shape[0], -1).to(torch.float32) / 255.0


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Open PNG/JPEG bytes as grayscale, refusing empty, undecodable and oversized images.

    Safe to run in several threads at once (no process-wide state such as warning filters is touched).
    Any exception Pillow raises on the bytes is an undecodable image (``ImageError``), never anything else.
    """
    precheck(data, max_pixels)
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as err:  # a JPEG far above any limit (Pillow's own, ~179 MP)
        raise ImageTooLargeError(f"image above the limit of {max_pixels} pixels: {err}") from None
    except Exception as err:  # noqa: BLE001 - UnidentifiedImageError, or whatever else hostile bytes provoke
        raise ImageError(f"cannot decode image (PNG or JPEG expected): {err}") from None
    _check_size(*img.size, max_pixels)
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in SIXTEEN_BIT_MODES:
            img = _scaled_to_8_bits(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        return img.convert("L")
    except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data, broken EXIF, ...
        raise ImageError(f"cannot decode image (PNG or JPEG expected): {err}") from None


def _scaled_to_8_bits(img: Image.Image) -> Image.Image:
    """A 16-bit grayscale image as 8-bit grayscale: each value times 255 / 65535, rounded."""
    values = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")


def precheck(data: bytes, max_pixels: int) -> None:
    """What can be refused in microseconds, before a decode is spent: no bytes; a PNG header's size."""
    if not data:
        raise EmptyImageError("empty image: the uploaded file has 0 bytes")
    size = _png_size(data)
    if size is not None:
        _check_size(*size, max_pixels)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width == 0 or height == 0:  # Pillow refuses these without saying why
        raise ImageError(f"zero-size image: {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image of {width}x{height} = {width * height} pixels is above "
                                 f"the limit of {max_pixels} pixels")


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk, read without decoding."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _ring(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def _frame(pixels: np.ndarray, dataset: str) -> np.ndarray:
    """Stretch, crop to the ink, scale and centre a light-on-dark image into 28x28 (step 5)."""
    background = float(np.median(_ring(pixels)))
    peak = float(pixels.max())
    if peak > background:  # (p - background) / (peak - background), clipped to [0, 1], x 255: in place
        pixels = pixels - background
        pixels /= peak - background
        np.clip(pixels, 0.0, 1.0, out=pixels)
        pixels *= 255.0
    ink = pixels > INK_LEVEL * max(float(pixels.max()), 1.0)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))  # the ink's bounding box
    if len(rows):
        pixels = pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    box = BOX.get(dataset, SIDE)
    height, width = pixels.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    glyph = np.asarray(Image.fromarray(pixels.astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float64)
    canvas = np.zeros((SIDE, SIDE))
    if dataset == "mnist" and glyph.sum() > 0:  # MNIST centres the centre of mass
        rows, cols = np.indices(glyph.shape)
        cy, cx = (rows * glyph).sum() / glyph.sum(), (cols * glyph).sum() / glyph.sum()
        top, left = round(SIDE / 2 - cy), round(SIDE / 2 - cx)
    else:
        top, left = (SIDE - glyph.shape[0]) // 2, (SIDE - glyph.shape[1]) // 2
    top = min(max(top, 0), SIDE - glyph.shape[0])
    left = min(max(left, 0), SIDE - glyph.shape[1])
    canvas[top:top + glyph.shape[0], left:left + glyph.shape[1]] = glyph
    return canvas


def to_pixels(img: Image.Image, dataset: str, invert: str = "auto") -> np.ndarray:
    """A grayscale image -> uint8 [28, 28], light on dark (steps 3 to 5 of the module docstring)."""
    if invert not in INVERT_CHOICES:
        raise ImageError(f"invert must be one of {', '.join(INVERT_CHOICES)}, got {invert!r}")
    pixels = np.asarray(img, dtype=np.float64)
    if invert == "true" or (invert == "auto" and _ring(pixels).mean() > 127.5):
        pixels = 255.0 - pixels
    if pixels.shape != (SIDE, SIDE):
        pixels = _frame(pixels, dataset)
    return np.rint(pixels).astype(np.uint8)


def to_input(img: Image.Image, dataset: str, invert: str = "auto") -> np.ndarray:
    """A grayscale image -> float32 [784] in [0, 1] (steps 3 to 6 of the module docstring)."""
    as_uint8 = torch.from_numpy(to_pixels(img, dataset, invert)).reshape(1, SIDE * SIDE)
    return to_model_input(as_uint8).numpy()[0]


def image_to_input(data: bytes, dataset: str, max_pixels: int, invert: str = "auto") -> np.ndarray:
    """Bytes of a PNG/JPEG picture -> float32 [784] in [0, 1]."""
    return to_input(decode(data, max_pixels), dataset, invert)
