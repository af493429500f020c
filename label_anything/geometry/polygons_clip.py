"""Cutting a polygon to a rectangle (Sutherland-Hodgman), in pixels: nothing of any file format here.

Polygons are (K, 2) float64 x, y in pixel-edge coordinates (see ``label_anything.geometry.coords``).
"""

from __future__ import annotations

import numpy as np


def _clip_half(points: np.ndarray, axis: int, limit: float, below: bool) -> np.ndarray:
    # One Sutherland-Hodgman step: keep the side of the line coord[axis] = limit that holds the image.
    nxt = np.roll(points, -1, axis=0)
    inside = points[:, axis] <= limit if below else points[:, axis] >= limit
    crosses = inside != np.roll(inside, -1)
    delta = nxt[:, axis] - points[:, axis]
    t = np.where(crosses, (limit - points[:, axis]) / np.where(crosses, delta, 1.0), 0.0)
    cut = points * (1.0 - t[:, None]) + nxt * t[:, None]  # never overflows, unlike p + t * (q - p)
    cut[:, axis] = limit
    both = np.stack([points, cut], axis=1).reshape(-1, 2)
    return both[np.stack([inside, crosses], axis=1).reshape(-1)]


def clip_polygon(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A polygon (K, 2) cut to the box ``[x0, x1] × [y0, y1]`` (even-odd filling inside it is kept: what is
    cut away is replaced by runs along the box's border). Returned as is when it lies inside the box."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0 or ((points.min(axis=0) >= [x0, y0]).all() and (points.max(axis=0) <= [x1, y1]).all()):
        return points
    for axis, limit, below in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        if len(points) == 0:
            break
        points = _clip_half(points, axis, float(limit), below)
    return points


def bounded_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """A polygon whose vertices lie within one image size of the image, cut there when they do not.

    pycocotools upsamples every edge, so a vertex a billion pixels away would cost a billion steps (or
    overflow its ints). A polygon within that margin is kept exactly as drawn; the edges of one that is cut
    keep their direction, so the pixels inside the image change by at most a rounding of pycocotools'.
    """
    margin = float(max(width, height))
    return clip_polygon(points, -margin, -margin, width + margin, height + margin)
