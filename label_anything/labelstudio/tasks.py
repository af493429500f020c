"""Label Studio's JSON export → tasks → regions (masks, polygons, boxes in pixels). Pure: no files written.

An export is a JSON array of tasks::

    {"id": 7, "data": {"image": "/data/upload/3/abc123-my%20cat.jpg"},
     "annotations": [{"id": 1, "result": [...], "was_cancelled": false, "created_at": "...", ...}],
     "predictions": [...]}

Each result of ``brushlabels`` (``value.format == "rle"``), ``polygonlabels`` (points in percent) and
``rectanglelabels`` (percent) becomes a ``Region``; everything else is counted by reason in a ``Tally`` so
that nothing is lost silently. Coordinates become pixel-edge coordinates (see ``label_anything.geometry.masks``):
``x_px = x% * original_width / 100``.

Exports of many tasks are streamed with ``ijson`` (its C backend parses a 10,000-task export at tens of MB/s
and holds one task at a time); without ``ijson`` the whole array is loaded with ``json.load``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from label_anything.errors import LabelAnythingError
from label_anything.geometry.masks import polygons_to_mask
from label_anything.imaging.decode import DEFAULT_MAX_PIXELS
from label_anything.labelstudio.results import answer_of
from label_anything.labelstudio.rle import brush_rle_decode

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
# A region's mask is H × W bools: past this an export could make one region allocate any amount of memory.
MAX_REGION_PIXELS = DEFAULT_MAX_PIXELS


@dataclass(eq=False)
class Region:
    """One labelled object of one image, in pixels.

    Attributes:
        label: the class name.
        kind: what the annotator drew: ``brush``, ``polygon`` or ``rectangle``.
        width: W of the image (``original_width``).
        height: H of the image (``original_height``).
        mask: (H, W) bool for brush regions, else None.
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
        """The region as a (H, W) bool mask: brush as painted, polygons rasterized as pycocotools does."""
        if self.mask is not None:
            return self.mask
        if self.polygons:
            return polygons_to_mask(list(self.polygons), self.height, self.width)
        raise ValueError("a rectangle region has no mask")


@dataclass
class Tally:
    """What was not converted, by reason, and what was skipped on purpose.

    ``dropped`` and ``skipped`` count regions (one result, or the results that share an id), so that the
    regions of an export are exactly the annotations written plus these counts. ``dropped`` are losses (a
    malformed or unsupported region, a label outside the class list); ``skipped`` are the user's choices or
    Label Studio's (cancelled annotations, older annotations of a task, ``--skip-boxes``) and regions written
    elsewhere or merged into another. ``images_dropped`` counts images missing from the dataset, or present
    without their file. ``--strict`` makes ``dropped`` and ``images_dropped`` an error. ``notes`` lose
    nothing.
    """

    dropped: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    images_dropped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def drop(self, reason: str, where: str = "", n: int = 1) -> None:
        if n:
            self.dropped[reason] += n
            self._example(reason, where)

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] += n

    def drop_image(self, reason: str, where: str = "") -> None:
        self.images_dropped[reason] += 1
        self._example(reason, where)

    def note(self, reason: str, n: int = 1) -> None:
        if n:
            self.notes[reason] += n

    def losses(self) -> int:
        """Regions and images lost: what ``--strict`` refuses."""
        return sum(self.dropped.values()) + sum(self.images_dropped.values())

    def _example(self, reason: str, where: str) -> None:
        if where:
            self.examples.setdefault(reason, where[:300])

    def lines(self) -> list[str]:
        """Human readable summary, one line per reason, losses first."""
        out = []
        for prefix, counter in (("not converted (images)", self.images_dropped), ("not converted", self.dropped)):
            for reason, n in sorted(counter.items(), key=lambda kv: -kv[1]):
                example = f" (e.g. {self.examples[reason]})" if reason in self.examples else ""
                out.append(f"  {prefix}: {n} × {reason}{example}")
        for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            out.append(f"  skipped: {n} × {reason}")
        for reason, n in sorted(self.notes.items(), key=lambda kv: -kv[1]):
            out.append(f"  note: {n} × {reason}")
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
        if head[:1] not in (b"{", b"["):
            raise LabelAnythingError(f"{p} is not a Label Studio JSON export (it does not start with '[')")
        reader = _ProgressReader(raw, on_read)
        try:
            if head[:1] == b"{":  # one task, as Label Studio exports a single task
                yield _checked_task(json.loads(reader.read()), p, 0)
                return
            items: Iterator[Any] = iter(json.loads(reader.read())) if ijson is None else _stream(raw, reader)
            for i, task in enumerate(items):
                yield _checked_task(task, p, i)
        except (*_JSON_ERRORS, RecursionError) as exc:
            detail = " ".join(str(exc).split())[:200]  # yajl's messages span lines: the error is one line
            raise LabelAnythingError(f"{p} is not valid JSON ({detail}); export the project again as JSON") from None


def _stream(raw: IO[bytes], reader: _ProgressReader) -> Iterator[Any]:
    """The items of the top-level array, with ijson's C backend; from where it stops on an integer beyond 64
    bits (valid JSON, e.g. a task id), with its pure-Python one, which reads any integer."""
    done = 0
    try:
        # use_float: plain floats instead of Decimal, which numpy and json cannot take as is
        for item in ijson.items(reader, "item", use_float=True):
            yield item
            done += 1
        return
    except ijson.JSONError as exc:
        if "integer overflow" not in str(exc) or ijson.backend == "python":
            raise
    raw.seek(0)
    reader.on_read = None  # the bytes are read a second time: the progress bar has counted them already
    python = ijson.get_backend("python")
    for i, item in enumerate(python.items(reader, "item", use_float=True)):
        if i >= done:
            yield item


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
        except (ValueError, OverflowError):
            return -math.inf

    ident = annotation.get("id")
    number = -math.inf
    if isinstance(ident, int | float) and not isinstance(ident, bool):
        try:
            number = float(ident)
        except OverflowError:  # an int beyond float's range
            number = math.inf
    return stamp("updated_at"), stamp("created_at"), number if not math.isnan(number) else -math.inf


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


def _entries(task: dict[str, Any], key: str, *, lost: Callable[[str, int], None]) -> list[dict[str, Any]]:
    """The annotations (or predictions) of a task that are objects; ``lost(reason, n)`` counts the rest."""
    entries = task.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        lost(f"task whose {key} are not a list", 1)
        return []
    for entry in entries:
        if not isinstance(entry, dict):
            lost(f"item of {key} that is not an object", 1)
    return [e for e in entries if isinstance(e, dict)]


def choose_annotations(task: dict[str, Any], *, all_annotations: bool, tally: Tally) -> list[dict[str, Any]]:
    """The annotations of a task to convert: the newest non-cancelled one, or all non-cancelled ones.

    "Newest" is the latest ``updated_at``, then ``created_at``, then the highest id. The regions of
    cancelled ("skipped" in the UI) and of older annotations are counted as skipped.
    """
    annotations = _entries(task, "annotations", lost=lambda reason, n: tally.drop(reason, n=n))
    kept = []
    for a in annotations:
        if a.get("was_cancelled") in (True, 1):
            tally.skip("region of a cancelled annotation", n=count_regions(a.get("result")))
        else:
            kept.append(a)
    if all_annotations or len(kept) <= 1:
        return kept
    newest = max(kept, key=_when)
    for a in kept:
        if a is not newest:
            tally.skip("region of an older annotation of the same task (use --all-annotations)",
                       n=count_regions(a.get("result")))
    return [newest]


def count_predictions(task: dict[str, Any], tally: Tally) -> None:
    """Count the regions of a task's predictions as skipped: only annotations are exported."""
    reason = "region of a prediction (only annotations are exported)"
    predictions = _entries(task, "predictions", lost=lambda _, n: tally.skip(reason, n=n))
    tally.skip(reason, n=sum(count_regions(p.get("result")) for p in predictions))


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
    try:
        parts = urlsplit(ref)
    except ValueError:  # e.g. "http://[": not a URL, and no file name in it either
        return ""
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
    x, y = _number(value, "x") * w / 100, _number(value, "y") * h / 100
    bw, bh = _number(value, "width") * w / 100, _number(value, "height") * h / 100
    angle = math.radians(_number(value, "rotation", 0.0) % 360.0)
    c, s = math.cos(angle), math.sin(angle)
    local = np.array([[0.0, 0.0], [bw, 0.0], [bw, bh], [0.0, bh]])
    rot = np.array([[c, -s], [s, c]])
    corners = local @ rot.T + np.array([x, y])
    if not np.isfinite(corners).all():  # finite percents of a huge image can still overflow
        raise ValueError("the rectangle's corners are not finite numbers")
    return corners


def _clip_half(points: np.ndarray, axis: int, limit: float, below: bool) -> np.ndarray:
    # One Sutherland-Hodgman step: keep the side of the line coord[axis] = limit that holds the image.
    nxt = np.roll(points, -1, axis=0)
    inside = points[:, axis] <= limit if below else points[:, axis] >= limit
    crosses = inside != np.roll(inside, -1)
    delta = nxt[:, axis] - points[:, axis]
    t = np.where(crosses, (limit - points[:, axis]) / np.where(crosses, delta, 1.0), 0.0)
    cut = points * (1.0 - t[:, None]) + nxt * t[:, None]  # never overflows, unlike p + t * (q - p)
    cut[:, axis] = limit
    both = np.stack([points, cut], axis=1).reshape(-1, 2)
    return both[np.stack([inside, crosses], axis=1).reshape(-1)]


def clip_polygon(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A polygon (K, 2) cut to the box ``[x0, x1] × [y0, y1]`` (even-odd filling inside it is kept: what is
    cut away is replaced by runs along the box's border). Returned as is when it lies inside the box."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0 or ((points.min(axis=0) >= [x0, y0]).all() and (points.max(axis=0) <= [x1, y1]).all()):
        return points
    for axis, limit, below in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        if len(points) == 0:
            break
        points = _clip_half(points, axis, float(limit), below)
    return points


def bounded_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """A polygon whose vertices lie within one image size of the image, cut there when they do not.

    pycocotools upsamples every edge, so a vertex a billion pixels away would cost a billion steps (or
    overflow its ints). A polygon within that margin is kept exactly as drawn; the edges of one that is cut
    keep their direction, so the pixels inside the image change by at most a rounding of pycocotools'.
    """
    margin = float(max(width, height))
    return clip_polygon(points, -margin, -margin, width + margin, height + margin)


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
    parse = {"brush": _brush, "polygon": _polygon, "rectangle": _rectangle}[kind]
    try:
        region = parse(value, labels[0], *size)
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


def _polygon(value: dict[str, Any], label: str, w: int, h: int) -> Region | str:
    points = np.asarray(value.get("points"), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        return "polygon without 3 or more [x, y] points"
    if not np.isfinite(points).all():
        return "polygon with a point that is not a finite number"
    with np.errstate(over="ignore"):  # 1e308 % of a 600-pixel image: inf, refused just below
        pixels = points * np.array([w, h]) / 100.0
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
    drawn = abs(_number(value, "width") * w / 100 * _number(value, "height") * h / 100)
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
    label: the brush mask is the object (its box and polygons are counted as skipped); without a brush, its
    polygons are the parts of one object; a box alone stays a box. Regions of no answer (drawn by hand,
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
    brushes = [r for r in group if r.kind == "brush" and r.mask is not None]
    polygons = [r for r in group if r.kind == "polygon"]
    boxes = [r for r in group if r.kind == "rectangle"]
    if not brushes and not polygons:
        return boxes
    tally.skip("box of a smart-click answer that has a mask (one object)", n=len(boxes))
    if brushes:
        tally.skip("polygon of a smart-click answer that has a brush mask (one object)", n=len(polygons))
        tally.skip("brush mask joined to the other masks of its smart-click answer", n=len(brushes) - 1)
        if len(brushes) == 1:
            return brushes
        return [replace(brushes[0], mask=np.logical_or.reduce([b.mask for b in brushes]))]
    tally.skip("polygon part joined to the other parts of its smart-click answer", n=len(polygons) - 1)
    return [replace(polygons[0], polygons=tuple(p for r in polygons for p in r.polygons))]
