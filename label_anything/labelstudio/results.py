"""A mask → Label Studio result regions: ``brushlabels`` (RLE) or ``bitmasklabels`` (PNG data URL),
``rectanglelabels``, ``polygonlabels``.

Geometry comes from ``label_anything.geometry.masks``, the brush encoding from ``labelstudio.rle`` and the
bitmask encoding from ``labelstudio.bitmask``; this module only chooses controls and writes Label Studio's
JSON shapes. Percent values go through ``geometry.coords.pixels_to_percent``, the one conversion the backend
uses.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from label_anything.errors import LabelAnythingError
from label_anything.geometry import masks, polygons
from label_anything.geometry.coords import pixels_to_percent
from label_anything.labelstudio.bitmask import bitmask_encode
from label_anything.labelstudio.config import LabelConfig
from label_anything.labelstudio.context import Click
from label_anything.labelstudio.rle import brush_rle_encode

# A click answers in milliseconds: a noisy mask (thousands of specks or pinholes) must not cost seconds of
# polygon splicing or flood the labeling screen. The brush region always carries the exact mask.
MAX_POLYGON_PARTS = 50
MAX_POLYGON_HOLES = 32
# From this many pixels on (a 640 x 410 image), polygons are traced in a thread beside the brush encoding (below,
# a thread costs about what it saves).
_PARALLEL_PIXELS = 1 << 18

# The regions of one answer share its id: "<answer>-mask" (brush) or "<answer>-bitmask", "<answer>-box",
# "<answer>-poly-<k>". Label Studio keeps region ids when the annotator accepts a suggestion and submits, so an
# export can tell the three shapes of one object from three objects. No "#": Label Studio cuts a region id at it.
_ANSWER_REGION_ID = re.compile(r"^(?P<answer>[0-9a-f]{10})-(?:mask|bitmask|box|poly-[0-9]+)$")


def answer_of(region_id: object) -> str | None:
    """The answer id of a region this backend answered with, or None for any other region id.

    >>> answer_of("0123abcdef-poly-2"), answer_of("0123abcdef-bitmask"), answer_of("fBWv1t0S2L")
    ('0123abcdef', '0123abcdef', None)
    """
    match = _ANSWER_REGION_ID.match(region_id) if isinstance(region_id, str) else None
    return match["answer"] if match else None


class OutputError(LabelAnythingError):
    """No output control can carry the answer (missing control, or the label is not in it)."""


@dataclass(frozen=True)
class OutputOptions:
    """Which regions to answer with, and how polygons are simplified.

    Attributes:
        mask: answer the mask: a ``brushlabels`` region (brush RLE), or where the image has no
            ``BrushLabels`` control but a ``BitmaskLabels`` one, a ``bitmasklabels`` region (PNG data URL).
        bbox: answer a ``rectanglelabels`` region (the mask's tight box).
        poly: answer ``polygonlabels`` regions (one per connected part).
        poly_tolerance: polygon simplification tolerance in pixels.
        poly_min_area: drop polygon parts smaller than this many pixels.
    """

    mask: bool = True
    bbox: bool = False
    poly: bool = False
    poly_tolerance: float = 1.0
    poly_min_area: float = 16.0

    def types(self) -> tuple[str, ...]:
        """Enabled result types, in answer order (``brushlabels`` stands for the mask, brush or bitmask)."""
        wanted = (("brushlabels", self.mask), ("rectanglelabels", self.bbox), ("polygonlabels", self.poly))
        return tuple(t for t, on in wanted if on)


def output_controls(config: LabelConfig, click: Click, options: OutputOptions) -> dict[str, str]:
    """Result type → control name for every enabled output, checked before any model work.

    The mask goes to the image's ``BrushLabels`` control, or without one to its ``BitmaskLabels`` control
    (key ``"bitmasklabels"``). Raises OutputError naming the control and label when the clicked label is
    missing from an output control, or when no enabled output has a control on the clicked image.
    """
    chosen: dict[str, str] = {}
    for wanted in options.types():
        type_, control = wanted, config.output_control(wanted, click.to_name)
        if control is None and wanted == "brushlabels":
            type_, control = "bitmasklabels", config.output_control("bitmasklabels", click.to_name)
        if control is None:
            continue
        if click.label not in control.labels:
            raise OutputError(
                f"label {click.label!r} is not in <{type_}> control {control.name!r} "
                f"(its labels: {', '.join(control.labels) or 'none'}); add it to the label config"
            )
        chosen[type_] = control.name
    if not chosen:
        types = ["brushlabels, bitmasklabels" if t == "brushlabels" else t for t in options.types()]
        wanted = ", ".join(types) or "nothing (all outputs are off)"
        raise OutputError(
            f"the label config has no control of type {wanted} with toName={click.to_name!r}; "
            f"add one (e.g. <BrushLabels toName={click.to_name!r}>) or change "
            "--out-mask/--out-bbox/--out-poly"
        )
    return chosen


def _region(click: Click, control: str, type_: str, value: dict, score: float, region_id: str) -> dict:
    return {
        "id": region_id,
        "from_name": control,
        "to_name": click.to_name,
        "type": type_,
        "original_width": click.width,
        "original_height": click.height,
        "image_rotation": click.rotation,
        "value": value,
        "score": score,
        "readonly": False,
    }


def box_value(xyxy: np.ndarray, click: Click) -> dict:
    """Pixel-edge box ``x0, y0, x1, y1`` (x1 exclusive) → rectangle value in percent.

    The rectangle covers whole pixels, so every mask pixel is inside it.
    """
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    return {
        "x": pixels_to_percent(x0, click.width),
        "y": pixels_to_percent(y0, click.height),
        "width": pixels_to_percent(x1 - x0, click.width),
        "height": pixels_to_percent(y1 - y0, click.height),
        "rotation": 0,
        "rectanglelabels": [click.label],
    }


def mask_results(
    mask: np.ndarray, score: float, click: Click, controls: dict[str, str], options: OutputOptions
) -> list[dict]:
    """Label Studio result regions for one mask under ``click.label``; empty for an empty mask.

    Args:
        mask: (H, W) bool, True on the object, H x W = ``click.height`` x ``click.width`` pixels.
        score: the mask's score, rounded to 6 digits in every region.
        click: the image (its name, size and view rotation) and the label the regions go under.
        controls: result type → control name, from ``output_controls``.
        options: polygon tolerance and minimum part area, in pixels.

    Returns:
        In this order, per ``controls``: a ``brushlabels`` region (the mask as Label Studio brush RLE) or
        a ``bitmasklabels`` region (the mask as a PNG data URL, see ``labelstudio.bitmask``), a
        ``rectanglelabels`` region (the mask's tight box over whole pixels) and one
        ``polygonlabels`` region per connected part. Positions are in percent (0–100) of ``click.width`` /
        ``click.height``, pixel edges (a mask on the last column reaches x = 100). The regions are one
        object: their ids share one answer id (see ``answer_of``).
    """
    if mask.shape != (click.height, click.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, the image {click.width}x{click.height}")
    if not mask.any():
        return []
    score = round(float(score), 6)
    answer = uuid.uuid4().hex[:10]
    with contextlib.ExitStack() as stack:
        traced = None
        if "polygonlabels" in controls and mask.size >= _PARALLEL_PIXELS:
            # Tracing (OpenCV) and brush encoding (numpy) both release the GIL: on a large mask, one runs in
            # a thread while the other runs here.
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-anything-poly"))
            traced = pool.submit(_polygons, mask, options)
        results: list[dict] = []
        if "brushlabels" in controls:
            value = {"format": "rle", "rle": brush_rle_encode(mask), "brushlabels": [click.label]}
            results.append(_region(click, controls["brushlabels"], "brushlabels", value, score, f"{answer}-mask"))
        if "bitmasklabels" in controls:
            value = {"imageDataURL": bitmask_encode(mask), "bitmasklabels": [click.label]}
            region = _region(click, controls["bitmasklabels"], "bitmasklabels", value, score, f"{answer}-bitmask")
            results.append(region)
        if "rectanglelabels" in controls:
            value = box_value(masks.mask_to_xyxy(mask), click)
            results.append(
                _region(click, controls["rectanglelabels"], "rectanglelabels", value, score, f"{answer}-box")
            )
        if "polygonlabels" in controls:
            rings = traced.result() if traced is not None else _polygons(mask, options)
            for k, polygon in enumerate(rings):
                if len(polygon) < 3:
                    continue
                xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
                points = np.stack(
                    [pixels_to_percent(xy[:, 0], click.width), pixels_to_percent(xy[:, 1], click.height)], axis=1
                ).tolist()
                value = {"points": points, "closed": True, "polygonlabels": [click.label]}
                region_id = f"{answer}-poly-{k}"
                results.append(_region(click, controls["polygonlabels"], "polygonlabels", value, score, region_id))
    return results


def _polygons(mask: np.ndarray, options: OutputOptions) -> list[np.ndarray]:
    return polygons.mask_to_polygons(
        mask,
        tolerance=options.poly_tolerance,
        min_area=options.poly_min_area,
        max_parts=MAX_POLYGON_PARTS,
        max_holes=MAX_POLYGON_HOLES,
    )
