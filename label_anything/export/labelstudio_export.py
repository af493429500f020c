"""Label Studio's JSON export → tasks → regions (masks, polygons, boxes in pixels). Pure: no files written.

An export is a JSON array of tasks::

    {"id": 7, "data": {"image": "/data/upload/3/abc123-my%20cat.jpg"},
     "annotations": [{"id": 1, "result": [...], "was_cancelled": false, "created_at": "...", ...}],
     "predictions": [...]}

Each result of ``brushlabels`` (``value.format == "rle"``), ``polygonlabels`` (points in percent) and
``rectanglelabels`` (percent) becomes a ``Region``; everything else is counted by reason in a ``Tally`` so
that nothing is lost silently. Coordinates become pixel-edge coordinates (see ``label_anything.masks``):
``x_px = x% * original_width / 100``.

Exports of many tasks are streamed with ``ijson`` (its C backend parses a 10,000-task export at tens of MB/s
and holds one task at a time); without ``ijson`` the whole array is loaded with ``json.load``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from label_anything.errors import LabelAnythingError
from label_anything.labelstudio.rle import brush_rle_decode
from label_anything.masks import polygons_to_mask

try:  # streaming keeps memory bounded on exports of many thousands of tasks
    import ijson
except ImportError:  # pragma: no cover - ijson is a dependency of the dev environment
    ijson = None
_JSON_ERRORS: tuple[type[Exception], ...] = (ValueError, ijson.JSONError) if ijson else (ValueError,)

RegionKind = Literal["brush", "polygon", "rectangle"]

# Result types (and the label-less shape types that Label Studio pairs with a "labels" result of the same id).
_KINDS: dict[str, RegionKind] = {
    "brushlabels": "brush",
    "brush": "brush",
    "polygonlabels": "polygon",
    "polygon": "polygon",
    "rectanglelabels": "rectangle",
    "rectangle": "rectangle",
}
_LABEL_KEYS = ("brushlabels", "polygonlabels", "rectanglelabels", "labels")


@dataclass(eq=False)
class Region:
    """One labelled object of one image, in pixels.

    Attributes:
        label: the class name.
        kind: what the annotator drew: ``brush``, ``polygon`` or ``rectangle``.
        width: W of the image (``original_width``).
        height: H of the image (``original_height``).
        mask: (H, W) bool for brush regions, else None.
        polygon: (K, 2) float64 xy pixel-edge coordinates for polygon regions, else None.
        box: (4,) float64 ``x0, y0, x1, y1`` for rectangle regions (the bounds of the rotated box), else None.
        box_area: width × height of a rectangle region in pixels (unrotated), else 0.
        corners: (4, 2) float64 xy corners of a rectangle region (rotated when Label Studio rotated it).
    """

    label: str
    kind: RegionKind
    width: int
    height: int
    mask: np.ndarray | None = None
    polygon: np.ndarray | None = None
    box: np.ndarray | None = None
    box_area: float = 0.0
    corners: np.ndarray | None = None

    def to_mask(self) -> np.ndarray:
        """The region as a (H, W) bool mask: brush as painted, polygon rasterized as pycocotools does."""
        if self.mask is not None:
            return self.mask
        if self.polygon is not None:
            return polygons_to_mask([self.polygon], self.height, self.width)
        raise ValueError("a rectangle region has no mask")


@dataclass
class Tally:
    """What was not converted, by reason, and what was skipped on purpose.

    ``dropped`` are losses (a malformed or unsupported region, a label outside the class list, a missing
    image): ``--strict`` makes them an error. ``skipped`` are the user's choices or Label Studio's
    (cancelled annotations, older annotations of a task, ``--skip-boxes``).
    """

    dropped: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def drop(self, reason: str, where: str = "", n: int = 1) -> None:
        self.dropped[reason] += n
        if where:
            self.examples.setdefault(reason, where)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def lines(self) -> list[str]:
        """Human readable summary, one line per reason, losses first."""
        out = []
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            example = f" (e.g. {self.examples[reason]})" if reason in self.examples else ""
            out.append(f"  not converted: {n} × {reason}{example}")
        for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            out.append(f"  skipped: {n} × {reason}")
        return out


# -- reading the export ---------------------------------------------------------------------------------
class _ProgressReader:
    """A binary file wrapper that reports how many bytes were read (for a progress bar by bytes)."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int], None] | None) -> None:
        self.raw = raw
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self.on_read is not None and data:
            self.on_read(len(data))
        return data


def iter_tasks(path: str | Path, *, on_read: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the tasks of a Label Studio JSON export, one at a time.

    Args:
        path: the export file (a JSON array of task objects; a single task object is accepted too).
        on_read: called with the number of bytes read after each read (progress).

    Raises:
        LabelAnythingError: the file is missing or is not a JSON export of tasks.
    """
    p = Path(path)
    try:
        raw = p.open("rb")
    except OSError as exc:
        raise LabelAnythingError(f"cannot read the export {p}: {exc.strerror or exc}") from None
    with raw:
        head = raw.read(4096).lstrip()
        raw.seek(0)
        if head[:1] == b"{":  # one task, as Label Studio exports a single task
            yield _checked_task(json.load(raw), p, 0)
            return
        if head[:1] != b"[":
            raise LabelAnythingError(f"{p} is not a Label Studio JSON export (it does not start with '[')")
        reader = _ProgressReader(raw, on_read)
        if ijson is None:
            items: Any = json.loads(reader.read())
        else:
            # use_float: plain floats instead of Decimal, which numpy and json cannot take as is
            items = ijson.items(reader, "item", use_float=True)
        try:
            for i, task in enumerate(items):
                yield _checked_task(task, p, i)
        except _JSON_ERRORS as exc:
            raise LabelAnythingError(f"{p} is not valid JSON ({exc}); export the project again as JSON") from None


def _checked_task(task: Any, path: Path, index: int) -> dict[str, Any]:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise LabelAnythingError(
            f"item {index} of {path} is not a Label Studio task (an object with 'data'); "
            "export the project as JSON (not JSON-MIN or COCO)"
        )
    return task


# -- annotations and image references ------------------------------------------------------------------
def _when(annotation: dict[str, Any]) -> tuple[float, float, float]:
    def stamp(key: str) -> float:
        text = annotation.get(key)
        if not isinstance(text, str):
            return -math.inf
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return -math.inf

    ident = annotation.get("id")
    return stamp("updated_at"), stamp("created_at"), float(ident) if isinstance(ident, int | float) else -math.inf


def choose_annotations(task: dict[str, Any], *, all_annotations: bool, tally: Tally) -> list[dict[str, Any]]:
    """The annotations of a task to convert: the newest non-cancelled one, or all non-cancelled ones.

    "Newest" is the latest ``updated_at``, then ``created_at``, then the highest id. Cancelled
    ("skipped" in the UI) annotations and the regions of older annotations are counted as skipped.
    """
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    kept = []
    for a in annotations:
        if a.get("was_cancelled"):
            tally.skip("cancelled annotation")
        else:
            kept.append(a)
    if all_annotations or len(kept) <= 1:
        return kept
    newest = max(kept, key=_when)
    for a in kept:
        if a is not newest:
            tally.skip("region of an older annotation of the same task (use --all-annotations)",
                       n=len(a.get("result") or []))
    return [newest]


def image_reference(task: dict[str, Any], image_key: str | None) -> str | None:
    """The image URL or path of a task: ``data[image_key]``, else ``data["image"]``, else the first string."""
    data = task["data"]
    for key in (image_key, "image", "img"):
        if key and isinstance(data.get(key), str):
            return data[key]
    if image_key:
        return None
    for value in data.values():
        if isinstance(value, str) and ("/" in value or "." in value):
            return value
    return None


def reference_file_name(ref: str) -> str:
    """The file name a reference stands for, URL-decoded (spaces and non-ASCII characters survive).

    >>> reference_file_name("/data/upload/3/abc123-my%20cat.jpg")
    'abc123-my cat.jpg'
    >>> reference_file_name("/data/local-files/?d=folder/k%C3%B6nig.jpg")
    'könig.jpg'
    >>> reference_file_name("https://example.com/a/b.png?X-Amz-Signature=1")
    'b.png'
    """
    return Path(reference_relative_path(ref)).name or "image"


def reference_relative_path(ref: str) -> str:
    """The path part that names the file: ``d=`` of a local-files URL, else the URL path, URL-decoded.

    >>> reference_relative_path("/data/local-files/?d=folder/x%201.jpg")
    'folder/x 1.jpg'
    >>> reference_relative_path("/data/upload/3/abc-x.jpg")
    '3/abc-x.jpg'
    """
    parts = urlsplit(ref)
    if parts.path.rstrip("/").endswith("/data/local-files"):
        d = parse_qs(parts.query).get("d")
        if d:
            return d[0]  # parse_qs already URL-decodes
    path = unquote(parts.path)
    for prefix in ("/data/upload/", "data/upload/"):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path.lstrip("/")


# -- regions --------------------------------------------------------------------------------------------
def _size(result: dict[str, Any]) -> tuple[int, int] | None:
    try:
        w, h = int(result["original_width"]), int(result["original_height"])
    except (KeyError, TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def _labels_of(group: list[dict[str, Any]]) -> list[str]:
    for result in group:
        value = result.get("value") or {}
        for key in _LABEL_KEYS:
            labels = value.get(key)
            if isinstance(labels, list) and labels:
                return [str(x) for x in labels]
    return []


def _rectangle_corners(value: dict[str, Any], w: int, h: int) -> np.ndarray:
    # Label Studio rotates a rectangle clockwise on screen (y down) about its top-left corner (x, y).
    x, y = float(value["x"]) * w / 100, float(value["y"]) * h / 100
    bw, bh = float(value["width"]) * w / 100, float(value["height"]) * h / 100
    angle = math.radians(float(value.get("rotation") or 0.0))
    c, s = math.cos(angle), math.sin(angle)
    local = np.array([[0.0, 0.0], [bw, 0.0], [bw, bh], [0.0, bh]])
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + np.array([x, y])


def parse_regions(annotation: dict[str, Any], tally: Tally, where: str = "") -> Iterator[Region]:
    """The regions of one annotation, in result order; the rest is counted in ``tally``.

    Results sharing an ``id`` are one region (Label Studio may split a shape and its labels); a region with
    several labels gives its first one, and the others are counted.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for i, result in enumerate(annotation.get("result") or []):
        if not isinstance(result, dict):
            tally.drop("result that is not an object", where)
            continue
        key = str(result.get("id") or f"#{i}")
        groups.setdefault(key, []).append(result)
    for rid, group in groups.items():
        shape = next((r for r in group if r.get("type") in _KINDS), None)
        if shape is None:
            for r in group:
                if r.get("type") not in ("labels",):
                    tally.drop(f"unsupported result type {r.get('type')!r}", where)
            continue
        region = _parse_region(shape, _labels_of(group), tally, f"{where} region {rid}")
        if region is not None:
            yield region


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
        tally.skip(f"extra label of a region with several labels (the first one is used): {len(labels) - 1}")
    size = _size(result)
    if size is None:
        tally.drop(f"{kind} region without original_width/original_height", where)
        return None
    w, h = size
    label = labels[0]
    try:
        if kind == "brush":
            if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
                tally.drop(f"brush region in format {value.get('format')!r} (only rle is read)", where)
                return None
            mask = brush_rle_decode(value["rle"], h, w)
            if not mask.any():
                tally.drop("empty brush mask", where)
                return None
            return Region(label, kind, w, h, mask=mask)
        if kind == "polygon":
            points = np.asarray(value.get("points"), dtype=np.float64)
            if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
                tally.drop("polygon with fewer than 3 points", where)
                return None
            polygon = points * np.array([w, h]) / 100.0
            return Region(label, kind, w, h, polygon=polygon)
        corners = _rectangle_corners(value, w, h)
        box = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
        box = np.clip(box, 0, [w, h, w, h])
        if box[2] <= box[0] or box[3] <= box[1]:
            tally.drop("rectangle of zero size or outside the image", where)
            return None
        box_area = float(value["width"]) * w / 100 * float(value["height"]) * h / 100
        return Region(label, kind, w, h, box=box, box_area=box_area, corners=corners)
    except (ValueError, TypeError, KeyError) as exc:
        reason = "brush RLE that does not decode" if kind == "brush" else f"malformed {kind} region"
        tally.drop(reason, f"{where}: {exc}")
        return None


def task_size(task: dict[str, Any]) -> tuple[int, int] | None:
    """(W, H) of a task's image from the first result that carries it, in any annotation or prediction."""
    for source in ("annotations", "predictions"):
        for a in task.get(source) or []:
            for r in (a.get("result") or []) if isinstance(a, dict) else []:
                if isinstance(r, dict) and (size := _size(r)):
                    return size
    return None


def merge_suggestion_duplicates(regions: list[Region], tally: Tally) -> list[Region]:
    """Drop the extra shapes a smart click answers with, keeping one object per object.

    With ``--out-bbox`` / ``--out-poly`` the backend answers one click with a brush mask *and* its box
    and polygons; accepted together they are one object, not three. Within one annotation:

    - a rectangle whose box matches (within 1 px per edge) the tight box of a mask region (brush or
      polygon) of the same label is that mask's box;
    - a polygon lying at least 90% inside a brush mask of the same label is that mask's outline.

    Both are counted as skipped. A rectangle or polygon that stands alone stays an object.
    """
    from label_anything.masks import mask_to_xyxy

    brushes = [r for r in regions if r.kind == "brush" and r.mask is not None and r.mask.any()]
    kept_polygons: list[Region] = []
    out: list[Region] = []
    for region in regions:
        if region.kind == "polygon" and region.polygon is not None:
            polygon_mask = region.to_mask()
            area = int(polygon_mask.sum())
            if area and any(
                b.label == region.label and np.count_nonzero(polygon_mask & b.mask) >= 0.9 * area for b in brushes
            ):
                tally.skip("polygon outlining a brush mask of the same label (one object)")
                continue
            kept_polygons.append(region)
        out.append(region)
    masked = brushes + kept_polygons
    boxes = {id(m): mask_to_xyxy(m.to_mask()) for m in masked}
    merged: list[Region] = []
    for region in out:
        if region.kind == "rectangle" and region.box is not None and any(
            m.label == region.label and np.all(np.abs(boxes[id(m)] - region.box) <= 1.0) for m in masked
        ):
            tally.skip("box of a mask region of the same label (one object)")
            continue
        merged.append(region)
    return merged
