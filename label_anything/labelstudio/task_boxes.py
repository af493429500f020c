"""The rectangles already on a Label Studio task → box prompts, for "Retrieve predictions" (boxes to masks).

What Label Studio 1.23.2 sends in a ``/predict`` without context (seen on a real server, "Retrieve
predictions" run as ``POST /api/dm/actions?id=retrieve_tasks_predictions&project=ID``, and a task opened
as ``GET /api/tasks/ID``): every selected task in ONE request, each serialized whole (``TaskSimpleSerializer``),

    {"id": 1, "data": {"image": "..."}, "project": 1, "is_labeled": true, ...,
     "annotations": [{"id": 1, "result": [<region>, ...], "was_cancelled": false,
                      "created_at": "2026-...Z", "updated_at": "2026-...Z", "completed_by": 1, ...}],
     "predictions": [{"id": 1, "result": [<region>, ...], "model_version": "coco-import", "score": 0.5,
                      "created_at": "...", "updated_at": "...", ...}]}

with the regions exactly as saved (a rectangle: ``type "rectanglelabels"``, ``value`` in percent with
``rotation``, ``original_width``/``original_height`` when the browser or the importer wrote them).
Tasks that already hold a prediction of the backend's current ``model_version`` are not sent.
"""

from __future__ import annotations

from typing import Any

from label_anything.labelstudio.context import Click, ContextError, parse_context
from label_anything.labelstudio.tally import Tally
from label_anything.labelstudio.tasks import choose_annotations

RECTANGLE_TYPE = "rectanglelabels"


def _list(value: Any) -> list:
    """``value`` when it is a list, else empty: task bodies are untrusted input."""
    return value if isinstance(value, list) else []


def _rectangles(item: dict[str, Any]) -> list[dict[str, Any]]:
    result = item.get("result")
    if not isinstance(result, list):
        return []
    return [r for r in result if isinstance(r, dict) and r.get("type") == RECTANGLE_TYPE]


def task_rectangles(task: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The rectangle regions to turn into masks, and where they came from (``"annotation"``,
    ``"prediction"`` or ``""`` when there are none). The regions are as saved: ``rectanglelabels`` with
    ``value`` x/y/width/height in percent of the image; ``rectangle_click`` turns one into pixels.

    The newest non-cancelled annotation counts (as ``convert`` reads a task); an annotator's boxes win
    over a model's. Without rectangles in it, the newest prediction that has rectangles is used.
    """
    annotations = [a for a in _list(task.get("annotations")) if isinstance(a, dict)]
    for annotation in choose_annotations({"annotations": annotations}, all_annotations=False, tally=Tally()):
        rectangles = _rectangles(annotation)
        if rectangles:
            return "annotation", rectangles
    predictions = [p for p in _list(task.get("predictions")) if isinstance(p, dict) and _rectangles(p)]
    # "newest" as for annotations: latest updated_at, then created_at, then the highest id
    for prediction in choose_annotations({"annotations": predictions}, all_annotations=False, tally=Tally()):
        return "prediction", _rectangles(prediction)
    return "", []


def is_rotated(region: dict[str, Any]) -> bool:
    """True for a rectangle drawn with a rotation: SAM's box prompt is axis-aligned."""
    value = region.get("value")
    rotation = value.get("rotation", 0) if isinstance(value, dict) else 0
    return isinstance(rotation, int | float) and rotation != 0


def rectangle_label(region: dict[str, Any]) -> str | None:
    """The label of a rectangle region, for log lines (None when it has none)."""
    value = region.get("value")
    labels = value.get(RECTANGLE_TYPE) if isinstance(value, dict) else None
    return labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else None


def rectangle_click(region: dict[str, Any], width: int, height: int) -> Click:
    """One saved rectangle → the same ``Click`` a smart rectangle with that box would be: ``box`` (4,)
    float32 ``x0, y0, x1, y1`` in pixels of a ``width`` x ``height`` image, no points.

    ``width``/``height`` (the image's size, EXIF orientation applied) stand in for a missing
    ``original_width``/``original_height`` (regions imported by hand may lack them). Raises ContextError for
    a rectangle that cannot be a box prompt (rotated, zero area, outside the image, no label).
    """
    filled = {"original_width": width, "original_height": height, **region}
    if filled.get("original_width") is None:
        filled["original_width"] = width
    if filled.get("original_height") is None:
        filled["original_height"] = height
    click = parse_context({"result": [filled]})
    if click is None or click.box is None:  # cannot happen for one rectangle; keeps the type checker honest
        raise ContextError("the rectangle has no box")
    return click
