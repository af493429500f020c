"""Geometry on boolean masks: boxes, areas, polygons (holes, several parts) and COCO RLE.

Coordinates are *pixel-edge* coordinates: pixel ``(row r, column c)`` is the unit square
``[c, c + 1] x [r, r + 1]``, so its centre is ``(c + 0.5, r + 0.5)``. This is the convention of COCO
boxes and of ``pycocotools``' polygon rasterizer (it samples each pixel at its centre), and it makes a
box or a polygon contain the mask's pixels rather than pass through their centres. Polygons follow the
cracks between pixels: ``cv2.findContours`` alone walks the centres of the border pixels, half a pixel
inside, which cost 1.5 to 3 % IoU on real shapes before any simplification (horse 0.976, donut 0.985).

Holes. A COCO polygon segmentation is a list of polygons that ``pycocotools`` rasterizes one by one and
then *unions*, so a hole cannot be a polygon of its own. Each connected part is therefore returned as one
"keyhole" polygon: the outer ring with every hole spliced in through a zero-width cut (a bridge walked
there and back). Under the even-odd rule (``pycocotools``) and under the non-zero rule
(browser canvases, with holes wound opposite to their outer ring, as here) the bridge cancels itself and the
hole stays empty. Callers that understand holes natively (shapely, GeoJSON) can use
``mask_to_polygon_parts``, which keeps outer rings and holes apart.

No Label Studio knowledge here: percent coordinates and brush RLE live in ``label_anything.labelstudio``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from label_anything.geometry.coords import xyxy_to_xywh

__all__ = [
    "PolygonPart",
    "coco_rle_to_mask",
    "mask_area",
    "mask_to_coco_rle",
    "mask_to_polygon_parts",
    "mask_to_polygons",
    "mask_to_xyxy",
    "polygon_part_to_polygon",
    "polygons_to_coco",
    "polygons_to_mask",
    "xyxy_to_xywh",
]

# Bridging a hole compares hole vertices with ring vertices pairwise; above this many pairs only every
# n-th hole vertex is a candidate, which bounds the cost while the bridge stays short.
_MAX_BRIDGE_PAIRS = 1_000_000


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


@dataclass(frozen=True, eq=False)
class PolygonPart:
    """One connected part of a mask as polygons in pixel-edge coordinates.

    Attributes:
        outer: (K, 2) float64 xy, the outer ring, positive shoelace area (clockwise on screen, where y
            points down); the closing vertex is implied, not repeated.
        holes: (M, 2) float64 xy rings of the part's holes, wound the other way (negative shoelace area).
    """

    outer: np.ndarray
    holes: tuple[np.ndarray, ...] = ()


def _crack_grid(mask: np.ndarray) -> np.ndarray:
    # Sample the plane twice per pixel: grid point (2r + 2, 2c + 2) is the centre of pixel (r, c), and odd
    # indices lie on pixel edges (corners where both are odd). A point is on when the *closed* square of a
    # painted pixel holds it, so the border points of the grid lie exactly on the cracks between painted
    # and unpainted pixels, and findContours (which walks border points) walks the pixel edges. The grid
    # has one point of margin on each side, which keeps contours off the array border.
    h, w = mask.shape
    centres = np.zeros((2 * h + 3, 2 * w + 3), dtype=np.uint8)
    centres[2:-1:2, 2:-1:2] = mask
    return cv2.dilate(centres, np.ones((3, 3), dtype=np.uint8))


def _corner_ring(chain: np.ndarray, grid: np.ndarray) -> np.ndarray:
    # findContours follows 8-connected border points, so at every concave corner of the cracks (and every
    # corner of a hole) it steps diagonally past the corner point, cutting off an eighth of a pixel.
    # Put the corner back: of the two points that complete the diagonal step, it is the one that is on.
    nxt = np.roll(chain, -1, axis=0)
    diagonal = (chain[:, 0] != nxt[:, 0]) & (chain[:, 1] != nxt[:, 1])
    corner = np.stack([chain[:, 0], nxt[:, 1]], axis=1)
    off = grid[corner[:, 1], corner[:, 0]] == 0
    corner[off] = np.stack([nxt[off, 0], chain[off, 1]], axis=1)
    ring = np.empty((len(chain) + int(diagonal.sum()), 2), dtype=chain.dtype)
    at = np.arange(len(chain)) + np.concatenate([[0], np.cumsum(diagonal)[:-1]])
    ring[at] = chain
    ring[at[diagonal] + 1] = corner[diagonal]
    # Keep the turning points only.
    step = np.roll(ring, -1, axis=0) - ring
    return ring[np.any(step != np.roll(step, 1, axis=0), axis=1)]


def _midpoint_ring(chain: np.ndarray) -> np.ndarray:
    # The midpoints of the unit cracks (one odd grid coordinate, one even): the marching-squares outline,
    # which cuts convex pixel corners and fills concave ones by the same eighth of a pixel. Smoother than
    # the staircase of corners, so Douglas-Peucker needs fewer vertices for the same fidelity.
    odd = chain % 2 == 1
    return chain[odd[:, 0] != odd[:, 1]]


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _oriented(ring: np.ndarray, positive: bool) -> np.ndarray:
    if (_signed_area(ring) > 0) != positive:
        ring = ring[::-1]
    # Start at the top-left vertex so that the same mask always gives the same lists.
    return np.roll(ring, -int(np.lexsort((ring[:, 0], ring[:, 1]))[0]), axis=0)


def mask_to_polygon_parts(mask: np.ndarray, *, tolerance: float = 1.0, min_area: float = 0.0) -> list[PolygonPart]:
    """Outer ring and holes of every connected part of a mask, along pixel edges.

    Parts are 8-connected (holes 4-connected), as in ``cv2.findContours``; an island inside a hole is a
    part of its own. With ``tolerance=0`` the rings are the exact pixel outlines (a vertex at every
    corner): they rasterize back to the mask exactly, and two pixels that touch only at a corner give a
    ring that pinches there. With ``tolerance > 0`` the outline through the midpoints of the pixel edges
    is simplified with Douglas-Peucker (``cv2.approxPolyDP``); a ring that would collapse below 3 vertices
    keeps its exact outline instead, so small parts never vanish by accident (``min_area`` removes them
    on purpose).

    Args:
        mask: (H, W) bool, or any dtype where non-zero means painted.
        tolerance: Douglas-Peucker tolerance in pixels; 0 keeps every corner.
        min_area: parts whose outer ring encloses fewer pixels than this are dropped, and holes of fewer
            pixels than this are filled (areas of the exact outlines).

    Returns:
        One ``PolygonPart`` per kept part, in reading order of their top-left vertices; rings as (K, 2)
        float64 xy in pixel-edge coordinates, starting at their top-left vertex.

    >>> m = np.zeros((6, 6), dtype=bool)
    >>> m[1:5, 1:5] = True
    >>> m[2:4, 2:4] = False
    >>> [part] = mask_to_polygon_parts(m, tolerance=0)
    >>> part.outer.tolist()
    [[1.0, 1.0], [5.0, 1.0], [5.0, 5.0], [1.0, 5.0]]
    >>> [hole.tolist() for hole in part.holes]
    [[[2.0, 2.0], [2.0, 4.0], [4.0, 4.0], [4.0, 2.0]]]
    """
    mask = _as_bool_mask(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(mask.any(axis=0))
    # Contours of the bounding crop only: the grid is 4x the crop, not 4x the image.
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    grid = _crack_grid(crop)
    contours, hierarchy = cv2.findContours(grid, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    # Grid point (j, i) is the pixel-edge point ((j - 1) / 2, (i - 1) / 2) of the crop.
    origin = np.array([cols[0] - 0.5, rows[0] - 0.5])

    def ring(i: int, outer: bool) -> np.ndarray | None:
        chain = contours[i][:, 0]
        exact = _corner_ring(chain, grid) / 2.0 + origin
        if abs(_signed_area(exact)) < max(min_area, 0.5):
            return None
        if tolerance > 0:
            midpoints = (_midpoint_ring(chain) / 2.0 + origin).astype(np.float32)
            simple = cv2.approxPolyDP(midpoints, tolerance, closed=True)
            if len(simple) >= 3:
                exact = simple[:, 0].astype(np.float64)
        return _oriented(exact, positive=outer)

    parts: list[PolygonPart] = []
    links = hierarchy[0]  # per contour: next sibling, previous sibling, first child, parent
    # RETR_CCOMP: top-level contours are outer rings, and the children of each are its holes.
    for i in np.flatnonzero(links[:, 3] == -1):
        outer = ring(i, outer=True)
        if outer is None:
            continue
        holes = []
        child = links[i, 2]
        while child != -1:
            hole = ring(child, outer=False)
            if hole is not None:
                holes.append(hole)
            child = links[child, 0]
        parts.append(PolygonPart(outer, tuple(holes)))
    parts.sort(key=lambda part: (part.outer[0, 1], part.outer[0, 0]))
    return parts


def splice_ring(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Join ``hole`` (M, 2) into ``ring`` (K, 2) by a zero-width cut between their closest vertices, walked
    there and back, so the cut encloses nothing: (K + M + 2, 2). For a hole that is its hole; for a ring
    beside it, the two become one polygon of both (YOLO-seg's one-line-per-object). Large rings are searched
    with a stride so that the cost stays bounded (``_MAX_BRIDGE_PAIRS`` pairs)."""
    stride = max(1, len(hole) * len(ring) // _MAX_BRIDGE_PAIRS)
    candidates = hole[::stride]
    d2 = ((candidates[:, None, :] - ring[None, :, :]) ** 2).sum(axis=2)
    k, j = np.unravel_index(int(np.argmin(d2)), d2.shape)
    k *= stride
    # ring[..j], hole[k..], hole[..k], back to ring[j..]: the cut ring[j] -> hole[k] is walked both ways.
    return np.concatenate([ring[: j + 1], np.roll(hole, -k, axis=0), hole[k : k + 1], ring[j:]])


def polygon_part_to_polygon(part: PolygonPart) -> np.ndarray:
    """Splice a part's holes into its outer ring, giving one "keyhole" polygon.

    Each hole is joined to the nearest vertex of the ring built so far by a zero-width cut walked there
    and back, which the even-odd and non-zero fill rules both cancel, so the polygon rasterizes to the
    part with its holes empty (see the module docstring for why COCO needs this).

    Args:
        part: outer ring (K, 2) and holes (M, 2), float xy.

    Returns:
        (K + sum(M + 2), 2) float64 xy.

    >>> part = PolygonPart(
    ...     np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]]),
    ...     (np.array([[1.0, 1.0], [1.0, 3.0], [3.0, 3.0], [3.0, 1.0]]),),
    ... )
    >>> polygons_to_mask([polygon_part_to_polygon(part)], 4, 4).astype(int)
    array([[1, 1, 1, 1],
           [1, 0, 0, 1],
           [1, 0, 0, 1],
           [1, 1, 1, 1]])
    """
    ring = np.asarray(part.outer, dtype=np.float64)
    for hole in part.holes:
        ring = splice_ring(ring, np.asarray(hole, dtype=np.float64))
    return ring


def mask_to_polygons(
    mask: np.ndarray,
    *,
    tolerance: float = 1.0,
    min_area: float = 0.0,
    max_parts: int | None = None,
    max_holes: int | None = None,
) -> list[np.ndarray]:
    """One polygon per connected part of a mask, holes spliced in, tracing pixel edges.

    The list is what a COCO polygon segmentation holds (see ``polygons_to_coco``): rasterized with
    ``pycocotools`` (``polygons_to_mask``) it gives back the mask, exactly at ``tolerance=0``, and within
    the simplification's tolerance otherwise.

    Args:
        mask: (H, W) bool, or any dtype where non-zero means painted.
        tolerance: Douglas-Peucker tolerance in pixels; 0 keeps every corner.
        min_area: drop parts, and fill holes, that enclose fewer pixels than this.
        max_parts: keep only this many parts, the largest; None keeps all.
        max_holes: keep only this many holes per part, the largest (the others are filled); None keeps
            all. Splicing holes costs time that grows with the square of their number: a noisy mask
            with thousands of pinholes takes seconds without a cap, milliseconds with one.

    Returns:
        List of (K, 2) float64 xy in pixel-edge coordinates, one per kept part.

    >>> m = np.zeros((4, 8), dtype=bool)
    >>> m[1:3, 1:3] = True
    >>> m[0:4, 5:8] = True
    >>> [p.tolist() for p in mask_to_polygons(m, tolerance=0)]
    [[[5.0, 0.0], [8.0, 0.0], [8.0, 4.0], [5.0, 4.0]], [[1.0, 1.0], [3.0, 1.0], [3.0, 3.0], [1.0, 3.0]]]
    """
    parts = mask_to_polygon_parts(mask, tolerance=tolerance, min_area=min_area)
    if max_parts is not None and len(parts) > max_parts:
        largest = sorted(range(len(parts)), key=lambda i: -abs(_signed_area(parts[i].outer)))[:max_parts]
        parts = [parts[i] for i in sorted(largest)]  # keep reading order
    if max_holes is not None:
        parts = [
            PolygonPart(p.outer, tuple(sorted(p.holes, key=lambda h: -abs(_signed_area(h)))[:max_holes]))
            if len(p.holes) > max_holes
            else p
            for p in parts
        ]
    return [polygon_part_to_polygon(part) for part in parts]


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
