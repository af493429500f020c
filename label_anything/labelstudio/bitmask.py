"""Label Studio's ``BitmaskLabels`` value: a mask as a PNG data URL (``value.imageDataURL``), and back.

What Label Studio 1.23 writes and reads (``web/libs/editor/src/regions/BitmaskRegion.jsx``):

- **Shape**: ``{"imageDataURL": "data:image/png;base64,...", "bitmasklabels": [label]}``, with the region's
  ``original_width`` / ``original_height`` as for every image region. No ``format`` key.
- **Size**: the PNG is the image's natural size (``original_width`` × ``original_height``): the region's
  canvases are created at that size, the PNG is drawn onto them at (0, 0) unscaled, and the canvas is
  exported whole (``canvas.toDataURL("image/png")``).
- **Pixels**: only the alpha channel counts. The editor paints black on a transparent canvas and exports
  it black (``fillStyle = "black"`` with ``destination-atop``), so a saved PNG is RGBA with RGB (0, 0, 0);
  a pixel belongs to the region when its alpha is above 0 (how the editor finds the region's box, outline
  and hover). Brush strokes are anti-aliased, so their edges have alpha between 1 and 254: they count.
- **Reading**: the browser decodes the PNG as any image (palette PNGs with a ``tRNS`` chunk included). A PNG
  without any transparency is opaque everywhere: the whole image is the region.

This backend writes a 1-bit palette PNG (index 0 transparent, index 1 opaque black) of the image's size:
the same alpha as the editor's own PNGs, about ten times faster to encode and smaller than RGBA.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image

from label_anything.imaging.decode import DEFAULT_MAX_PIXELS

DATA_URL_PREFIX = "data:image/png;base64,"
"""What ``canvas.toDataURL("image/png")`` starts with, and what this module writes."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# "data:image/png;base64," with the media type's case and extra parameters allowed, as browsers allow them.
_DATA_URL = re.compile(r"^data:image/png(?:;[^,;]*=[^,;]*)*;base64,", re.IGNORECASE)


class BitmaskError(ValueError):
    """A bitmask value that cannot be read as an exact mask.

    Attributes:
        reason: a short, fixed description of what is wrong (what ``convert`` counts regions by).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def bitmask_encode(mask: np.ndarray) -> str:
    """Encode a mask as the ``imageDataURL`` of a ``bitmasklabels`` result.

    Args:
        mask: (H, W) bool (or 0/1 numbers), True on the object; H x W must be the image's size.

    Returns:
        ``"data:image/png;base64,..."``: a W x H 1-bit palette PNG whose pixels are opaque black where ``mask``
        is True and fully transparent elsewhere.

    Example:
        >>> mask = np.zeros((3, 4), bool); mask[1, 1:3] = True
        >>> url = bitmask_encode(mask)
        >>> url.startswith("data:image/png;base64,")
        True
        >>> bool((bitmask_decode(url, 3, 4) == mask).all())
        True
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"a mask must be (H, W) with pixels, not {mask.shape}")
    height, width = mask.shape
    image = Image.frombytes("P", (width, height), (mask != 0).astype(np.uint8).tobytes())
    image.putpalette([0, 0, 0, 0, 0, 0])  # both black: only the alpha (tRNS: index 0 transparent) matters
    buffer = io.BytesIO()
    image.save(buffer, "PNG", bits=1, transparency=0, compress_level=1)
    return DATA_URL_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def bitmask_decode(data_url: object, height: int, width: int) -> np.ndarray:
    """Read the ``imageDataURL`` of a bitmask region as Label Studio shows it.

    Args:
        data_url: the value's ``imageDataURL``: ``"data:image/png;base64,<PNG>"``.
        height: H of the image (the region's ``original_height``).
        width: W of the image (the region's ``original_width``).

    Returns:
        (H, W) bool, True where the PNG's alpha is above 0.

    Raises:
        BitmaskError: not a PNG data URL, bad base64, not a PNG or a broken one, or a PNG of another size
            than W x H (its ``reason`` says which). The size is checked from the PNG's header, before any
            pixel is decoded.
    """
    if width * height > DEFAULT_MAX_PIXELS:
        raise BitmaskError("bitmask of an image above the pixel limit", f"{width}x{height}")
    if not isinstance(data_url, str):
        raise BitmaskError("bitmask imageDataURL that is not a PNG data URL", f"a {type(data_url).__name__}")
    prefix = _DATA_URL.match(data_url)
    if prefix is None:
        raise BitmaskError("bitmask imageDataURL that is not a PNG data URL", repr(data_url[:40]))
    try:
        payload = "".join(data_url[prefix.end():].split())  # base64 in a data URL may be wrapped
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BitmaskError("bitmask imageDataURL whose base64 does not decode", str(exc)) from None
    if not data.startswith(_PNG_SIGNATURE):
        raise BitmaskError("bitmask imageDataURL that holds no PNG", f"its bytes start with {data[:8]!r}")
    try:
        with warnings.catch_warnings():
            # the size is checked against W x H (at most DEFAULT_MAX_PIXELS) before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=["PNG"])
            if image.size != (width, height):
                raise BitmaskError(
                    "bitmask PNG of another size than its image",
                    f"{image.size[0]}x{image.size[1]}, the image {width}x{height}",
                )
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
                return alpha > 0
            return np.ones((height, width), dtype=bool)  # no transparency: the browser shows it opaque
    except BitmaskError:
        raise
    except Image.DecompressionBombError as exc:
        raise BitmaskError("bitmask PNG of another size than its image", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's errors for broken files
        raise BitmaskError("bitmask PNG that does not decode", str(exc)) from None
