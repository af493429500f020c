"""Geometry on boolean masks: boxes, areas, rasterized polygons and COCO RLE.

Coordinates are *pixel-edge* coordinates: pixel ``(row r, column c)`` is the unit square
``[c, c + 1] x [r, r + 1]``, so its centre is ``(c + 0.5, r + 0.5)``. This is the convention of COCO
boxes and of ``pycocotools``' polygon rasterizer (it samples each pixel at its centre), and it makes a
box or a polygon contain the mask's pixels rather than pass through their centres.

Tracing masks into polygons (parts, holes, keyholes) is in ``label_anything.geometry.polygons``; this module
rasterizes polygons back and encodes COCO RLE.

No Label Studio knowledge here: percent coordinates and brush RLE live in ``label_anything.labelstudio``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from label_anything.geometry.coords import xyxy_to_xywh

__all__ = [
    "coco_rle_to_mask",
    "mask_area",
    "mask_to_coco_rle",
    "mask_to_xyxy",
    "polygons_to_coco",
    "polygons_to_mask",
    "xyxy_to_xywh",
]


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")
    return mask if mask.dtype == bool else mask != 0


def mask_to_xyxy(mask: np.ndarray) -> np.ndarray:
    """Tight box ``(x0, y0, x1, y1)`` of a mask, in pixel-edge coordinates.

    ``x1`` is the last painted column + 1 and ``y1`` the last painted row + 1, so the box contains every
    painted pixel entirely and ``x1 - x0`` is the width in pixels.

    Args:
        mask: (H, W) bool, or any dtype where non-zero means painted.

    Returns:
        (4,) float64.

    Raises:
        ValueError: the mask has no painted pixel (an empty mask has no box; callers decide whether to
            skip it or to report it).

    >>> m = np.zeros((5, 6), dtype=bool)
    >>> m[1:3, 2:5] = True
    >>> mask_to_xyxy(m)
    array([2., 1., 5., 3.])
    """
    mask = _as_bool_mask(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        raise ValueError("the mask is empty: it has no box")
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def mask_area(mask: np.ndarray) -> int:
    """Number of painted pixels.

    Args:
        mask: (H, W) bool, or any dtype where non-zero means painted.

    >>> mask_area(np.eye(3, dtype=bool))
    3
    """
    return int(np.count_nonzero(mask))


def polygons_to_coco(polygons: Sequence[np.ndarray]) -> list[list[float]]:
    """Polygons as a COCO ``segmentation`` list: ``[[x0, y0, x1, y1, ...], ...]``.

    Polygons with fewer than 3 vertices are left out: they enclose nothing, and ``pycocotools`` would read
    a 4-number list as a box.

    Args:
        polygons: sequence of (K, 2) xy.

    Returns:
        List of flat lists of Python floats.

    >>> polygons_to_coco([np.array([[1, 1], [3, 1], [3, 3]])])
    [[1.0, 1.0, 3.0, 1.0, 3.0, 3.0]]
    """
    flat = (np.asarray(p, dtype=np.float64).reshape(-1) for p in polygons)
    return [f.tolist() for f in flat if f.size >= 6]


def polygons_to_mask(polygons: Sequence[np.ndarray | Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterize polygons exactly as ``pycocotools`` does for a COCO polygon segmentation.

    Each polygon is filled with the even-odd rule, sampling every pixel at its centre (pixel-edge
    coordinates), and the polygons are united.

    Args:
        polygons: sequence of (K, 2) xy arrays or flat ``[x0, y0, x1, y1, ...]`` lists.
        height: H of the mask.
        width: W of the mask.

    Returns:
        (H, W) bool.

    >>> polygons_to_mask([[1, 0, 3, 0, 3, 2, 1, 2]], 3, 4).astype(int)
    array([[0, 1, 1, 0],
           [0, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    coco = polygons_to_coco(polygons)
    if not coco:
        return np.zeros((height, width), dtype=bool)
    rle = coco_mask.merge(coco_mask.frPyObjects(coco, height, width))
    return coco_mask.decode(rle).astype(bool)


def mask_to_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of a mask, ready for JSON.

    Args:
        mask: (H, W) bool, or any dtype where non-zero means painted.

    Returns:
        ``{"size": [H, W], "counts": str}`` (column-major runs, LEB128-like text as in COCO files).

    >>> rle = mask_to_coco_rle(np.eye(3, dtype=bool))
    >>> rle
    {'size': [3, 3], 'counts': '013000'}
    >>> coco_rle_to_mask(rle).astype(int)
    array([[1, 0, 0],
           [0, 1, 0],
           [0, 0, 1]])
    """
    mask = _as_bool_mask(mask)
    # pycocotools walks columns: it wants a Fortran-ordered uint8 array.
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE, compressed (``counts`` str or bytes) or not (``counts`` list of ints).

    Args:
        rle: ``{"size": [H, W], "counts": ...}``.

    Returns:
        (H, W) bool.

    >>> coco_rle_to_mask({"size": [2, 3], "counts": [1, 2, 3]}).astype(int)
    array([[0, 1, 0],
           [1, 0, 0]])
    """
    height, width = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        encoded = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        text = counts.encode("ascii") if isinstance(counts, str) else counts
        encoded = {"size": [height, width], "counts": text}
    return coco_mask.decode(encoded).astype(bool)
