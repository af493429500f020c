"""geometry.polygons' fast paths against a simple reference, and their cost bounded on the worst shapes.

The reference traces the whole crack grid (every pixel a closed 3 x 3 block of a doubled grid, walked by
``cv2.findContours``: its border points are the pixel edges), measures every traced ring, keeps parts and
holes by the documented rules, and builds each kept ring one at a time: what ``polygons`` did before it
traced pixel chains and selected on pixels first. The fast paths must give the very same arrays.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from label_anything.geometry import polygons, polygons_select
from label_anything.geometry.polygons import PolygonPart, mask_to_polygon_parts, mask_to_polygons, splice_rings


def _crack_grid(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    centres = np.zeros((2 * h + 3, 2 * w + 3), dtype=np.uint8)
    centres[2:-1:2, 2:-1:2] = mask
    return cv2.dilate(centres, np.ones((3, 3), dtype=np.uint8))


def _exact_ring(chain: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A grid chain's turning vertices, corners put back where the chain steps diagonally past them."""
    ring = []
    for a, b in zip(chain, np.roll(chain, -1, axis=0), strict=True):
        ring.append(a)
        if a[0] != b[0] and a[1] != b[1]:
            corner = (a[0], b[1]) if grid[b[1], a[0]] else (b[0], a[1])
            ring.append(np.array(corner))
    ring = np.array(ring)
    step = np.roll(ring, -1, axis=0) - ring
    return ring[np.any(step != np.roll(step, 1, axis=0), axis=1)]


def _shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(float), ring[:, 1].astype(float)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _normalised(ring: np.ndarray, positive: bool) -> np.ndarray:
    if (_shoelace(ring) > 0) != positive:
        ring = ring[::-1]
    first = min(range(len(ring)), key=lambda i: (ring[i, 1], ring[i, 0], i))
    return np.roll(ring, -first, axis=0)


def reference_parts(mask, *, tolerance=1.0, min_area=0.0, max_parts=None, max_holes=None) -> list[PolygonPart]:
    mask = np.asarray(mask) != 0
    if not mask.any():
        return []
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    grid = _crack_grid(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    contours, hierarchy = cv2.findContours(grid, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    links = hierarchy[0]
    exact = [_exact_ring(c[:, 0].astype(np.int64), grid) for c in contours]
    area = [abs(_shoelace(r)) / 4.0 for r in exact]  # grid units: 4 per pixel
    # findContours lists a part, then its holes; ties in area go to the earlier listed.
    tops = [i for i in range(len(contours)) if links[i, 3] == -1 and area[i] >= min_area]
    tops = sorted(sorted(tops, key=lambda i: -area[i])[:max_parts])
    parts = []
    for i in tops:
        holes = [c for c in range(len(contours)) if links[c, 3] == i and area[c] >= min_area]
        parts.append([i, *sorted(sorted(holes, key=lambda c: -area[c])[:max_holes])])
    origin = np.array([cols[0] - 0.5, rows[0] - 0.5])
    out = []
    for part in parts:
        rings = []
        for k, c in enumerate(part):
            ring = exact[c]
            chain = contours[c][:, 0]
            if tolerance > 0 and len(chain) > 16:
                simple = cv2.approxPolyDP(chain[((chain[:, 0] ^ chain[:, 1]) & 1) == 1], 2.0 * tolerance, True)
                if len(simple) >= 3:
                    ring = simple[:, 0]
            rings.append(_normalised(ring.astype(np.float64) / 2.0 + origin, positive=k == 0))
        out.append(PolygonPart(rings[0], tuple(rings[1:])))
    return sorted(out, key=lambda p: (p.outer[0, 1], p.outer[0, 0]))


def assert_same(ours: list[PolygonPart], theirs: list[PolygonPart]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.outer.dtype == np.float64 and np.array_equal(a.outer, b.outer)
        assert len(a.holes) == len(b.holes)
        assert all(np.array_equal(p, q) for p, q in zip(a.holes, b.holes, strict=True))


# ---------------------------------------------------------------- shapes, random and adversarial


@st.composite
def adversarial(draw: st.DrawFn) -> np.ndarray:
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["noise", "checker", "lines", "nested", "border", "blobs"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    yy, xx = np.indices((h, w))
    if kind == "noise":
        mask = rng.random((h, w)) < draw(st.floats(0.05, 0.95))
    elif kind == "checker":
        period = draw(st.integers(1, 3))
        mask = ((yy // period + xx // period) % 2 == 0) ^ (rng.random((h, w)) < 0.05)
    elif kind == "lines":  # 1-pixel lines: rows, columns or diagonals, some crossing
        step = draw(st.integers(2, 4))
        mask = {0: yy % step == 0, 1: xx % step == 0, 2: (xx + yy) % step == 0, 3: (xx - yy) % step == 0}[
            draw(st.integers(0, 3))
        ]
        mask = mask | ((xx % draw(st.integers(2, 6)) == 0) & draw(st.booleans()))
    elif kind == "nested":  # rings in holes in rings, with islands and pinholes
        d = np.maximum(np.abs(yy - h // 2), np.abs(xx - w // 2))
        mask = (d // draw(st.integers(1, 3))) % 2 == 0
        mask ^= rng.random((h, w)) < 0.03
    elif kind == "border":  # painted up to the border, with holes touching it or not
        mask = np.ones((h, w), dtype=bool)
        mask[rng.integers(0, h, 6), rng.integers(0, w, 6)] = False
        mask &= rng.random((h, w)) > 0.1
    else:
        noise = rng.standard_normal((max(1, h // 4), max(1, w // 4))).astype(np.float32)
        mask = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR) > draw(st.floats(-1, 1))
    return mask


options = st.fixed_dictionaries({
    "tolerance": st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    "min_area": st.sampled_from([0.0, 2.0, 5.0, 16.0]),
    "max_parts": st.sampled_from([None, 0, 1, 2, 5]),
    "max_holes": st.sampled_from([None, 0, 1, 3]),
})


@pytest.mark.parametrize("select_on_pixels", [False, True])
@settings(max_examples=400, deadline=None)
@given(mask=st.one_of(adversarial(), arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24)))), kw=options)
def test_the_fast_paths_give_the_references_polygons(select_on_pixels, mask, kw) -> None:
    """Tracing every outline, or selecting parts and holes on pixels first: bit for bit the reference."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(polygons, "_looks_speckled", lambda crop: select_on_pixels)
        ours = mask_to_polygon_parts(mask, **kw)
        spliced = mask_to_polygons(mask, **kw)
    assert_same(ours, reference_parts(mask, **kw))
    assert len(spliced) == len(ours)
    for polygon, part in zip(spliced, ours, strict=True):
        assert np.array_equal(polygon, splice_rings(part.outer, part.holes))


def test_a_large_island_in_a_small_dropped_hole_keeps_its_outline() -> None:
    # The part has 4 holes; with max_holes=2 the smallest two are filled, but one of them holds an island
    # large enough to be kept: selecting on pixels keeps that hole open while tracing.
    mask = np.zeros((40, 60), dtype=bool)
    mask[1:39, 1:59] = True
    mask[4:20, 4:20] = mask[4:20, 24:40] = False  # two large holes
    mask[24:36, 4:16] = False  # a smaller hole ...
    mask[26:34, 6:14] = True  # ... holding an island
    mask[30:32, 40:42] = False  # the smallest hole
    for patched in (False, True):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(polygons, "_looks_speckled", lambda crop, p=patched: p)
            ours = mask_to_polygon_parts(mask, tolerance=0, max_holes=2)
        assert_same(ours, reference_parts(mask, tolerance=0, max_holes=2))
        assert len(ours) == 2 and [len(p.holes) for p in ours] == [2, 0]


def test_the_bench_masks_use_the_way_that_pays() -> None:
    rng = np.random.default_rng(0)
    # Like the random-weight model's answer at 1024 x 768: ~4,700 outlines, one per 170 pixels.
    noisy = cv2.resize(rng.standard_normal((192, 256)).astype(np.float32), (1024, 768)) > 0.6
    assert polygons._looks_speckled(noisy)
    smooth = np.zeros((3000, 4000), dtype=bool)
    cv2.ellipse(smooth.view(np.uint8), (2000, 1350), (800, 750), 15, 0, 360, 1, -1)
    assert not polygons._looks_speckled(smooth)


# ---------------------------------------------------------------- cost: linear on the worst shapes


def _cpu_seconds(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def nested_squares(side: int) -> np.ndarray:
    """Concentric square rings one pixel apart: rings in holes in rings, as deep as a mask can nest."""
    yy, xx = np.indices((side, side))
    return np.maximum(np.abs(yy - side // 2), np.abs(xx - side // 2)) % 2 == 0


def checkerboard(side: int) -> np.ndarray:
    """One 8-connected part with a hole at every other pixel: the most outlines a mask can have."""
    return np.indices((side, side)).sum(axis=0) % 2 == 0


def speckle(side: int) -> np.ndarray:
    return np.random.default_rng(1).random((side, side)) < 0.5


@pytest.mark.parametrize("shape", [nested_squares, checkerboard, speckle])
@pytest.mark.parametrize("select_on_pixels", [False, True])
def test_cost_grows_linearly_with_the_pixels(shape, select_on_pixels, monkeypatch) -> None:
    monkeypatch.setattr(polygons, "_looks_speckled", lambda crop: select_on_pixels)
    click = {"tolerance": 1.0, "min_area": 16.0, "max_parts": 50, "max_holes": 32}
    small, large = shape(128), shape(512)  # 16 times the pixels
    mask_to_polygons(small, **click)
    t_small = _cpu_seconds(lambda: mask_to_polygons(small, **click))
    t_large = _cpu_seconds(lambda: mask_to_polygons(large, **click))
    # Linear: 16 times the time (plus fixed costs); n log n would be ~20, quadratic 256.
    assert t_large < 40 * max(t_small, 2e-3), (t_small, t_large)


def test_what_lies_inside_follows_in_logarithmic_rounds() -> None:
    """A chain of 2**18 undecided nodes, each inside the next (deeper than any mask nests): every one takes
    its root's state, in 18 rounds of pointer jumping, not 2**18."""
    n = 1 << 18
    parent = np.r_[0, np.arange(n - 1)]
    decided = np.zeros(n, dtype=bool)
    decided[0] = True
    state = np.zeros(n, dtype=bool)
    state[0] = True
    t = _cpu_seconds(lambda: polygons_select._inherited(state, decided, parent), repeat=1)
    assert polygons_select._inherited(state, decided, parent).all()
    assert t < 1.0


def test_splicing_thousands_of_holes_compares_a_bounded_number_of_pairs() -> None:
    ring = np.array([[0.0, 0.0], [1000.0, 0.0], [1000.0, 1000.0], [0.0, 1000.0]])
    ring = np.concatenate([np.linspace(ring[i], ring[(i + 1) % 4], 5000, endpoint=False) for i in range(4)])
    square = np.array([[0, 0], [0, 1], [1, 1], [1, 0]])
    holes = [square + np.array([x, y]) for x in range(10, 990, 14) for y in range(10, 990, 14)]  # 4,900 pinholes
    t = _cpu_seconds(lambda: splice_rings(ring, holes), repeat=1)
    assert len(splice_rings(ring, holes)) == len(ring) + sum(len(h) + 2 for h in holes)
    assert t < 1.0
