"""Which parts and holes of a mask ``polygons`` keeps, decided on pixels before any outline is traced.

``cv2.findContours`` costs ~5 µs per contour, whatever its size: on a noisy mask (thousands of pinholes,
of which a click keeps 32 per part) tracing what is then dropped costs more than everything else. Here the
parts (8-connected) and the unpainted areas (4-connected) are labelled, measured and selected with the same
rules and the same tie-breaks as the traced outlines (see ``polygons.mask_to_polygon_parts``), and the mask
is redrawn with only what is kept, so that tracing it walks only the kept outlines:

- the area a part's or a hole's outline encloses is the signed sum of ``x`` over the vertical cracks
  between it and the area around it (its parent), one array pass over the row transitions;
- an unpainted area's parent is the part left of its first pixel, a part's parent the area next to any of
  its cracks that is not one of its holes (the first pixel of anything lies on the top row of what it is
  in); a dropped hole is filled, a dropped part erased, and what lies inside them follows them (pointer
  jumping over the tree of parts and holes, a few passes over its nodes);
- a dropped hole that holds a kept part (a small hole beyond ``max_holes`` around a large island) stays
  open, so that the island keeps its outline: it is traced, and dropped again by the same selection.

Kept outlines are unchanged by the redrawing: an outline depends only on the pixels of what it encloses.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["kept_only", "select"]


def select(
    area: np.ndarray,
    key: np.ndarray,
    parent: np.ndarray,
    is_part: np.ndarray,
    min_area: float,
    max_parts: int | None,
    max_holes: int | None,
) -> np.ndarray:
    """(N,) bool: the kept nodes of a tree of parts and holes (indices into the arrays, all (N,)).

    A part is kept when it encloses at least ``min_area`` pixels and is among the ``max_parts`` largest of
    those; a hole of a kept part when it does and is among the ``max_holes`` largest of its part's. Ties go
    to the larger ``key`` (the later first pixel in reading order: the order ``findContours`` lists them in).
    Every node that is not a part is taken for a hole of ``parent[node]`` (give the others a parent that is
    never kept).
    """
    big = area >= min_area
    kept = np.zeros(len(area), dtype=bool)
    parts = np.flatnonzero(is_part & big)
    if max_parts is not None and len(parts) > max_parts:
        parts = parts[np.lexsort((-key[parts], -area[parts]))[:max_parts]]
    kept[parts] = True
    holes = np.flatnonzero(~is_part & big)
    holes = holes[kept[parent[holes]]]
    if max_holes is not None and len(holes) > max_holes:
        holes = holes[np.lexsort((-key[holes], -area[holes], parent[holes]))]
        group = parent[holes]
        first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        rank = np.arange(len(holes)) - np.repeat(first, np.diff(np.r_[first, len(holes)]))
        holes = holes[rank < max_holes]
    kept[holes] = True
    return kept


def _inherited(state: np.ndarray, decided: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Every undecided node takes the state of its nearest decided ancestor: pointer jumping, each round
    over the nodes still undecided (rounds: log2 of the longest run of undecided ancestors)."""
    state, decided, jump = state.copy(), decided.copy(), parent.copy()
    todo = np.flatnonzero(~decided)
    while todo.size:
        up = jump[todo]
        done = decided[up]
        state[todo[done]] = state[up[done]]
        decided[todo[done]] = True
        todo = todo[~done]
        jump[todo] = jump[jump[todo]]
    return state


def kept_only(
    pad: np.ndarray, min_area: float, max_parts: int | None, max_holes: int | None
) -> np.ndarray | None:
    """``pad`` (H, W) uint8 0/1, with a margin of 0 all round, redrawn with the kept parts and holes only
    (and the open dropped holes, see the module docstring): (H, W) uint8 0/1, or None when nothing is kept."""
    n_parts, parts = cv2.connectedComponents(pad, connectivity=8, ltype=cv2.CV_32S)
    n_areas, areas = cv2.connectedComponents(1 - pad, connectivity=4, ltype=cv2.CV_32S)
    w = pad.shape[1]
    # Row transitions, in reading order: the crack between pixels (r, c) and (r, c + 1), at x = c + 1.
    t = np.flatnonzero(pad[:, 1:] != pad[:, :-1])
    left = t + t // (w - 1)  # flat index of the pixel left of the crack
    painted_left = pad.ravel()[left] == 1
    part = parts.ravel()[np.where(painted_left, left, left + 1)]
    around = areas.ravel()[np.where(painted_left, left + 1, left)]
    x = (t % (w - 1) + 1).astype(np.float64)
    # Node n of the tree: part n for n < n_parts, area n - n_parts otherwise. Label 0 of each is no node
    # (the other colour's pixels), nor is the outside a hole: their parent is node 0, never kept.
    first = np.full(n_parts + n_areas, len(t))
    np.minimum.at(first, part, np.arange(len(t)))
    np.minimum.at(first, around + n_parts, np.arange(len(t)))
    outside = int(areas[0, 0])
    parent = np.zeros(n_parts + n_areas, dtype=np.int64)
    area_parent = part[np.minimum(first[n_parts:], len(t) - 1)]
    area_parent[[0, outside]] = 0  # label 0: painted pixels; the outside is no hole
    parent[n_parts:] = area_parent
    in_hole = area_parent[around] == part  # the crack is on the outline of hole `around`
    ring = np.where(in_hole, around + n_parts, part)
    enclosed = np.abs(np.bincount(ring, weights=np.where(painted_left, -x, x), minlength=n_parts + n_areas))
    parent[part[~in_hole]] = around[~in_hole] + n_parts
    is_part = np.arange(n_parts + n_areas) < n_parts
    is_hole = np.r_[np.zeros(n_parts, dtype=bool), area_parent > 0]
    exists = is_part | is_hole
    exists[0] = False
    kept = select(enclosed, first, parent, is_part & exists, min_area, max_parts, max_holes) & exists
    if not kept[:n_parts].any():
        return None
    # On: kept parts and filled holes. Off: the outside, kept holes, and dropped holes holding a kept part.
    # Dropped parts and everything inside them follow what they lie in.
    kept_part = kept & is_part
    hole_of_kept = is_hole & kept_part[parent]
    holds_kept = np.zeros(n_parts + n_areas, dtype=bool)
    holds_kept[parent[kept_part]] = True
    decided = kept_part | hole_of_kept | ~exists
    decided[n_parts + outside] = True
    state = kept_part | (hole_of_kept & ~kept & ~holds_kept)
    state = _inherited(state, decided, parent).astype(np.uint8)
    state[0] = state[n_parts] = 0
    return np.take(state[:n_parts], parts) | np.take(state[n_parts:], areas)
