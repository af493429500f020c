"""Decode image files into the one array shape the engine takes: (H, W, 3) uint8 RGB, EXIF applied.

Label Studio sends coordinates in percent of the image *after* EXIF rotation, so every image read
in this project goes through ``decode_image`` and gets the same orientation the browser shows.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from label_anything.errors import ImageError

DEFAULT_MAX_PIXELS = 100_000_000
"""Refuse images above this many pixels before decoding them (decompression bombs)."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than the limit (``max_pixels``, ``--max-image-pixels``)."""


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, WebP, TIFF, BMP ...) to RGB.

    Args:
        data: the file's bytes.
        max_pixels: refuse larger images, checked from the header before decoding pixels.
        name: how error messages call the image.

    Returns:
        (H, W, 3) uint8 RGB, EXIF orientation applied.

    Example:
        >>> buf = io.BytesIO(); Image.new("RGB", (4, 3), "red").save(buf, "PNG")
        >>> decode_image(buf.getvalue()).shape
        (3, 4, 3)
    """
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # ``max_pixels`` is the limit; Pillow's own warning threshold (89 M pixels) would contradict it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img.size, max_pixels, name)
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = img.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError:
        # Pillow refuses on its own above 2 x Image.MAX_IMAGE_PIXELS, before the header reaches us
        raise ImageTooLargeError(
            f"{name} declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels; refused before decoding "
            f"(limit {max_pixels:,}, see --max-image-pixels)"
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name} is not an image file (its {len(data):,} bytes start with {data[:16]!r})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} is not a readable image ({exc})") from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{name} has no pixels")
    return array


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    """Refuse an image from its header's size alone: no pixels, or more than ``max_pixels``."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{max_pixels:,} (raise it with --max-image-pixels)"
        )


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file from disk; see ``decode_image``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image {p}: {exc.strerror or exc}") from None
    return decode_image(data, max_pixels=max_pixels, name=str(p))


def image_digest(image: np.ndarray) -> str:
    """SHA-256 of an image's pixels and shape: the same picture gives the same key, whatever its file.

    Example:
        >>> a = np.zeros((2, 3, 3), np.uint8)
        >>> image_digest(a) == image_digest(a.copy()), image_digest(a) == image_digest(a.reshape(3, 2, 3))
        (True, False)
    """
    h = hashlib.sha256()
    h.update(repr((image.shape, str(image.dtype))).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()
