"""A COCO file and its images, as the batch commands (``boxes-to-masks``, ``concepts-to-masks``) read them.

Which pixels a COCO file's annotations are on: files written by tools that read EXIF give a rotated photo's
displayed size, those that ignore it give the stored size. The image entry's ``height``/``width`` decide,
per image: the displayed size (or none given) → EXIF applied; the stored size → the stored pixels, EXIF
ignored (and said); neither → the image is not used. So a mask's size always equals its image entry's.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from label_anything.errors import ImageError, LabelAnythingError
from label_anything.imaging.decode import DEFAULT_MAX_PIXELS, decode_image

# Why an image (and what is on it) was not used: keys of the commands' ``skipped`` summaries.
REPEATED_IMAGE = "image id repeated in images"
NO_FILE_NAME = "image has no file_name"
UNREADABLE = "image unreadable"
SIZE_MISMATCH = "image size differs from the COCO size"

# Transposes that undo PIL's ``exif_transpose`` for each EXIF orientation (2, 3, 4, 5, 7 are their own inverse).
_UNDO_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_90",
                     7: "TRANSVERSE", 8: "ROTATE_270"}


def read_coco(coco_path: Path, *, lists: tuple[str, ...] = ("images", "annotations")) -> dict[str, Any]:
    """The COCO file as a dict holding the ``lists`` it needs (each a list), or a one-line error."""
    try:
        coco = json.loads(Path(coco_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise LabelAnythingError(f"cannot read COCO file {coco_path}: {reason}") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(key), list) for key in lists):
        needs = " and ".join(repr(key) for key in lists)
        raise LabelAnythingError(f"{coco_path} is not a COCO instances file (needs {needs} lists)")
    return coco


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a message about a hostile input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class ImageSizeError(ImageError):
    """The image is neither of the sizes (displayed, stored) its COCO entry could mean."""


def decode_for_coco(data: bytes, name: str, coco_size: tuple[Any, Any], *,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str | None]:
    """The pixels an image entry's annotations are on, decided by the entry's ``(height, width)`` (see the
    module docstring).

    Returns:
        ((H, W, 3) uint8 RGB, a note when EXIF was ignored else None).

    Raises:
        ImageSizeError: neither the displayed nor the stored size is the COCO size.
        ImageError: not a readable image (``ImageTooLargeError``: above ``max_pixels``).
    """
    from PIL import Image

    displayed = decode_image(data, name=name, max_pixels=max_pixels)
    if _fits(coco_size, displayed.shape):
        return displayed, None
    orientation = _exif_orientation(data)
    undo = _UNDO_ORIENTATION.get(orientation)
    stored = displayed if undo is None else np.asarray(Image.fromarray(displayed).transpose(Image.Transpose[undo]))
    said = "x".join("?" if v is None else str(v) for v in reversed(coco_size))
    if undo is not None and _fits(coco_size, stored.shape):
        return stored, (f"image {name}: EXIF orientation {orientation} ignored: the COCO file gives its stored size "
                        f"{said}, so its boxes are on the stored pixels")
    shown = f"{displayed.shape[1]}x{displayed.shape[0]}"
    as_stored = f" ({stored.shape[1]}x{stored.shape[0]} as stored)" if stored.shape != displayed.shape else ""
    raise ImageSizeError(f"{name} is {shown}{as_stored} but the COCO file says {said}")


def _fits(coco_size: tuple[Any, Any], shape: tuple[int, ...]) -> bool:
    """Every size the COCO entry gives equals the image's (a missing one fits anything)."""
    return all(given is None or (not isinstance(given, bool) and given == actual)
               for given, actual in zip(coco_size, shape[:2], strict=True))


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1 to 8; 1 when absent or unreadable) of an image file that decodes."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            value = img.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError):
        return 1
    return value if isinstance(value, int) else 1


def read_file_bytes(path: Path) -> bytes | str:
    """The bytes of an image file, or the reason it cannot be read (a message for the report)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        return f"cannot read image {path}: {exc.strerror or exc}"
