"""The pixel-edge rings that ``cv2.findContours`` chains follow, for all chains at once (see ``polygons``).

``findContours`` on a mask walks the centres of border pixels (Suzuki-Abe border following: parts
8-connected, holes 4-connected). At each chain point it scans the pixel's 8 neighbours counterclockwise on
screen, from the previous point to the next; every neighbour it passes is unpainted for an outer chain, or
lies in the hole for a hole's chain. So the sides of the pixel that the outline follows there are the sides
passed in that scan: one table lookup per point turns every chain into its ring of unit cracks, each walked
with its painted pixel on the left. A lone pixel is a chain of one point and all four of its sides.

Coordinates here are those of a crop with a margin of one unpainted pixel (what ``polygons`` traces): a crack
vertex ``(X, Y)`` is the corner of the margined crop's pixels; ``2X - 1, 2Y - 1`` is the same point on the
unmargined crop's *crack grid* (two samples per pixel, odd indices on pixel edges), where the midpoint of a
crack from ``(X, Y)`` along ``(dx, dy)`` is ``2X - 1 + dx, 2Y - 1 + dy``. The polygons of this package are
defined on that grid (they were traced there, and are bit for bit the same): a grid chain of a ring is its
crack vertices and midpoints, less one vertex per right turn (where the border following steps diagonally).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CrackRings", "TracedChains", "ring_index"]

# The 8 neighbours counterclockwise on screen (y down): N, NW, W, SW, S, SE, E, NE (codes 0-7, sides even);
# code 8 stands for a chain of one point (a lone pixel: all four sides, from its top-left corner down).
_DX = np.array([0, -1, -1, -1, 0, 1, 1, 1])
_DY = np.array([-1, -1, 0, 1, 1, 1, 0, -1])
_LONE = 8
# Rings of up to this many cracks are looked up by shape before Douglas-Peucker (see ``grid_rings``).
_SHAPES_UP_TO = 64
# Side k (0 N, 1 W, 2 S, 3 E) of pixel (x, y), walked with the pixel on its left: first vertex, direction.
_SIDE_X0 = np.array([1, 0, 0, 1])
_SIDE_Y0 = np.array([0, 0, 1, 1])
_SIDE_DX = np.array([-1, 0, 1, 0])
_SIDE_DY = np.array([0, 1, 0, -1])


def _side_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """By ``9 * into + out`` (the steps into and out of a chain point, each ``(dy + 1) * 3 + dx + 1``): how
    many sides the scan passes (81,); which, in walking order (81, 4); and their shoelace terms
    ``x dy - y dx`` summed, as coefficients of the pixel's x, y and 1 (3, 81): W adds x, N adds y, S adds
    -y - 1, E adds -x - 1. A lone point steps nowhere (step 4, both ways)."""
    count = np.zeros(81, dtype=np.int64)
    sides = np.zeros((81, 4), dtype=np.int64)
    terms = np.zeros((3, 81), dtype=np.int32)
    coefficients = np.array([[0, 1, 0], [1, 0, 0], [0, -1, -1], [-1, 0, -1]])
    code = np.full(9, _LONE)  # direction code of a step
    code[(_DY + 1) * 3 + _DX + 1] = np.arange(8)
    for into in range(9):
        for out in range(9):
            back, forward = (code[into] + 4) % 8 if into != 4 else _LONE, code[out]
            if (back == _LONE) != (forward == _LONE):
                continue
            steps = (forward - back) % 8 or 8  # back == forward: the scan went all the way round
            passed = [(back + k) % 8 // 2 for k in range(1, steps) if (back + k) % 2 == 0]
            if back == _LONE:
                passed = [1, 2, 3, 0]
            k = 9 * into + out
            count[k] = len(passed)
            sides[k, : len(passed)] = passed
            terms[:, k] = coefficients[passed].sum(axis=0)
    return count, sides, terms


_SIDE_COUNT, _SIDES, _SIDE_TERMS = _side_tables()
# By scan and side: where in the scan's sides that side is walked, or -8 (not there).
_SIDE_AT = np.full((81, 4), -8, dtype=np.int64)
for _k in range(81):
    _SIDE_AT[_k, _SIDES[_k, : _SIDE_COUNT[_k]]] = np.arange(_SIDE_COUNT[_k])


def ring_index(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rings stored one after the other (``lengths`` (R,) > 0): each ring's first index (R,), and for
    every vertex the index of the next and of the previous vertex of its own ring (N,) (closing the ring)."""
    ends = np.cumsum(lengths)
    starts = ends - lengths
    nxt = np.arange(1, int(ends[-1]) + 1)
    nxt[ends - 1] = starts
    prv = np.arange(-1, int(ends[-1]) - 1)
    prv[starts] = ends - 1
    return starts, nxt, prv


@dataclass(frozen=True, eq=False)
class CrackRings:
    """Rings of unit cracks stored one after the other: crack ``i`` runs from ``(x[i], y[i])`` to
    ``(x[i] + dx[i], y[i] + dy[i])`` (int64, margined-crop vertices); ``lengths`` (R,) cracks per ring."""

    x: np.ndarray
    y: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    lengths: np.ndarray

    def grid_rings(self, tolerance: float, few_points: int) -> tuple[np.ndarray, np.ndarray]:
        """Each ring on the crack grid, (N, 2) float64 xy stacked, lengths (R,).

        With ``tolerance > 0``, a ring whose grid chain has more than ``few_points`` points is its crack
        midpoints simplified by Douglas-Peucker (``cv2.approxPolyDP``, tolerance doubled: two grid steps per
        pixel), unless that leaves fewer than 3 vertices. The other rings are exact: their turning vertices.
        """
        starts, nxt, prv = ring_index(self.lengths)
        turning = (self.dx != self.dx[prv]) | (self.dy != self.dy[prv])
        corners = np.stack([2 * self.x[turning] - 1, 2 * self.y[turning] - 1], axis=1)
        sizes = np.add.reduceat(turning.astype(np.int64), starts)
        if tolerance <= 0:
            return corners.astype(np.float64), sizes
        right_turns = np.add.reduceat((self.dx * self.dy[nxt] - self.dy * self.dx[nxt] > 0).astype(np.int64), starts)
        simple: dict[int, np.ndarray] = {}
        mid = np.stack([2 * self.x - 1 + self.dx, 2 * self.y - 1 + self.dy], axis=1).astype(np.int32)
        # Douglas-Peucker sees only differences of points: a ring the same shape as one simplified before
        # (small holes of a noisy mask often are) is that answer, moved.
        shape = mid - np.repeat(mid[starts], self.lengths, axis=0)
        seen: dict[bytes, np.ndarray] = {}
        long = np.flatnonzero(2 * self.lengths - right_turns > few_points)
        for k, a, n in zip(long.tolist(), starts[long].tolist(), self.lengths[long].tolist(), strict=True):
            if n > _SHAPES_UP_TO:
                ring = cv2.approxPolyDP(mid[a : a + n], 2.0 * tolerance, closed=True)[:, 0]
            else:
                key = shape[a : a + n].tobytes()
                moved = seen.get(key)
                if moved is None:
                    ring = cv2.approxPolyDP(mid[a : a + n], 2.0 * tolerance, closed=True)[:, 0]
                    seen[key] = ring - mid[a]
                else:
                    ring = moved + mid[a]
            if len(ring) >= 3:
                simple[k] = ring
        if not simple:
            return corners.astype(np.float64), sizes
        corner_ends = np.cumsum(sizes).tolist()
        rings = [
            simple[k] if k in simple else corners[e - n : e]
            for k, (e, n) in enumerate(zip(corner_ends, sizes.tolist(), strict=True))
        ]
        lengths = sizes.copy()
        lengths[list(simple)] = [len(r) for r in simple.values()]
        return np.concatenate(rings).astype(np.float64), lengths


@dataclass(frozen=True, eq=False)
class TracedChains:
    """The chains ``cv2.findContours(..., CHAIN_APPROX_NONE)`` gave, stacked: points (N,) int32 x, y (on a
    crop with a margin of one unpainted pixel), ``lengths`` (R,), and per point the scan it stands for
    (``9 * into + out``, its steps, see ``_side_tables``). Measuring is a few passes over the points; only the rings
    asked for are built."""

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray
    scan: np.ndarray

    @classmethod
    def of(cls, chains: Sequence[np.ndarray]) -> TracedChains:
        lengths = np.fromiter((len(c) for c in chains), dtype=np.int64, count=len(chains))
        points = np.concatenate(chains).reshape(-1, 2)
        x, y = np.ascontiguousarray(points[:, 0]), np.ascontiguousarray(points[:, 1])
        ends = np.cumsum(lengths)
        starts = ends - lengths
        out = np.empty_like(x)  # (dy + 1) * 3 + dx + 1 of the step to the next point of the ring
        out[:-1] = (y[1:] - y[:-1]) * 3 + (x[1:] - x[:-1]) + 4
        out[ends - 1] = (y[starts] - y[ends - 1]) * 3 + (x[starts] - x[ends - 1]) + 4
        into = np.empty_like(out)
        into[1:] = out[:-1]
        into[starts] = out[ends - 1]
        return cls(x, y, lengths, 9 * into + out)

    def first(self) -> tuple[np.ndarray, np.ndarray]:
        """The first point of each chain, (R,) x and y (int64)."""
        starts = np.cumsum(self.lengths) - self.lengths
        return self.x[starts].astype(np.int64), self.y[starts].astype(np.int64)

    def areas(self) -> np.ndarray:
        """(R,) float64: the pixels each chain's crack ring encloses (its shoelace, exact)."""
        a, b, c = (np.take(t, self.scan) for t in _SIDE_TERMS)
        twice = a * self.x + b * self.y + c
        return np.abs(np.add.reduceat(twice, np.cumsum(self.lengths) - self.lengths, dtype=np.int64)) / 2.0

    def rings(self, ids: np.ndarray, hole: np.ndarray) -> CrackRings:
        """The crack rings of chains ``ids`` (K,), in that order, each started where ``findContours`` starts
        it on the crack grid: an outer ring (``hole`` False) at the top-left corner of its first pixel (the
        chain's first point) going down, a hole's ring at the middle of the right side of the chain's first
        point (the left side of the hole's first pixel) going up."""
        starts = np.cumsum(self.lengths) - self.lengths
        lengths = self.lengths[ids]
        point_starts = np.cumsum(lengths) - lengths
        at = np.repeat(starts[ids] - point_starts, lengths) + np.arange(int(lengths.sum()))
        x, y, scan = np.take(self.x, at), np.take(self.y, at), np.take(self.scan, at)
        count = np.take(_SIDE_COUNT, scan)
        point = np.repeat(np.arange(len(at)), count)
        edge_starts = np.cumsum(count) - count
        side = np.take(_SIDES.ravel(), 4 * np.take(scan, point) + np.arange(len(point)) - np.repeat(edge_starts, count))
        ring_lengths = np.add.reduceat(count, point_starts)
        ring_starts = edge_starts[point_starts]
        # The start: the first point's west side (outer) or east side (hole), walked at one of its visits:
        # mostly the first (one table lookup), else found among the ring's cracks.
        target = np.where(hole, 3, 1)
        begin = ring_starts + _SIDE_AT[scan[point_starts], target]
        elsewhere = np.flatnonzero(begin < ring_starts)
        if elsewhere.size:
            ring = np.repeat(np.arange(len(ids)), lengths)
            first = (x == x[point_starts][ring]) & (y == y[point_starts][ring])
            edge_ring = ring[point]
            found = np.flatnonzero(first[point] & (side == target[edge_ring]))
            begin[elsewhere] = found[np.isin(edge_ring[found], elsewhere)]
        rotation = np.repeat(begin - ring_starts, ring_lengths)
        order = np.arange(len(point)) + rotation
        order -= np.repeat(ring_lengths, ring_lengths) * (order >= np.repeat(ring_starts + ring_lengths, ring_lengths))
        side, point = np.take(side, order), np.take(point, order)
        return CrackRings(
            np.take(x, point) + np.take(_SIDE_X0, side),
            np.take(y, point) + np.take(_SIDE_Y0, side),
            np.take(_SIDE_DX, side),
            np.take(_SIDE_DY, side),
            ring_lengths,
        )
