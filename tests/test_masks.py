"""label_anything.geometry.masks and .polygons: boxes, areas, COCO RLE and polygons against pycocotools' rasterizer."""

from __future__ import annotations

import doctest

import cv2
import numpy as np
import pytest
import skimage.data
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as coco_mask

from label_anything.geometry import masks, polygons
from label_anything.geometry.masks import (
    coco_rle_to_mask,
    mask_area,
    mask_to_coco_rle,
    mask_to_xyxy,
    polygons_to_coco,
    polygons_to_mask,
    xyxy_to_xywh,
)
from label_anything.geometry.polygons import (
    PolygonPart,
    mask_to_polygon_parts,
    mask_to_polygons,
    polygon_part_to_polygon,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

masks_2d = arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def winding_numbers(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Winding number of the closed polygon around every pixel centre, (H, W) int."""
    yy, xx = np.mgrid[:height, :width] + 0.5
    a, b = polygon, np.roll(polygon, -1, axis=0)
    total = np.zeros((height, width), dtype=int)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        cross = (xb - xa) * (yy - ya) - (xx - xa) * (yb - ya)
        total += ((ya <= yy) & (yb > yy) & (cross > 0)).astype(int)
        total -= ((yb <= yy) & (ya > yy) & (cross < 0)).astype(int)
    return total


def disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - cy, xx - cx) < r


def horse() -> np.ndarray:
    return ~skimage.data.horse()  # the horse is the dark part of the picture


def donut() -> np.ndarray:
    return disk((300, 300), 150, 150, 120) & ~disk((300, 300), 150, 150, 60)


def blobs() -> np.ndarray:
    shape = (200, 300)
    spots = [(50, 50, 30), (120, 200, 45), (160, 60, 20), (40, 250, 10)]
    return np.any([disk(shape, *spot) for spot in spots], axis=0)


# ---------------------------------------------------------------- boxes and areas


@settings(max_examples=200, deadline=None)
@given(masks_2d)
def test_box_contains_every_pixel_and_is_tight(mask: np.ndarray) -> None:
    if not mask.any():
        with pytest.raises(ValueError, match="empty"):
            mask_to_xyxy(mask)
        return
    x0, y0, x1, y1 = mask_to_xyxy(mask).astype(int)
    assert mask[y0:y1, x0:x1].sum() == mask.sum()
    assert mask[:, x0].any() and mask[:, x1 - 1].any() and mask[y0].any() and mask[y1 - 1].any()


def test_box_is_in_pixel_edge_coordinates() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[3, 4] = True
    box = mask_to_xyxy(mask)
    assert box.dtype == np.float64
    assert box.tolist() == [4.0, 3.0, 5.0, 4.0]
    assert xyxy_to_xywh(box).tolist() == [4.0, 3.0, 1.0, 1.0]
    assert xyxy_to_xywh(np.array([[0, 0, 2, 3], [1, 1, 4, 4]])).tolist() == [[0, 0, 2, 3], [1, 1, 3, 3]]


def test_box_and_area_agree_with_pycocotools() -> None:
    mask = horse()
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    assert xyxy_to_xywh(mask_to_xyxy(mask)).tolist() == coco_mask.toBbox(rle).tolist()
    assert mask_area(mask) == int(coco_mask.area(rle)) == int(mask.sum())
    assert isinstance(mask_area(mask), int)


def test_non_bool_masks_mean_non_zero() -> None:
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[1, 2] = 255
    assert mask_to_xyxy(mask).tolist() == [2.0, 1.0, 3.0, 2.0]
    assert mask_area(mask) == 1
    assert coco_rle_to_mask(mask_to_coco_rle(mask)).sum() == 1


# ---------------------------------------------------------------- COCO RLE


@settings(max_examples=200, deadline=None)
@given(masks_2d)
def test_coco_rle_round_trip_is_exact(mask: np.ndarray) -> None:
    rle = mask_to_coco_rle(mask)
    assert rle["size"] == list(mask.shape)
    assert isinstance(rle["counts"], str)
    back = coco_rle_to_mask(rle)
    assert back.dtype == bool and back.shape == mask.shape
    assert np.array_equal(back, mask)


def test_coco_rle_is_what_pycocotools_reads() -> None:
    mask = horse()
    rle = mask_to_coco_rle(mask)
    theirs = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(theirs.astype(bool), mask)
    # Bytes counts, and uncompressed counts (column-major runs starting with background), decode too.
    assert np.array_equal(coco_rle_to_mask({**rle, "counts": rle["counts"].encode()}), mask)
    column_major = np.array([[0, 1], [1, 1], [0, 0]], dtype=bool)  # runs down columns: 0 1 0 | 1 1 0
    assert np.array_equal(coco_rle_to_mask({"size": [3, 2], "counts": [1, 1, 1, 2, 1]}), column_major)


# ---------------------------------------------------------------- polygons


@pytest.mark.parametrize("shape", [horse, donut, blobs], ids=lambda f: f.__name__)
def test_polygons_of_real_shapes_rasterize_back(shape) -> None:
    mask = shape()
    h, w = mask.shape
    polygons = mask_to_polygons(mask)
    assert iou(polygons_to_mask(polygons, h, w), mask) >= 0.98
    # Simplification pays: far fewer vertices than pixel corners.
    exact = mask_to_polygons(mask, tolerance=0)
    assert sum(map(len, polygons)) < 0.3 * sum(map(len, exact))
    assert np.array_equal(polygons_to_mask(exact, h, w), mask)


def test_donut_keeps_its_hole() -> None:
    mask = donut()
    [part] = mask_to_polygon_parts(mask)
    assert len(part.holes) == 1
    [polygon] = mask_to_polygons(mask)
    filled = polygons_to_mask([polygon], *mask.shape)
    hole = disk(mask.shape, 150, 150, 55)  # well inside the hole
    assert not filled[hole].any()
    assert iou(filled, mask) >= 0.98
    # The same ring, as COCO writes it, through pycocotools' own reader (rasterize, then union).
    coco = polygons_to_coco([polygon])
    rle = coco_mask.merge(coco_mask.frPyObjects(coco, *mask.shape))
    assert np.array_equal(coco_mask.decode(rle).astype(bool), filled)


def test_several_parts_give_several_polygons() -> None:
    mask = blobs()
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 4
    # Reading order of the top-left vertices, where each ring starts.
    tops = [(p[0, 1], p[0, 0]) for p in polygons]
    assert tops == sorted(tops)
    for polygon in polygons:
        assert tuple(polygon[0]) == min(map(tuple, polygon[:, ::-1]))[::-1]
        assert polygon.dtype == np.float64 and polygon.ndim == 2 and polygon.shape[1] == 2


def test_island_in_a_hole_is_a_part_of_its_own() -> None:
    mask = donut() | disk((300, 300), 150, 150, 20)
    parts = mask_to_polygon_parts(mask, tolerance=0)
    assert len(parts) == 2 and sorted(len(p.holes) for p in parts) == [0, 1]
    assert np.array_equal(polygons_to_mask(mask_to_polygons(mask, tolerance=0), *mask.shape), mask)


@settings(max_examples=300, deadline=None)
@given(masks_2d)
def test_exact_polygons_trace_pixel_edges(mask: np.ndarray) -> None:
    # tolerance=0: the rings follow the cracks between pixels, corner to corner, so their shoelace area is
    # the pixel count and pycocotools gives the mask back pixel for pixel, holes, pinches and islands too.
    parts = mask_to_polygon_parts(mask, tolerance=0)
    area = 0.0
    for part in parts:
        assert signed_area(part.outer) > 0
        assert all(signed_area(hole) < 0 for hole in part.holes)
        area += signed_area(part.outer) + sum(signed_area(hole) for hole in part.holes)
        for ring in (part.outer, *part.holes):
            assert np.array_equal(ring, np.round(ring))  # pixel corners
    assert area == mask.sum()
    assert np.array_equal(polygons_to_mask(mask_to_polygons(mask, tolerance=0), *mask.shape), mask)


@settings(max_examples=150, deadline=None)
@given(masks_2d, st.sampled_from([0.5, 1.0, 2.0]))
def test_simplified_polygons_stay_within_tolerance(mask: np.ndarray, tolerance: float) -> None:
    # Douglas-Peucker keeps the outline within `tolerance` of the edge-midpoint outline, itself within
    # 0.36 px of the pixel cracks, so only pixels whose centre lies within 2 * tolerance + 0.36 of a crack
    # may flip; a centre at distance d from the nearest centre of the other colour is >= d - 0.71 from it.
    h, w = mask.shape
    polygons = mask_to_polygons(mask, tolerance=tolerance)
    for polygon in polygons:
        assert (polygon == np.round(polygon)).any(axis=1).all()  # every vertex lies on a pixel edge
    padded = np.pad(mask, 1).astype(np.uint8)
    inside = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    outside = cv2.distanceTransform(1 - padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    far = np.where(mask, inside, outside) > 2 * tolerance + 1.1
    assert np.array_equal(polygons_to_mask(polygons, h, w)[far], mask[far])


def test_min_area_drops_specks_and_fills_pinholes() -> None:
    mask = disk((100, 100), 50, 50, 30)
    mask[5, 5] = mask[90:92, 90:92] = True  # specks of 1 and 4 pixels
    mask[50, 50] = False  # a pinhole
    assert len(mask_to_polygons(mask)) == 3
    assert sorted(len(part.holes) for part in mask_to_polygon_parts(mask)) == [0, 0, 1]
    kept = mask_to_polygon_parts(mask, min_area=5)
    assert len(kept) == 1 and kept[0].holes == ()
    assert len(mask_to_polygons(mask, min_area=4)) == 2  # the 2x2 speck has area 4: kept
    assert mask_to_polygons(mask, min_area=10_000) == []


def test_tiny_parts_survive_simplification() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[2, 2] = True
    [polygon] = mask_to_polygons(mask, tolerance=5.0)
    assert np.array_equal(polygons_to_mask([polygon], 5, 5), mask)


def test_empty_mask_has_no_polygons() -> None:
    assert mask_to_polygons(np.zeros((3, 3), dtype=bool)) == []
    assert mask_to_polygon_parts(np.zeros((0, 0), dtype=bool)) == []
    assert not polygons_to_mask([], 3, 4).any()


def test_masks_must_be_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        mask_to_polygons(np.zeros((2, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="2-D"):
        mask_to_xyxy(np.zeros(3, dtype=bool))


def test_keyhole_polygon_fills_like_pycocotools_with_the_even_odd_and_nonzero_rules() -> None:
    outer = np.array([[1.0, 1.0], [9.0, 1.0], [9.0, 9.0], [1.0, 9.0]])
    holes = (np.array([[3.0, 3.0], [3.0, 5.0], [5.0, 5.0], [5.0, 3.0]]),
             np.array([[6.0, 6.0], [6.0, 8.0], [8.0, 8.0], [8.0, 6.0]]))  # fmt: skip
    polygon = polygon_part_to_polygon(PolygonPart(outer, holes))
    assert len(polygon) == 4 + 2 * (4 + 2)
    expected = np.zeros((10, 10), dtype=bool)
    expected[1:9, 1:9] = True
    expected[3:5, 3:5] = expected[6:8, 6:8] = False
    assert np.array_equal(polygons_to_mask([polygon], 10, 10), expected)
    # Browsers fill a canvas path with the non-zero rule: the winding number at each pixel centre.
    assert np.array_equal(winding_numbers(polygon, 10, 10) != 0, expected)


def test_polygons_to_coco_lists() -> None:
    polygons = [np.array([[0, 0], [2, 0], [2, 2]]), np.array([[5, 5], [6, 6]])]
    assert polygons_to_coco(polygons) == [[0.0, 0.0, 2.0, 0.0, 2.0, 2.0]]
    assert all(isinstance(v, float) for v in polygons_to_coco(polygons)[0])
    # Flat lists are accepted by polygons_to_mask, and a two-vertex "polygon" is not read as a box.
    assert polygons_to_mask([[0, 0, 2, 0, 2, 2, 0, 2], [5, 5, 6, 6]], 4, 4).sum() == 4


def test_docstring_examples_run() -> None:
    assert doctest.testmod(masks).failed == 0
    assert doctest.testmod(polygons).failed == 0


def test_caps_on_parts_and_holes_keep_the_largest() -> None:
    rng = np.random.default_rng(3)
    m = np.zeros((200, 300), dtype=bool)
    m[20:180, 20:280] = True
    m &= ~(rng.random(m.shape) < 0.01)  # hundreds of pinholes
    m[190:193, 5:8] = True  # a small separate part
    m[185:199, 285:299] = True  # a larger separate part
    everything = mask_to_polygons(m, tolerance=0)
    capped = mask_to_polygons(m, tolerance=0, max_parts=2, max_holes=5)
    assert len(everything) == 3 and len(capped) == 2
    back = polygons_to_mask(capped, 200, 300)
    assert not back[190:193, 5:8].any() and back[185:199, 285:299].all()
    # the big part comes back with at most 5 holes: the rest are filled
    def holes(mask: np.ndarray) -> int:
        """Unpainted 4-connected areas inside the big part, not touching its border."""
        n, labels = cv2.connectedComponents((~mask[20:180, 20:280]).astype(np.uint8), connectivity=4)
        edge = set(labels[0]) | set(labels[-1]) | set(labels[:, 0]) | set(labels[:, -1])
        return len(set(range(1, n)) - edge)

    assert holes(polygons_to_mask(everything, 200, 300)) > 100
    assert holes(back) == 5


# ---------------------------------------------------------------- cost bounded by what is kept
def swiss_cheese(h: int = 192, w: int = 256, seed: int = 0) -> np.ndarray:
    """What a random-weight model answers: low-resolution noise upscaled and thresholded, dozens of parts
    and hundreds of holes over the whole image."""
    noise = np.random.default_rng(seed).standard_normal((h // 4, w // 4)).astype(np.float32)
    return cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR) > -0.3


def test_only_kept_rings_are_simplified(monkeypatch) -> None:
    """Specks and pinholes are measured, not traced into rings: Douglas-Peucker runs once per kept ring."""
    mask = swiss_cheese()
    everything = mask_to_polygon_parts(mask, min_area=16)
    assert len(everything) > 5 and sum(len(p.holes) for p in everything) > 40  # a hard shape
    calls = []
    real = cv2.approxPolyDP
    monkeypatch.setattr(polygons.cv2, "approxPolyDP", lambda *a, **k: calls.append(1) or real(*a, **k))
    capped = mask_to_polygon_parts(mask, min_area=16, max_parts=5, max_holes=3)
    assert len(capped) == 5 and all(len(p.holes) <= 3 for p in capped)
    assert len(calls) <= 5 * (1 + 3)


def test_caps_keep_the_largest_parts_and_holes_by_area() -> None:
    mask = swiss_cheese(seed=1)
    h, w = mask.shape
    everything = mask_to_polygon_parts(mask, tolerance=0, min_area=16)
    capped = mask_to_polygon_parts(mask, tolerance=0, min_area=16, max_parts=4, max_holes=2)

    def area(ring: np.ndarray) -> float:
        return abs(signed_area(ring))

    expected = sorted(everything, key=lambda p: -area(p.outer))[:4]
    expected = [PolygonPart(p.outer, tuple(sorted(p.holes, key=lambda r: -area(r))[:2])) for p in expected]
    rasterized = [polygons_to_mask([polygon_part_to_polygon(p)], h, w) for p in expected]
    assert np.array_equal(polygons_to_mask([polygon_part_to_polygon(p) for p in capped], h, w),
                          np.logical_or.reduce(rasterized))


def test_thousands_of_holes_splice_exactly() -> None:
    """Every hole is bridged to the outer ring, the bridges crossing each other and other holes: zero-width
    cuts cancel under pycocotools' even-odd rule and the non-zero rule whatever they cross."""
    rng = np.random.default_rng(5)
    mask = np.zeros((120, 160), dtype=bool)
    mask[5:115, 5:155] = True
    mask[7:113, 7:153] &= rng.random((106, 146)) > 0.2  # ~3000 pinholes, some touching each other
    [polygon] = mask_to_polygons(mask, tolerance=0)
    assert np.array_equal(polygons_to_mask([polygon], *mask.shape), mask)
    assert np.array_equal(winding_numbers(polygon, *mask.shape) != 0, mask)


def test_speckle_is_cleaned_first_with_the_same_answer(monkeypatch) -> None:
    """On speckle (runs of a few pixels) specks and pinholes are removed by labelling before tracing; the
    polygons rasterize exactly as when every contour is traced and then dropped by its outline's area."""
    mask = np.random.default_rng(2).random((96, 128)) < 0.55
    mask[20:60, 30:90] = True
    mask[30:50, 40:80] &= np.random.default_rng(3).random((20, 40)) < 0.9
    assert polygons._looks_speckled(mask)
    fast = mask_to_polygons(mask, tolerance=0, min_area=6)
    monkeypatch.setattr(polygons, "_looks_speckled", lambda crop: False)
    slow = mask_to_polygons(mask, tolerance=0, min_area=6)
    assert np.array_equal(polygons_to_mask(fast, *mask.shape), polygons_to_mask(slow, *mask.shape))
    assert len(fast) == len(slow)


def test_speckle_with_every_part_below_min_area_has_no_polygons() -> None:
    # Removed before tracing, nothing is left to trace: an empty answer, not an error.
    mask = np.random.default_rng(6).random((64, 64)) < 0.3
    assert polygons._looks_speckled(mask)
    assert mask_to_polygons(mask, min_area=10_000) == []
    assert mask_to_polygon_parts(mask, min_area=10_000, max_parts=3, max_holes=2) == []


@settings(max_examples=300, deadline=None)
@given(masks_2d, st.sampled_from([2, 5, 16, 1000]), st.sampled_from([None, 1, 3]), st.sampled_from([0.0, 1.0]))
def test_removing_specks_first_never_changes_the_answer(mask, min_area, cap, tolerance) -> None:
    """Any mask (random ones are mostly speckle), any minimum area and caps: the same rasterized answer with
    and without the labelling passes before tracing, and never an error."""
    kwargs = {"tolerance": tolerance, "min_area": min_area, "max_parts": cap, "max_holes": cap}
    fast = mask_to_polygons(mask, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(polygons, "_looks_speckled", lambda crop: False)
        slow = mask_to_polygons(mask, **kwargs)
    h, w = mask.shape
    assert len(fast) == len(slow)
    assert np.array_equal(polygons_to_mask(fast, h, w), polygons_to_mask(slow, h, w))
