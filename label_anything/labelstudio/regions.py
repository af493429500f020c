"""Label Studio results → ``Region`` values in pixels, and one object per smart-click answer.

Each result of ``brushlabels`` (``value.format == "rle"``), ``bitmasklabels`` (``value.imageDataURL``, a PNG
of the image's size: see ``labelstudio.bitmask``), ``polygonlabels`` (points in percent) and
``rectanglelabels`` (percent) becomes a ``Region``; everything else is counted by reason in a ``Tally`` so
that nothing is lost silently. Coordinates become pixel-edge coordinates (see ``label_anything.geometry.coords``):
``x_px = x% * original_width / 100`` (``geometry.coords.percent_to_pixels``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from label_anything.geometry.coords import percent_to_pixels
from label_anything.geometry.masks import polygons_to_mask
from label_anything.geometry.polygons_clip import bounded_polygon
from label_anything.imaging.decode import DEFAULT_MAX_PIXELS
from label_anything.labelstudio.bitmask import BitmaskError, bitmask_decode
from label_anything.labelstudio.results import answer_of
from label_anything.labelstudio.rle import brush_rle_decode
from label_anything.labelstudio.tally import Tally

RegionKind = Literal["brush", "bitmask", "polygon", "rectangle"]

# Result types (and the label-less shape types that Label Studio pairs with a "labels" result of the same id).
_KINDS: dict[str, RegionKind] = {
    "brushlabels": "brush",
    "brush": "brush",
    "bitmasklabels": "bitmask",
    "bitmask": "bitmask",
    "polygonlabels": "polygon",
    "polygon": "polygon",
    "rectanglelabels": "rectangle",
    "rectangle": "rectangle",
}
_LABEL_KEYS = ("brushlabels", "bitmasklabels", "polygonlabels", "rectanglelabels", "labels")
# A region's mask is H × W bools: past this an export could make one region allocate any amount of memory.
MAX_REGION_PIXELS = DEFAULT_MAX_PIXELS


@dataclass(eq=False)
class Region:
    """One labelled object of one image, in pixels.

    Attributes:
        label: the class name.
        kind: what the annotator drew: ``brush``, ``bitmask``, ``polygon`` or ``rectangle``.
        width: W of the image (``original_width``).
        height: H of the image (``original_height``).
        mask: (H, W) bool for brush and bitmask regions, else None.
        polygons: (K, 2) float64 xy pixel-edge coordinates, clipped to the image: the drawn polygon, the
            parts of one smart-click answer, or a rectangle's corners with ``--boxes-as-masks``.
        box: (4,) float64 ``x0, y0, x1, y1`` for rectangle regions (the bounds of the rotated box), else None.
        box_area: width × height of a rectangle region in pixels (unrotated), else 0.
        corners: (4, 2) float64 xy corners of a rectangle region (rotated when Label Studio rotated it).
        answer: the smart-click answer the region belongs to (see ``results.answer_of``), else None.
    """

    label: str
    kind: RegionKind
    width: int
    height: int
    mask: np.ndarray | None = None
    polygons: tuple[np.ndarray, ...] = ()
    box: np.ndarray | None = None
    box_area: float = 0.0
    corners: np.ndarray | None = None
    answer: str | None = None

    @property
    def box_only(self) -> bool:
        """A rectangle that carries no mask (COCO instance files and YOLO-seg cannot hold it)."""
        return self.mask is None and not self.polygons

    def with_box_as_mask(self) -> Region:
        """The rectangle as a mask region: its (rotated) corners as a polygon (``--boxes-as-masks``)."""
        assert self.corners is not None
        return replace(self, polygons=(bounded_polygon(self.corners, self.width, self.height),))

    def to_mask(self) -> np.ndarray:
        """The region as a (H, W) bool mask: brush or bitmask as painted, polygons rasterized as pycocotools
        does."""
        if self.mask is not None:
            return self.mask
        if self.polygons:
            return polygons_to_mask(list(self.polygons), self.height, self.width)
        raise ValueError("a rectangle region has no mask")


def count_regions(results: Any) -> int:
    """How many regions a ``result`` holds: results sharing an ``id`` are one region (a shape and its labels).

    Anything but a list where a list of results belongs counts as one region (that cannot be read).
    """
    if results is None:
        return 0
    if not isinstance(results, list):
        return 1
    return len({_group_key(r, i) for i, r in enumerate(results)})


def _group_key(result: Any, index: int) -> str:
    ident = result.get("id") if isinstance(result, dict) else None
    if (isinstance(ident, str) and ident) or (isinstance(ident, int) and not isinstance(ident, bool) and ident):
        return f"id:{ident}"
    return f"#{index}"


def _dimension(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if math.isfinite(number) and number >= 1 and number == int(number) else None


def _size(result: dict[str, Any]) -> tuple[int, int] | str:
    """(W, H) of the image a result was drawn on, or why there is none."""
    w, h = _dimension(result.get("original_width")), _dimension(result.get("original_height"))
    if w is None or h is None:
        return "without a usable original_width/original_height"
    if w * h > MAX_REGION_PIXELS:
        return f"of an image above {MAX_REGION_PIXELS:,} pixels (original_width × original_height)"
    return w, h


def _labels_of(group: list[dict[str, Any]]) -> list[str]:
    for result in group:
        value = result.get("value")
        if not isinstance(value, dict):
            continue
        for key in _LABEL_KEYS:
            labels = value.get(key)
            if isinstance(labels, list) and labels:
                # A label is a name: a number is taken as its text, anything else is no label at all.
                names = [x if isinstance(x, str) else _short(x) for x in labels if _is_scalar(x)]
                return names if len(names) == len(labels) else []
    return []


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool))


def _number(value: dict[str, Any], key: str, default: float | None = None) -> float:
    raw = value.get(key, default)
    if raw is None:
        raw = default
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"{key} is {raw!r}, not a number")
    number = float(raw)
    if not math.isfinite(number):
        raise ValueError(f"{key} is {raw!r}, not a finite number")
    return number


def _rectangle_corners(value: dict[str, Any], w: int, h: int) -> np.ndarray:
    # Label Studio rotates a rectangle clockwise on screen (y down) about its top-left corner (x, y).
    x, y = percent_to_pixels(_number(value, "x"), w), percent_to_pixels(_number(value, "y"), h)
    bw, bh = percent_to_pixels(_number(value, "width"), w), percent_to_pixels(_number(value, "height"), h)
    angle = math.radians(_number(value, "rotation", 0.0) % 360.0)
    c, s = math.cos(angle), math.sin(angle)
    local = np.array([[0.0, 0.0], [bw, 0.0], [bw, bh], [0.0, bh]])
    rot = np.array([[c, -s], [s, c]])
    corners = local @ rot.T + np.array([x, y])
    if not np.isfinite(corners).all():  # finite percents of a huge image can still overflow
        raise ValueError("the rectangle's corners are not finite numbers")
    return corners


def parse_regions(annotation: dict[str, Any], tally: Tally, where: str = "") -> Iterator[Region]:
    """The regions of one annotation, in result order; the rest is counted in ``tally`` (one per region).

    Results sharing an ``id`` are one region (Label Studio may split a shape and its labels); a region with
    several labels gives its first one, and that is noted.
    """
    results = annotation.get("result")
    if results is None:
        return
    if not isinstance(results, list):
        tally.drop("annotation whose result is not a list", where)
        return
    groups: dict[str, list[dict[str, Any]]] = {}
    for i, result in enumerate(results):
        if not isinstance(result, dict):
            tally.drop("result that is not an object", where)
            continue
        groups.setdefault(_group_key(result, i), []).append(result)
    for rid, group in groups.items():
        shape = next((r for r in group if isinstance(r.get("type"), str) and r["type"] in _KINDS), None)
        if shape is None:
            types = [r.get("type") for r in group if r.get("type") != "labels"]
            reason = f"unsupported result type {_short(types[0])}" if types else "labels result without a shape"
            tally.drop(reason, where)
            continue
        region = _parse_region(shape, _labels_of(group), tally, f"{where} region {rid.removeprefix('id:')[:40]}")
        if region is not None:
            yield region


def _short(value: Any) -> str:
    # Containers are named by type: their repr could be any size or depth.
    text = repr(value) if value is None or isinstance(value, str | int | float) else f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_region(result: dict[str, Any], labels: list[str], tally: Tally, where: str) -> Region | None:
    kind = _KINDS[result["type"]]
    value = result.get("value")
    if not isinstance(value, dict):
        tally.drop(f"{kind} region without a value", where)
        return None
    if not labels:
        tally.drop(f"{kind} region without a label", where)
        return None
    if len(labels) > 1:
        tally.note("region with several labels (the first one is used)")
    size = _size(result)
    if isinstance(size, str):
        tally.drop(f"{kind} region {size}", where)
        return None
    parse = {"brush": _brush, "bitmask": _bitmask, "polygon": _polygon, "rectangle": _rectangle}[kind]
    try:
        region = parse(value, labels[0], *size)
    except BitmaskError as exc:
        tally.drop(exc.reason, f"{where}: {exc}")
        return None
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        reason = "brush RLE that does not decode" if kind == "brush" else f"malformed {kind} region"
        tally.drop(reason, f"{where}: {exc}")
        return None
    if isinstance(region, str):
        tally.drop(region, where)
        return None
    region.answer = answer_of(result.get("id"))
    return region


def _brush(value: dict[str, Any], label: str, w: int, h: int) -> Region | str:
    if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
        return f"brush region in format {_short(value.get('format'))} (only rle is read)"
    mask = brush_rle_decode(value["rle"], h, w)
    if not mask.any():
        return "empty brush mask"
    return Region(label, "brush", w, h, mask=mask)


def _bitmask(value: dict[str, Any], label: str, w: int, h: int) -> Region | str:
    if "imageDataURL" not in value:
        return "bitmask region without an imageDataURL"
    mask = bitmask_decode(value["imageDataURL"], h, w)
    if not mask.any():
        return "empty bitmask mask"
    return Region(label, "bitmask", w, h, mask=mask)


def _polygon(value: dict[str, Any], label: str, w: int, h: int) -> Region | str:
    points = np.asarray(value.get("points"), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        return "polygon without 3 or more [x, y] points"
    if not np.isfinite(points).all():
        return "polygon with a point that is not a finite number"
    with np.errstate(over="ignore"):  # 1e308 % of a 600-pixel image: inf, refused just below
        pixels = percent_to_pixels(points, np.array([w, h]))
    if not np.isfinite(pixels).all():
        return "polygon with a point that is not a finite number"
    return Region(label, "polygon", w, h, polygons=(bounded_polygon(pixels, w, h),))


def _rectangle(value: dict[str, Any], label: str, w: int, h: int) -> Region | str:
    corners = _rectangle_corners(value, w, h)
    box = np.clip(np.concatenate([corners.min(axis=0), corners.max(axis=0)]), 0, [w, h, w, h])
    # 3 decimals: what a COCO bbox keeps (see coco.box_to_coco); below that the box is no box.
    x0, y0, x1, y1 = (round(float(v), 3) for v in box)
    if x1 <= x0 or y1 <= y0:
        return "rectangle of zero size or outside the image"
    # (width px × height %) → px: the product in the order it always had (w% * W / 100 * h% * H / 100).
    drawn = abs(percent_to_pixels(percent_to_pixels(_number(value, "width"), w) * _number(value, "height"), h))
    box_area = min(drawn, float((box[2] - box[0]) * (box[3] - box[1])))
    return Region(label, "rectangle", w, h, box=box, box_area=box_area, corners=corners)


def task_size(task: dict[str, Any]) -> tuple[int, int] | None:
    """(W, H) of a task's image from the first result that carries it, in any annotation or prediction."""
    for source in ("annotations", "predictions"):
        entries = task.get(source)
        for a in entries if isinstance(entries, list) else []:
            results = a.get("result") if isinstance(a, dict) else None
            for r in results if isinstance(results, list) else []:
                if isinstance(r, dict) and isinstance(size := _size(r), tuple):
                    return size
    return None


def merge_suggestion_duplicates(regions: list[Region], tally: Tally) -> list[Region]:
    """One object per smart-click answer: the regions whose ids mark them as one answer become one region.

    With ``--out-bbox`` / ``--out-poly`` the backend answers one click with a brush mask, its box and its
    polygons (one per part), their ids sharing the answer's id (``results.answer_of``). Of one answer and one
    label: the brush (or bitmask) mask is the object (its box and polygons are counted as skipped); without a
    mask, its polygons are the parts of one object; a box alone stays a box. Regions of no answer (drawn by hand,
    or exported by an older version) are never merged: two shapes that look alike may be two objects.
    """
    groups: dict[tuple[str, str, int, int], list[Region]] = {}
    for region in regions:
        if region.answer is not None:
            groups.setdefault((region.answer, region.label, region.width, region.height), []).append(region)
    merged: list[Region] = []
    for region in regions:
        if region.answer is None:
            merged.append(region)
            continue
        group = groups.pop((region.answer, region.label, region.width, region.height), None)
        if group is not None:
            merged += _one_object(group, tally)
    return merged


def _one_object(group: list[Region], tally: Tally) -> list[Region]:
    brushes = [r for r in group if r.kind in ("brush", "bitmask") and r.mask is not None]
    polygons = [r for r in group if r.kind == "polygon"]
    boxes = [r for r in group if r.kind == "rectangle"]
    if not brushes and not polygons:
        return boxes
    tally.skip("box of a smart-click answer that has a mask (one object)", n=len(boxes))
    if brushes:
        kind = "brush" if any(r.kind == "brush" for r in brushes) else "bitmask"
        tally.skip(f"polygon of a smart-click answer that has a {kind} mask (one object)", n=len(polygons))
        tally.skip(f"{kind} mask joined to the other masks of its smart-click answer", n=len(brushes) - 1)
        if len(brushes) == 1:
            return brushes
        return [replace(brushes[0], mask=np.logical_or.reduce([b.mask for b in brushes]))]
    tally.skip("polygon part joined to the other parts of its smart-click answer", n=len(polygons) - 1)
    return [replace(polygons[0], polygons=tuple(p for r in polygons for p in r.polygons))]
