"""An interactive context from Label Studio → one ``Click``: a prompt in pixels, not yet an engine prompt.

This module knows Label Studio's format only; ``label_anything.app.interactive.click_prompt`` turns a
``Click`` into the engine's ``Prompt`` (the format and the engine are independent layers).

Label Studio sends coordinates in percent (0–100) of ``original_width`` / ``original_height``, the
image's natural size after EXIF rotation. ``geometry.coords.percent_to_pixels`` and ``pixels_to_percent`` are the only
places in the backend that convert between the two, so a round trip cannot drift.

``image_rotation`` is the rotation of the *view* only. Label Studio's rotate button (the Image tag's
``rotateControl``) turns the whole Konva stage (``rotation`` and ``offset`` on the ``<Stage>`` of
``ImageView.jsx``) and maps every click back through the stage's inverse transform
(``fixZoomedCoords`` in ``tags/object/Image/Image.js``); regions keep the coordinates of the unrotated
image and ``naturalWidth/naturalHeight`` never swap. So the percent values are used as they are, the
answer is in the same unrotated frame, and ``image_rotation`` is only carried over to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from label_anything.errors import LabelAnythingError
from label_anything.geometry.coords import percent_to_pixels
from label_anything.labelstudio.config import LabelConfig

PROMPT_TYPES = ("keypointlabels", "rectanglelabels")
"""Smart region types that become a prompt: clicks and rectangles."""

TEXTAREA_TYPE = "textarea"
"""A ``<TextArea>`` result. Label Studio serializes a smart region with all its results, so a rectangle with a
per-region TextArea (``perRegion="true"``) arrives as two results sharing one ``id``: the text is left out of
the prompt. A TextArea of its own (a typed concept) is read by ``labelstudio.concepts``."""

MAX_POINTS = 200
"""Most clicks one prompt may hold. SAM's decoder attends over every point token, so its time and memory
grow with the square of the count: 10,000 points would take the server's memory, while annotators use a
few dozen at most. More is refused with a ContextError (HTTP 400), not silently truncated."""

MAX_REGIONS = 2 * MAX_POINTS
"""Most regions a context may hold (points and rectangles of every label), checked before any parsing."""

PERCENT_SLACK = 1e-3
"""Percent values may overshoot 0..100 by this much (float noise from the browser); they are clamped."""


class ContextError(LabelAnythingError, ValueError):
    """An interactive context that cannot be turned into a prompt."""


@dataclass(frozen=True, eq=False)
class Click:
    """What the annotator asked for: points and/or a box on one image, under one label.

    Coordinates are pixels of the image as Label Studio shows it (``original_width`` x
    ``original_height``, EXIF orientation applied), x to the right and y down from the top-left corner,
    already converted from Label Studio's percent by ``percent_to_pixels``; a point or box edge on the
    image's right border is at x = width. ``parse_context`` returns only clicks with at least one point or
    a box, every number finite, and a box of positive area.

    Attributes:
        to_name: the image object name.
        from_name: the control of the smart region(s) (e.g. the KeyPointLabels control).
        label: the clicked label.
        width, height: ``original_width`` / ``original_height`` of the image in pixels.
        rotation: ``image_rotation`` in degrees, the rotation of the annotator's view (coordinates do not
            depend on it); passed through to the answer.
        points: (N, 2) float32, x then y in pixels; N may be 0.
        point_labels: (N,) int32, 1 positive (on the object), 0 negative.
        box: (4,) float32 ``x0, y0, x1, y1`` pixels with x1 > x0 and y1 > y0, or None: the newest rectangle.
        boxes: (B, 4) float32, every rectangle of the prompt, oldest first (``box`` is the last); the exemplars
            of a "find similar" request (SAM 3), where one box prompt uses only ``box``.
        box_positive: (B,) bool, False for a rectangle sent with ``is_positive: false`` (a negative exemplar).
    """

    to_name: str
    from_name: str
    label: str
    width: int
    height: int
    rotation: float
    points: np.ndarray
    point_labels: np.ndarray
    box: np.ndarray | None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_positive: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))

    @property
    def point_keys(self) -> frozenset[tuple[float, float, int]]:
        """The points as a set of (x, y, label), rounded so tiny float noise does not matter."""
        return frozenset(
            (round(float(x), 3), round(float(y), 3), int(v))
            for (x, y), v in zip(self.points, self.point_labels, strict=True)
        )


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ContextError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _size(region: dict, key: str) -> int:
    value = _number(region.get(key), key)
    if value <= 0 or value != int(value) or value > 1_000_000:
        raise ContextError(f"{key} must be a positive whole number of pixels, got {region.get(key)!r}")
    return int(value)


def _percent(value: Any, what: str) -> float:
    """A coordinate in percent of the image: finite, inside 0..100 (clamped within ``PERCENT_SLACK``)."""
    number = _number(value, what)
    if not -PERCENT_SLACK <= number <= 100.0 + PERCENT_SLACK:
        raise ContextError(f"{what} must be a percent of the image (0 to 100), got {value!r}")
    return min(max(number, 0.0), 100.0)


def _label(region: dict, type_: str) -> str:
    value = region.get("value")
    if not isinstance(value, dict):
        raise ContextError(f"a {type_} region of the context has no 'value' object")
    labels = value.get(type_) or value.get("labels") or []
    if not isinstance(labels, list) or not labels or not isinstance(labels[0], str):
        raise ContextError(f"a {type_} region of the context has no label")
    return labels[0]


def parse_context(context: Any, config: LabelConfig | None = None) -> Click | None:
    """Turn ``params.context`` of an interactive ``/predict`` into a ``Click``.

    All smart keypoints (``is_positive`` false = a negative click) and a smart rectangle of the same
    image and label form one prompt. When regions of several labels arrive, the label of the last
    region wins (it is the one just clicked). Returns None for a context with no smart region (the
    user deleted them all): the answer is then an empty result.

    Regions from other clients may leave out ``to_name`` / ``from_name`` (the official SAM example's
    test does): with the label ``config``, a label config of one image names the image, and the one
    control of the region's type on it names the control (``from_name`` stays empty when several
    could be meant: nothing in the answer depends on it).

    ``boxes`` holds every rectangle of the group (the exemplars of a SAM 3 "find similar"), ``box`` the newest.
    The text of a per-region TextArea (a ``textarea`` result sharing its ``id`` with a smart region) is left
    out; a TextArea result of its own is a typed concept, read by ``labelstudio.concepts.parse_typed_concept``
    before this function is called.

    Raises ContextError (and only ContextError) for anything malformed: a region that is not a smart
    keypoint or rectangle, one without a ``value`` object or without a ``to_name`` the config cannot
    supply, coordinates that are not finite or outside 0–100 percent, a box of zero area, more than
    ``MAX_POINTS`` points.
    """
    if not isinstance(context, dict):
        raise ContextError("params.context must be an object with a 'result' list")
    regions = context.get("result")
    if not isinstance(regions, list):
        raise ContextError("params.context.result must be a list of regions")
    if len(regions) > MAX_REGIONS:
        raise ContextError(f"the context has {len(regions)} regions; at most {MAX_REGIONS} are accepted")
    regions = without_region_texts(regions)
    for region in regions:
        _check_prompt_region(region)
    if not regions:
        return None
    regions = [_named(region, config) for region in regions]
    last = regions[-1]
    to_name = last["to_name"]
    label = _label(last, last["type"])
    group = [r for r in regions if r.get("to_name") == to_name and _label(r, r["type"]) == label]
    width, height = _size(last, "original_width"), _size(last, "original_height")
    points: list[tuple[float, float]] = []
    point_labels: list[int] = []
    box: np.ndarray | None = None
    boxes: list[np.ndarray] = []
    box_positive: list[bool] = []
    from_name = str(last.get("from_name") or "")
    for region in group:
        if (_size(region, "original_width"), _size(region, "original_height")) != (width, height):
            raise ContextError("the regions of one context disagree on original_width/original_height")
        value = region.get("value")
        if not isinstance(value, dict):
            raise ContextError("a context region has no value")
        x_percent, y_percent = _percent(value.get("x"), "value.x"), _percent(value.get("y"), "value.y")
        x, y = percent_to_pixels(x_percent, width), percent_to_pixels(y_percent, height)
        if region["type"] == "keypointlabels":
            points.append((x, y))
            point_labels.append(0 if region.get("is_positive") is False else 1)
        else:
            if _number(value.get("rotation", 0) or 0, "value.rotation") != 0:
                raise ContextError("a rotated smart rectangle cannot be a prompt; draw it without rotation")
            # the far corner must be inside the image too; clamped like the near one
            x1 = _percent(x_percent + _number(value.get("width"), "value.width"), "value.x + value.width")
            y1 = _percent(y_percent + _number(value.get("height"), "value.height"), "value.y + value.height")
            # the newest rectangle wins: Label Studio re-sends older ones until they are deleted
            box = np.array([x, y, percent_to_pixels(x1, width), percent_to_pixels(y1, height)], dtype=np.float32)
            if box[2] > box[0] and box[3] > box[1]:  # an older one of no area is no exemplar; the newest: below
                boxes.append(box)
                box_positive.append(region.get("is_positive") is not False)
    if len(points) > MAX_POINTS:
        raise ContextError(f"the context has {len(points)} points; at most {MAX_POINTS} are accepted")
    rotation = region_rotation(last)
    if box is not None and (box[2] <= box[0] or box[3] <= box[1]):
        # the one prompt rule the parsing above does not already ensure (points and box are finite, labels
        # 0/1, one point or box at least); the engine's ``Prompt`` refuses the same box with these words
        raise ContextError(f"a box needs x1 > x0 and y1 > y0, got {box.tolist()}")
    return Click(
        to_name=to_name,
        from_name=from_name,
        label=label,
        width=width,
        height=height,
        rotation=rotation,
        points=np.asarray(points, dtype=np.float32).reshape(-1, 2),
        point_labels=np.asarray(point_labels, dtype=np.int32),
        box=box,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        box_positive=np.asarray(box_positive, dtype=bool),
    )


def without_region_texts(regions: list) -> list:
    """``regions`` less the ``textarea`` results that share their ``id`` with a smart region (the text of a
    per-region TextArea, serialized beside its region); everything else is kept, in order."""
    ids = {
        r.get("id") for r in regions
        if isinstance(r, dict) and r.get("type") in PROMPT_TYPES and isinstance(r.get("id"), str) and r.get("id")
    }
    if not ids:
        return regions
    return [r for r in regions if not (isinstance(r, dict) and r.get("type") == TEXTAREA_TYPE and r.get("id") in ids)]


def _check_prompt_region(region: Any) -> None:
    """Refuse context items that cannot be a prompt, naming them, rather than ignoring them silently:
    Label Studio drops error bodies, so the backend's log line is how a user learns why nothing happened."""
    if not isinstance(region, dict):
        raise ContextError(f"a context region must be an object, got {type(region).__name__}")
    type_ = region.get("type")
    if not isinstance(type_, str) or type_ not in PROMPT_TYPES:
        raise ContextError(
            f"context region type {type_!r} cannot be a prompt (smart regions must be one of "
            f"{', '.join(PROMPT_TYPES)})"
        )


def _has_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _named(region: dict, config: LabelConfig | None) -> dict:
    """``region``, or a copy with the ``to_name`` / ``from_name`` it leaves out taken from ``config``."""
    if _has_name(region.get("to_name")) and _has_name(region.get("from_name")):
        return region
    region = dict(region)
    if not _has_name(region.get("to_name")):
        images = tuple(config.images) if config is not None else ()
        if len(images) != 1:
            which = (
                "and no label config to take it from" if config is None
                else "and the label config has no <Image>" if not images
                else f"and the label config has {len(images)} images ({', '.join(map(repr, images))})"
            )
            raise ContextError(f"a context region has no to_name, {which}: send to_name with each region")
        region["to_name"] = images[0]
    if not _has_name(region.get("from_name")) and config is not None:
        controls = [c.name for c in config.controls if c.type == region["type"] and region["to_name"] in c.to_names]
        region["from_name"] = controls[0] if len(controls) == 1 else ""
    return region


def region_rotation(region: dict) -> float:
    """``image_rotation`` of a region (0 when absent)."""
    value = region.get("image_rotation", 0) or 0
    return _number(value, "image_rotation")
