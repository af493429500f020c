"""Polygons of boolean masks: outer rings and holes of every part, along pixel edges, in time linear in pixels.

Coordinates are *pixel-edge* coordinates (see ``label_anything.geometry.masks``): pixel ``(row r, column c)``
is the unit square ``[c, c + 1] x [r, r + 1]``. Polygons follow the cracks between pixels: ``cv2.findContours``
alone walks the centres of the border pixels, half a pixel inside, which cost 1.5 to 3 % IoU on real shapes
before any simplification (horse 0.976, donut 0.985).

Holes. A COCO polygon segmentation is a list of polygons that ``pycocotools`` rasterizes one by one and
then *unions*, so a hole cannot be a polygon of its own. Each connected part is therefore returned as one
"keyhole" polygon: the outer ring with every hole spliced in through a zero-width cut (a bridge walked
there and back). Under the even-odd rule (``pycocotools``) and under the non-zero rule (browser canvases,
with holes wound opposite to their outer ring, as here) the bridge cancels itself and the hole stays empty,
whatever it crosses. Callers that understand holes natively (shapely, GeoJSON) can use
``mask_to_polygon_parts``, which keeps outer rings and holes apart.

Cost. A noisy mask (foliage, hair, a random-weight model) has thousands of specks and pinholes, and
building and splicing a ring for each costs far more than the pixels do. So every traced outline is first
*measured*, all at once in a few array passes: parts below ``min_area`` are dropped and holes below it
filled, only the ``max_parts`` largest parts and the ``max_holes`` largest holes of each part are kept, and
only the kept rings are built and simplified. Splicing compares a bounded number of vertex pairs
(``_MAX_BRIDGE_PAIRS``), so the whole conversion is linear in the pixels of the mask's bounding box plus
the vertices written.

No Label Studio knowledge here: percent coordinates live in ``label_anything.labelstudio``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "PolygonPart",
    "mask_to_polygon_parts",
    "mask_to_polygons",
    "polygon_part_to_polygon",
    "splice_rings",
]

# Bridging rings compares vertices pairwise; one splice (all the holes of a part, or all the parts of a
# YOLO line) compares at most this many pairs, every n-th vertex being a candidate above it. The bridge
# stays short, and the cost stays bounded however many holes there are.
_MAX_BRIDGE_PAIRS = 1_000_000
# A chain of this many crack-grid points or fewer outlines a part of at most a few pixels (a 2 x 2 square
# has 16): it keeps its exact outline of at most 8 vertices, there is nothing to simplify.
_FEW_PIXELS_CHAIN = 16


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


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")
    return mask if mask.dtype == bool else mask != 0


def _without_specks(crop: np.ndarray, min_area: float) -> np.ndarray:
    """``crop`` (h, w) bool without the parts and with the holes whose bounding box holds fewer than
    ``min_area`` pixels: (h, w) uint8 0/1, two labelling passes and two table lookups.

    A bounding box holds at least the pixels its outline encloses, so this removes only parts and holes
    that ``mask_to_polygon_parts`` would drop anyway, before they cost a traced contour each (OpenCV spends
    ~13 µs per contour: on speckle, 50,000 pinholes).
    """
    out = crop.astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(out, connectivity=8)
    small = stats[:, cv2.CC_STAT_WIDTH] * stats[:, cv2.CC_STAT_HEIGHT] < min_area
    small[0] = False  # label 0: the unpainted pixels
    if small.any():
        out = (~small).astype(np.uint8)[labels] * out
    h, w = out.shape
    _, labels, stats, _ = cv2.connectedComponentsWithStats(1 - out, connectivity=4)
    x, y, bw, bh = (stats[:, k] for k in range(4))
    pinhole = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h) & (bw * bh < min_area)
    pinhole[0] = False  # label 0: the painted pixels
    if pinhole.any():
        out |= pinhole.astype(np.uint8)[labels]
    return out


def _looks_speckled(crop: np.ndarray) -> bool:
    """Whether the runs of a crop's rows (every 8th row sampled) are shorter than 16 pixels on average:
    speckle, where thousands of specks and pinholes make removing them first pay. On smoother masks (an
    object, a fragmented model answer at 4000 x 3000) the two labelling passes cost more than they save."""
    sample = crop[::8]
    return 16 * np.count_nonzero(sample[:, 1:] != sample[:, :-1]) > sample.size


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


def _ring_index(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rings stored one after the other (``lengths`` (R,) > 0): each ring's first index (R,), and for
    every vertex the index of the next and of the previous vertex of its own ring (N,) (closing the ring)."""
    ends = np.cumsum(lengths)
    starts = ends - lengths
    nxt = np.arange(1, int(ends[-1]) + 1)
    nxt[ends - 1] = starts
    prv = np.arange(-1, int(ends[-1]) - 1)
    prv[starts] = ends - 1
    return starts, nxt, prv


def _stacked(chains: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Contours as ``findContours`` gives them ((L, 1, 2) int32 each) → all points (N, 2) int64, lengths (R,)."""
    lengths = np.fromiter((len(c) for c in chains), dtype=np.int64, count=len(chains))
    return np.concatenate(chains)[:, 0].astype(np.int64), lengths


def _corner_rings(chains: Sequence[np.ndarray], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact pixel-edge rings of crack-grid chains, all at once: vertices (N, 2) int64 grid points, lengths (R,).

    findContours follows 8-connected border points, so at every concave corner of the cracks (and every
    corner of a hole) it steps diagonally past the corner point, cutting off an eighth of a pixel. The
    corner is put back (of the two points that complete the diagonal step, it is the one that is on), then
    only the turning points are kept.
    """
    points, lengths = _stacked(chains)
    starts, nxt, _ = _ring_index(lengths)
    following = points[nxt]
    diagonal = (points[:, 0] != following[:, 0]) & (points[:, 1] != following[:, 1])
    corner = np.stack([points[:, 0], following[:, 1]], axis=1)
    off = grid[corner[:, 1], corner[:, 0]] == 0
    corner[off] = np.stack([following[off, 0], points[off, 1]], axis=1)
    at = np.arange(len(points)) + np.cumsum(diagonal) - diagonal  # each corner goes right after its point
    ring = np.empty((len(points) + int(diagonal.sum()), 2), dtype=np.int64)
    ring[at] = points
    ring[at[diagonal] + 1] = corner[diagonal]
    lengths = lengths + np.add.reduceat(diagonal.astype(np.int64), starts)
    starts, nxt, prv = _ring_index(lengths)
    step = ring[nxt] - ring
    turning = np.any(step != step[prv], axis=1)
    return ring[turning], np.add.reduceat(turning.astype(np.int64), starts)


def _oriented(points: np.ndarray, lengths: np.ndarray, positive: np.ndarray) -> list[np.ndarray]:
    """Rings stored one after the other ((N, 2) float64, lengths (R,)) → one (L, 2) array per ring, wound
    with a positive shoelace area where ``positive`` (R,) bool, else negative, and starting at its top-left
    vertex (so that the same mask always gives the same lists)."""
    starts, nxt, _ = _ring_index(lengths)
    x, y = points[:, 0], points[:, 1]
    flip = (np.add.reduceat(x * y[nxt] - x[nxt] * y, starts) > 0) != positive
    ring = np.repeat(np.arange(len(lengths)), lengths)
    size, first = lengths[ring], starts[ring]
    top_left = np.lexsort((x, y, ring))[starts] - starts  # per ring, the index of its top-left vertex
    start = np.where(flip, lengths - 1 - top_left, top_left)[ring]
    at = (np.arange(len(points)) - first + start) % size
    source = first + np.where(flip[ring], size - 1 - at, at)
    return np.split(points[source], np.cumsum(lengths)[:-1])


def _outline_areas(contours: Sequence[np.ndarray], hole: np.ndarray) -> np.ndarray:
    """(N,) float64: the area in pixels of each traced outline's exact pixel-edge ring, for all at once.

    A chain of the crack grid steps diagonally past every concave corner of its part (every corner of a
    hole), which adds to the painted side a triangle of 1/8 pixel (a half grid cell): the exact ring's area
    is the chain's minus that much per diagonal step for an outer ring, plus it for a hole.
    """
    points, lengths = _stacked(contours)
    starts, nxt, _ = _ring_index(lengths)
    x, y = points[:, 0], points[:, 1]
    twice_area = np.add.reduceat(x * y[nxt] - x[nxt] * y, starts)  # grid units: 4 per pixel
    diagonals = np.add.reduceat(((x != x[nxt]) & (y != y[nxt])).astype(np.int64), starts)
    return np.abs(twice_area) / 8.0 + np.where(hole, 1.0, -1.0) * diagonals / 8.0


def mask_to_polygon_parts(
    mask: np.ndarray,
    *,
    tolerance: float = 1.0,
    min_area: float = 0.0,
    max_parts: int | None = None,
    max_holes: int | None = None,
) -> list[PolygonPart]:
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
        max_parts: keep only this many parts, the largest by area; None keeps all.
        max_holes: keep only this many holes per part, the largest (the others are filled); None keeps all.

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
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    # Contours of the bounding crop only: the grid is 4x the crop, not 4x the image.
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    if min_area > 1 and _looks_speckled(crop):
        crop = _without_specks(crop, min_area)
    grid = _crack_grid(crop)
    contours, hierarchy = cv2.findContours(grid, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if not contours:  # speckle whose every part was below min_area, removed before tracing
        return []
    links = hierarchy[0]  # per contour: next sibling, previous sibling, first child, parent
    # RETR_CCOMP: top-level contours are outer rings, and the children of each are its holes. Every ring is
    # measured first (vectorised); only the kept ones are built, so specks and pinholes cost next to nothing.
    hole = links[:, 3] != -1
    area = _outline_areas(contours, hole)
    big = area >= min_area
    tops = np.flatnonzero(~hole & big)
    if max_parts is not None and len(tops) > max_parts:
        tops = np.sort(tops[np.argsort(-area[tops], kind="stable")[:max_parts]])
    parts: list[list[int]] = []  # per kept part: its outer contour, then its kept holes
    for i in tops:
        children = []
        child = links[i, 2]
        while child != -1:
            if big[child]:
                children.append(int(child))
            child = links[child, 0]
        if max_holes is not None and len(children) > max_holes:
            children = sorted(sorted(children, key=lambda c: -area[c])[:max_holes])
        parts.append([int(i), *children])
    if not parts:
        return []
    kept = [c for part in parts for c in part]
    points, lengths = _traced_rings([contours[c] for c in kept], grid, tolerance)
    # Grid point (j, i) is the pixel-edge point ((j - 1) / 2, (i - 1) / 2) of the crop.
    origin = np.array([cols[0] - 0.5, rows[0] - 0.5])
    rings = iter(_oriented(points / 2.0 + origin, lengths, ~hole[kept]))
    out = []
    for part in parts:
        outer = next(rings)
        out.append(PolygonPart(outer, tuple(next(rings) for _ in part[1:])))
    out.sort(key=lambda part: (part.outer[0, 1], part.outer[0, 0]))
    return out


def _traced_rings(chains: Sequence[np.ndarray], grid: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """The ring of each crack-grid chain, in grid points: (N, 2) float64 stacked, lengths (R,).

    With ``tolerance > 0``: the outline through the midpoints of the unit cracks (one odd grid coordinate,
    one even; the marching-squares outline, smoother than the staircase of corners, so Douglas-Peucker
    keeps fewer vertices), simplified. Exact corner rings otherwise, for chains of a few pixels (nothing
    to simplify) and for rings that would collapse below 3 vertices.
    """
    rings: list[np.ndarray | None] = [None] * len(chains)
    if tolerance > 0:
        for k, chain in enumerate(chains):
            if len(chain) > _FEW_PIXELS_CHAIN:
                c = chain[:, 0]
                simple = cv2.approxPolyDP(c[((c[:, 0] ^ c[:, 1]) & 1) == 1], 2.0 * tolerance, closed=True)
                if len(simple) >= 3:
                    rings[k] = simple[:, 0]
    exact = [k for k, r in enumerate(rings) if r is None]
    if exact:
        corners, sizes = _corner_rings([chains[k] for k in exact], grid)
        for k, ring in zip(exact, np.split(corners, np.cumsum(sizes)[:-1]), strict=True):
            rings[k] = ring
    lengths = np.fromiter((len(r) for r in rings), dtype=np.int64, count=len(rings))
    return np.concatenate(rings).astype(np.float64), lengths


def splice_rings(ring: np.ndarray, others: Sequence[np.ndarray]) -> np.ndarray:
    """Join every ring of ``others`` (M_i, 2) into ``ring`` (K, 2), each by a zero-width cut from its first
    vertex to the closest vertex of ``ring``, walked there and back, so the cut encloses nothing:
    (K + sum(M_i + 2), 2) float64.

    For holes (which start at their top-left vertex) that is the keyhole polygon of a part; for rings beside
    it, one polygon of all of them (YOLO-seg's one line per object). At most ``_MAX_BRIDGE_PAIRS`` distances
    are computed (every n-th vertex of ``ring`` is a candidate above that), so thousands of pinholes cost
    milliseconds.

    >>> square = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]])
    >>> hole = np.array([[1.0, 1.0], [1.0, 2.0], [2.0, 2.0], [2.0, 1.0]])
    >>> splice_rings(square, [hole]).tolist()[:7]
    [[0.0, 0.0], [1.0, 1.0], [1.0, 2.0], [2.0, 2.0], [2.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    """
    ring = np.asarray(ring, dtype=np.float64)
    if not others:
        return ring
    others = [np.asarray(other, dtype=np.float64) for other in others]
    heads = np.array([other[0] for other in others])
    stride = -(-len(ring) * len(heads) // _MAX_BRIDGE_PAIRS)  # ceil
    candidates = ring[::stride]
    nearest = np.empty(len(heads), dtype=np.int64)
    rows = max(1, _MAX_BRIDGE_PAIRS // len(candidates))
    for a in range(0, len(heads), rows):  # chunks keep the distance matrix within the bound
        h = heads[a : a + rows]
        d2 = np.square(h[:, None, 0] - candidates[None, :, 0]) + np.square(h[:, None, 1] - candidates[None, :, 1])
        nearest[a : a + rows] = np.argmin(d2, axis=1) * stride
    # ring[..j], other, other[0], back to ring[j..]: the cut ring[j] -> other[0] is walked both ways.
    pieces: list[np.ndarray] = []
    at = 0
    for k in np.argsort(nearest, kind="stable"):
        j = int(nearest[k])
        pieces += [ring[at : j + 1], others[k], others[k][:1]]
        at = j
    pieces.append(ring[at:])
    return np.concatenate(pieces)


def polygon_part_to_polygon(part: PolygonPart) -> np.ndarray:
    """Splice a part's holes into its outer ring, giving one "keyhole" polygon.

    Each hole is joined from its first vertex to the nearest vertex of the outer ring by a zero-width cut
    walked there and back, which the even-odd and non-zero fill rules both cancel, so the polygon
    rasterizes to the part with its holes empty (see the module docstring for why COCO needs this).

    Args:
        part: outer ring (K, 2) and holes (M, 2), float xy.

    Returns:
        (K + sum(M + 2), 2) float64 xy.

    >>> from label_anything.geometry.masks import polygons_to_mask
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
    return splice_rings(part.outer, part.holes)


def mask_to_polygons(
    mask: np.ndarray,
    *,
    tolerance: float = 1.0,
    min_area: float = 0.0,
    max_parts: int | None = None,
    max_holes: int | None = None,
) -> list[np.ndarray]:
    """One polygon per connected part of a mask, holes spliced in, tracing pixel edges.

    The list is what a COCO polygon segmentation holds (see ``masks.polygons_to_coco``): rasterized with
    ``pycocotools`` (``masks.polygons_to_mask``) it gives back the mask, exactly at ``tolerance=0``, and
    within the simplification's tolerance otherwise. Linear in the pixels of the mask's bounding box and
    the vertices written, whatever the shape (see the module docstring).

    Args:
        mask: (H, W) bool, or any dtype where non-zero means painted.
        tolerance: Douglas-Peucker tolerance in pixels; 0 keeps every corner.
        min_area: drop parts, and fill holes, of fewer pixels than this.
        max_parts: keep only this many parts, the largest; None keeps all.
        max_holes: keep only this many holes per part, the largest (the others are filled); None keeps all.

    Returns:
        List of (K, 2) float64 xy in pixel-edge coordinates, one per kept part.

    >>> m = np.zeros((4, 8), dtype=bool)
    >>> m[1:3, 1:3] = True
    >>> m[0:4, 5:8] = True
    >>> [p.tolist() for p in mask_to_polygons(m, tolerance=0)]
    [[[5.0, 0.0], [8.0, 0.0], [8.0, 4.0], [5.0, 4.0]], [[1.0, 1.0], [3.0, 1.0], [3.0, 3.0], [1.0, 3.0]]]
    """
    parts = mask_to_polygon_parts(
        mask, tolerance=tolerance, min_area=min_area, max_parts=max_parts, max_holes=max_holes
    )
    return [polygon_part_to_polygon(part) for part in parts]
