"""Every coordinate conversion, in one place.

Conventions: pixel-edge coordinates (the top-left corner of the image is (0, 0), a pixel (col, row) spans
[col, col + 1) × [row, row + 1)), x to the right, y down. Label Studio gives positions in percent (0–100)
of ``original_width`` / ``original_height``, the image's size after EXIF rotation. Boxes are
``(x0, y0, x1, y1)`` ("xyxy") inside the package and ``(x0, y0, width, height)`` ("xywh") in COCO files.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def percent_to_pixels(value: Any, size: Any) -> Any:
    """Label Studio percent of ``size`` → pixels: ``value * size / 100``, for floats or arrays alike
    (``value`` (N, 2) with ``size`` (2,) = ``[W, H]`` converts xy points).

    Multiplying first keeps whole pixels whole (10 % of 100 px is 10.0, not 10.000000000000002), so a drawn
    polygon rasterizes exactly as Label Studio's own export converts it.

    >>> percent_to_pixels(50.0, 640), percent_to_pixels(np.array([[10.0, 50.0]]), np.array([100, 640]))
    (320.0, array([[ 10., 320.]]))
    """
    if isinstance(value, np.ndarray) or isinstance(size, np.ndarray):
        return np.asarray(value, dtype=np.float64) * size / 100.0
    return float(value) * size / 100.0


def pixels_to_percent(value: float | np.ndarray, size: int) -> float | np.ndarray:
    """Pixels → Label Studio percent of ``size`` (inverse of ``percent_to_pixels``); arrays element-wise,
    with the same float64 arithmetic as a scalar.

    >>> pixels_to_percent(320, 640), pixels_to_percent(np.array([0, 160]), 640).tolist()
    (50.0, [0.0, 25.0])
    """
    if np.ndim(value) == 0:
        return float(value) * 100.0 / size
    return np.asarray(value, dtype=np.float64) * 100.0 / size


def xyxy_to_xywh(xyxy: np.ndarray) -> np.ndarray:
    """Convert boxes ``(x0, y0, x1, y1)`` to ``(x0, y0, width, height)`` (the COCO ``bbox`` order).

    Args:
        xyxy: (4,) or (N, 4), any real dtype.

    Returns:
        Same shape, float64.

    >>> xyxy_to_xywh(np.array([2.0, 1.0, 5.0, 3.0]))
    array([2., 1., 3., 2.])
    """
    boxes = np.array(xyxy, dtype=np.float64)
    boxes[..., 2:] -= boxes[..., :2]
    return boxes


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """Convert boxes ``(x0, y0, width, height)`` (COCO ``bbox``) to ``(x0, y0, x1, y1)``.

    Args:
        xywh: (4,) or (N, 4), any real dtype.

    Returns:
        Same shape, float64.

    >>> xywh_to_xyxy(np.array([2.0, 1.0, 3.0, 2.0]))
    array([2., 1., 5., 3.])
    """
    boxes = np.array(xywh, dtype=np.float64)
    boxes[..., 2:] += boxes[..., :2]
    return boxes


def xyxy_to_unit_cxcywh(xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Convert pixel boxes ``(x0, y0, x1, y1)`` to ``(centre x, centre y, width, height)`` in units of the
    image's width and height (SAM 3's box prompts).

    Args:
        xyxy: (4,) or (N, 4), any real dtype, in pixels.
        width, height: the image's size in pixels.

    Returns:
        Same shape, float32.

    >>> xyxy_to_unit_cxcywh(np.array([20.0, 10.0, 60.0, 30.0]), 100, 50)
    array([0.4, 0.4, 0.4, 0.4], dtype=float32)
    """
    boxes = np.asarray(xyxy, dtype=np.float64)
    scale = np.array([width, height], dtype=np.float64)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2 / scale
    size = (boxes[..., 2:] - boxes[..., :2]) / scale
    return np.concatenate([centre, size], axis=-1).astype(np.float32)
