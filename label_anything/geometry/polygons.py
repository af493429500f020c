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
building and splicing a ring for each costs far more than the pixels do. ``cv2.findContours`` walks the
mask's own pixels (not a grid of 4 points per pixel); each chain is turned into its crack ring by a table
lookup per point (``polygons_rings``), and every ring is first *measured*, all at once: parts below
``min_area`` are dropped and holes below it filled, only the ``max_parts`` largest parts and the
``max_holes`` largest holes of each part are kept, and only the kept rings are built and simplified. Where
outlines are dense (speckle, a noisy answer of a few megapixels: ``_looks_speckled``), tracing them costs
more than the pixels (~5 µs each in OpenCV), so parts and holes are labelled and selected on pixels first
and only the kept ones traced (``polygons_select``). Both ways give the same polygons, those of tracing the
crack grid whole. Splicing compares a bounded number of vertex pairs (``_MAX_BRIDGE_PAIRS``), so the whole
conversion is linear in the pixels of the mask's bounding box plus the vertices written.

No Label Studio knowledge here: percent coordinates live in ``label_anything.labelstudio``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from label_anything.geometry.polygons_rings import TracedChains, ring_index
from label_anything.geometry.polygons_select import kept_only, select

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
# Where a mask has more outlines than one per this many pixels, parts and holes are selected on its pixels
# before any is traced (see ``_looks_speckled``): measured break-even of the two ways on noisy masks.
_PIXELS_PER_OUTLINE = 1000


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


def _looks_speckled(crop: np.ndarray) -> bool:
    """Whether the crop has more than one outline per ``_PIXELS_PER_OUTLINE`` pixels, estimated from every
    7th pair of rows: speckle, or a noisy model answer at a few million pixels or less. There, selecting on
    pixels before tracing (``polygons_select``, about 7 ns a pixel) costs less than tracing every outline
    (about 5 µs each in ``findContours``); on smoother masks (an object, a noisy answer at 4000 x 3000) it
    costs more than it saves.

    The estimate is the Euler number (parts less holes) of the sampled pairs of rows, from their 2 x 2
    windows: one painted pixel counts +1/4, three -1/4, two on a diagonal -1/2 (8-connected parts).
    """
    top = crop[: len(crop) - 1 : 7].astype(np.int8)
    below = crop[1::7][: len(top)].astype(np.int8)
    window = top[:, :-1] + top[:, 1:] + below[:, :-1] + below[:, 1:]
    corners = np.count_nonzero(window == 1) - np.count_nonzero(window == 3)
    diagonals = np.count_nonzero((window == 2) & (top[:, :-1] == below[:, 1:]))
    return 7 * abs(corners - 2 * diagonals) / 4 * _PIXELS_PER_OUTLINE > crop.size


def _oriented(points: np.ndarray, lengths: np.ndarray, positive: np.ndarray) -> list[np.ndarray]:
    """Rings stored one after the other ((N, 2) float64, lengths (R,)) → one (L, 2) array per ring, wound
    with a positive shoelace area where ``positive`` (R,) bool, else negative, and starting at its top-left
    vertex (the first of the topmost, leftmost ones: so that the same mask always gives the same lists)."""
    starts, nxt, _ = ring_index(lengths)
    x, y = points[:, 0], points[:, 1]
    flip = (np.add.reduceat(x * y[nxt] - x[nxt] * y, starts) > 0) != positive
    ring = np.repeat(np.arange(len(lengths)), lengths)
    size, first = lengths[ring], starts[ring]
    top = y == np.minimum.reduceat(y, starts)[ring]
    top_left = top & (x == np.minimum.reduceat(np.where(top, x, np.inf), starts)[ring])
    corner = np.minimum.reduceat(np.where(top_left, np.arange(len(x)), len(x)), starts) - starts
    start = np.where(flip, lengths - 1 - corner, corner)[ring]
    at = (np.arange(len(points)) - first + start) % size
    source = points[first + np.where(flip[ring], size - 1 - at, at)]
    ends = np.cumsum(lengths)
    return [source[i:j] for i, j in zip((ends - lengths).tolist(), ends.tolist(), strict=True)]


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
    # Contours of the bounding crop only, with a margin of one unpainted pixel all round.
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    pad = np.zeros((crop.shape[0] + 2, crop.shape[1] + 2), dtype=np.uint8)
    pad[1:-1, 1:-1] = crop
    drops = min_area > 1 or max_parts is not None or max_holes is not None
    if drops and _looks_speckled(crop):
        pad = kept_only(pad, min_area, max_parts, max_holes)
        if pad is None:
            return []
    contours, hierarchy = cv2.findContours(pad, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    # RETR_CCOMP: top-level contours are outer rings, and the children of each are its holes. Every ring is
    # measured first (vectorised); only the kept ones are built, so specks and pinholes cost next to nothing.
    parent = hierarchy[0][:, 3]
    hole = parent != -1
    chains = TracedChains.of(contours)
    x0, y0 = chains.first()
    key = y0 * pad.shape[1] + x0  # reading order of each chain's first pixel
    kept = select(chains.areas(), key, parent, ~hole, min_area, max_parts, max_holes)
    outer = np.flatnonzero(kept & ~hole)
    if outer.size == 0:
        return []
    inner = np.flatnonzero(kept & hole)
    # Each kept part's outer ring, then its kept holes, the later first pixel first (findContours' order).
    ids = np.r_[outer, inner]
    ids = ids[np.lexsort((np.r_[np.zeros_like(outer), -key[inner]], hole[ids], np.r_[outer, parent[inner]]))]
    points, lengths = chains.rings(ids, hole[ids]).grid_rings(tolerance, _FEW_PIXELS_CHAIN)
    # Grid point (j, i) is the pixel-edge point ((j - 1) / 2, (i - 1) / 2) of the crop.
    origin = np.array([cols[0] - 0.5, rows[0] - 0.5])
    oriented = _oriented(points / 2.0 + origin, lengths, ~hole[ids])
    starts = np.flatnonzero(~hole[ids])
    out = [
        PolygonPart(oriented[a], tuple(oriented[a + 1 : b]))
        for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(ids)], strict=True)
    ]
    out.sort(key=lambda part: (part.outer[0, 1], part.outer[0, 0]))
    return out


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
    if not len(others):
        return ring
    sizes = np.fromiter((len(other) for other in others), dtype=np.int64, count=len(others))
    stack = np.concatenate(others, dtype=np.float64).reshape(-1, 2)
    offsets = np.cumsum(sizes) - sizes
    heads = stack[offsets]
    stride = -(-len(ring) * len(heads) // _MAX_BRIDGE_PAIRS)  # ceil
    candidates = ring[::stride]
    nearest = np.empty(len(heads), dtype=np.int64)
    rows = max(1, _MAX_BRIDGE_PAIRS // len(candidates))
    for a in range(0, len(heads), rows):  # chunks keep the distance matrix within the bound
        h = heads[a : a + rows]
        d2 = np.square(h[:, None, 0] - candidates[None, :, 0]) + np.square(h[:, None, 1] - candidates[None, :, 1])
        nearest[a : a + rows] = np.argmin(d2, axis=1) * stride
    # ring[..j], other, other[0], back to ring[j..]: the cut ring[j] -> other[0] is walked both ways. All the
    # pieces are ranges of ring and the others stacked after it, gathered in one pass.
    order = np.argsort(nearest, kind="stable")
    j = nearest[order]
    n = len(order)
    first = np.empty(3 * n + 1, dtype=np.int64)
    count = np.empty(3 * n + 1, dtype=np.int64)
    first[0:-1:3], count[0:-1:3] = np.r_[0, j[:-1]], j - np.r_[0, j[:-1]] + 1
    first[1::3], count[1::3] = len(ring) + offsets[order], sizes[order]
    first[2::3], count[2::3] = len(ring) + offsets[order], 1
    first[-1], count[-1] = j[-1], len(ring) - j[-1]
    source = np.repeat(first - (np.cumsum(count) - count), count) + np.arange(int(count.sum()))
    return np.concatenate([ring, stack])[source]


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
