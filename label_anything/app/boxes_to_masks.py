"""``label-anything boxes-to-masks``: give every box annotation of a COCO file a mask, the box as prompt.

Each image is read and encoded once, then every one of its boxes is decoded against that one embedding,
exactly as an interactive ``decode(model, encode(model, image), Prompt.from_lists(box=...)).best()`` would,
so a batch mask equals the mask a click-by-click session gives for the same box.

Output: the input COCO file with, on every annotation that has a usable ``bbox``:

* ``segmentation``: the mask as compressed COCO RLE (``--format rle``, default) or polygons
  (``--format polygon``);
* ``area``: painted pixels of the mask (``--format polygon``: of the rasterized polygons, which fill holes
  beyond the 32 largest per part and smooth the outline by 1 px);
* ``mask_score``: the model's predicted IoU of the mask (a field of its own: COCO's ``score`` means the
  detector's confidence in result files, which this must not overwrite).

Every other field (``bbox`` included, left as given) and every other annotation stays as it was.

A box that cannot be segmented (no usable ``bbox``, an image that is missing, unreadable or of another size
than the COCO file says, a box beside the image...) leaves its annotation untouched and is counted under its
reason (``BoxesReport.skipped``); no input stops the run.

Which pixels the boxes are on: COCO files written by tools that read EXIF give a rotated photo's displayed
size, those that ignore it give the stored size. The image entry's ``height``/``width`` decide, per image:
the displayed size (or none given) → EXIF applied; the stored size → the stored pixels, EXIF ignored (and
counted); neither → the image is skipped. So an RLE's size always equals its image entry's.

Resumable, bounded memory: one image's embedding is alive at a time, and after each image its results are
appended to ``OUT.partial.jsonl`` (one JSON line per image). A rerun reads that file and skips the images
it lists; the final OUT is written atomically (temporary file + rename) and only then is the sidecar removed.
A kill can tear the last line at any byte: the rerun cuts the file back to the end of its last complete
record before appending, so any number of interruptions lose at most the image in flight each time.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from label_anything.engine import Prompt, decode, encode
from label_anything.engine.types import SegmentationModel
from label_anything.errors import ImageError, LabelAnythingError
from label_anything.geometry.masks import (
    mask_area,
    mask_to_coco_rle,
    mask_to_polygons,
    polygons_to_coco,
    polygons_to_mask,
)
from label_anything.imaging.decode import decode_image

if TYPE_CHECKING:
    from label_anything.app.ray_pool import RayPool

log = logging.getLogger(__name__)

FORMATS = ("rle", "polygon")
SCORE_FIELD = "mask_score"
"""Annotation field that receives the mask's predicted IoU (not ``score``: see the module docstring)."""

# Polygon output: the hole cap the Label Studio results use (see mask_segmentation).
_POLY_MAX_HOLES = 32

PROGRESS_VERSION = 2
"""Version of the progress file's records; a file of another version is started over."""

# Why a box was not segmented (keys of ``BoxesReport.skipped`` and of the summary's ``skipped``).
NOT_AN_OBJECT = "annotation is not a JSON object"
NO_BOX = "no usable bbox"
UNKNOWN_IMAGE = "image_id not in images"
REPEATED_IMAGE = "image id repeated in images"
NO_FILE_NAME = "image has no file_name"
UNREADABLE = "image unreadable"
SIZE_MISMATCH = "image size differs from the COCO size"
OUTSIDE = "box outside the image"
NO_POLYGON = "mask has no polygon"

# Transposes that undo PIL's ``exif_transpose`` for each EXIF orientation (2, 3, 4, 5, 7 are their own inverse).
_UNDO_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_90",
                     7: "TRANSVERSE", 8: "ROTATE_270"}


@dataclass
class BoxesReport:
    """What one run did. ``seconds`` counts encode + decode only (not reading files or writing JSON)."""

    images_done: int = 0
    images_skipped: int = 0  # already finished by an earlier, interrupted run
    boxes_done: int = 0
    boxes_resumed: int = 0  # segmented by an earlier, interrupted run
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    low_score: list[dict[str, Any]] = field(default_factory=list)  # {"id", "image_id", "mask_score"}
    failed: list[str] = field(default_factory=list)  # one line per image or box that could not be segmented
    skipped: Counter[str] = field(default_factory=Counter)  # boxes not segmented, by reason
    as_stored: list[str] = field(default_factory=list)  # images whose EXIF orientation was ignored (see module)
    workers: dict[str, int] = field(default_factory=dict)  # with --ray-address: images done per host:pid

    @property
    def seconds(self) -> float:
        return self.encode_seconds + self.decode_seconds

    @property
    def images_per_s(self) -> float:
        return self.images_done / self.seconds if self.seconds > 0 else 0.0

    @property
    def boxes_per_s(self) -> float:
        return self.boxes_done / self.seconds if self.seconds > 0 else 0.0

    def skip(self, reason: str | None, message: str, boxes: int = 1) -> None:
        """Count ``boxes`` boxes left unsegmented for ``reason``; ``message`` says which, for the summary
        (``reason`` None, no box: an entry that is no image is only listed)."""
        if reason is not None and boxes > 0:
            self.skipped[reason] += boxes
        self.failed.append(message)


def partial_path(out: Path) -> Path:
    """The sidecar progress file of ``out``: ``OUT.partial.jsonl`` next to it."""
    return out.with_name(out.name + ".partial.jsonl")


def coco_box_to_xyxy(bbox: Any) -> tuple[float, float, float, float] | None:
    """COCO ``[x, y, w, h]`` → ``(x0, y0, x1, y1)``; None unless it is four finite numbers making a box of
    positive width and height (after the sums: ``1e300 + 1e-300`` is no wider than ``1e300``)."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return None
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = x + w, y + h
    if not (np.isfinite([x, y, x1, y1]).all() and x1 > x and y1 > y):
        return None
    return x, y, x1, y1


def mask_segmentation(mask: np.ndarray, fmt: str) -> dict[str, Any] | list[list[float]]:
    """A mask (H, W) bool as a COCO ``segmentation``: RLE dict, or a list of flat polygons."""
    if fmt == "rle":
        return mask_to_coco_rle(mask)
    # Every part is kept (a box's object may be split by an occluder); holes are capped because splicing them
    # costs time quadratic in their number, and a noisy mask can have thousands of pinholes.
    polygons = mask_to_polygons(mask, tolerance=1.0, max_holes=_POLY_MAX_HOLES)
    return polygons_to_coco(polygons)


def segmentation_area(mask: np.ndarray, segmentation: dict[str, Any] | list[list[float]]) -> int:
    """``area`` of an annotation: the mask's pixels for RLE, the rasterized polygons' pixels for polygons
    (so ``area`` always measures what ``segmentation`` holds, as COCO evaluation expects)."""
    if isinstance(segmentation, dict):
        return mask_area(mask)
    return mask_area(polygons_to_mask(segmentation, *mask.shape)) if segmentation else 0


# -- progress file -----------------------------------------------------------------------------------
def _fingerprint(model_id: str, fmt: str, coco_path: Path, images_dir: Path) -> dict[str, Any]:
    # A progress file written by another model, format, input or image folder must not be mixed into this output.
    stat = coco_path.stat()
    return {"version": PROGRESS_VERSION, "model": model_id, "format": fmt, "input": str(coco_path.resolve()),
            "input_size": stat.st_size, "input_mtime_ns": stat.st_mtime_ns, "images": str(images_dir.resolve())}


@dataclass
class ImageRecord:
    """One finished image, as its progress line holds it."""

    fields: dict[str, dict[str, Any]]  # annotation index (str) → new fields
    skipped: dict[str, str] = field(default_factory=dict)  # annotation index (str) → why it was not segmented
    as_stored: bool = False  # EXIF orientation ignored (the COCO size is the stored size)

    def to_line(self, image_id: Any) -> bytes:
        record: dict[str, Any] = {"image_id": image_id, "annotations": self.fields}
        if self.skipped:
            record["skipped"] = self.skipped
        if self.as_stored:
            record["as_stored"] = True
        return (json.dumps(record) + "\n").encode("utf-8")


@dataclass
class Progress:
    """What a progress file holds for this run."""

    done: dict[str, ImageRecord]  # image id key → its record
    end: int  # byte offset just past the last complete record (or the header); 0: no usable header


def read_progress(path: Path, fingerprint: dict[str, Any]) -> Progress:
    """The finished images of earlier runs, and where the file's trustworthy part ends.

    The first line is the run's fingerprint; a file of another run, or whose header is torn, holds nothing.
    A line counts only once its newline is written (the record is written in one piece, newline last); lines
    that do not parse as records are skipped, wherever they are, so damage never hides the records after it.
    """
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return Progress({}, 0)
    with f:
        header = f.readline()
        if not header.endswith(b"\n") or _header_fingerprint(header) is None:
            return Progress({}, 0)
        if _header_fingerprint(header) != fingerprint:
            log.warning("%s belongs to another run (model, format, input or image folder changed): starting over",
                        path)
            return Progress({}, 0)
        done: dict[str, ImageRecord] = {}
        offset = end = len(header)
        for line in f:
            offset += len(line)
            parsed = _parse_record(line) if line.endswith(b"\n") else None
            if parsed is not None:
                done[parsed[0]] = parsed[1]
                end = offset
    return Progress(done, end)


def _header_fingerprint(line: bytes) -> dict[str, Any] | None:
    try:
        header = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return None
    fingerprint = header.get("fingerprint") if isinstance(header, dict) else None
    return fingerprint if isinstance(fingerprint, dict) else None


def _parse_record(line: bytes) -> tuple[str, ImageRecord] | None:
    """(image id key, record) of one progress line, or None when it is not a well-formed record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or "image_id" not in record:
        return None
    fields, skipped = record.get("annotations"), record.get("skipped", {})
    if not isinstance(fields, dict) or not all(_is_index(k) and isinstance(v, dict) for k, v in fields.items()):
        return None
    if not isinstance(skipped, dict) or not all(_is_index(k) and isinstance(v, str) for k, v in skipped.items()):
        return None
    return _id_key(record["image_id"]), ImageRecord(fields, skipped, record.get("as_stored") is True)


def _is_index(key: str) -> bool:
    return key.isascii() and key.isdigit()


def open_progress(path: Path, fingerprint: dict[str, Any]) -> tuple[dict[str, ImageRecord], IO[bytes]]:
    """The finished images, and the progress file open for appending after its last complete record.

    A torn tail is cut off first: appending after it would glue the next record to it, and both be lost.
    """
    progress = read_progress(path, fingerprint)
    if progress.end == 0:
        f = path.open("wb")
        f.write((json.dumps({"fingerprint": fingerprint}) + "\n").encode("utf-8"))
        _sync(f)
        return {}, f
    f = path.open("r+b")
    f.truncate(progress.end)
    f.seek(progress.end)
    _sync(f)
    return progress.done, f


def _sync(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


def _id_key(image_id: Any) -> str:
    """A hashable key for an id of any JSON type, that survives the progress file unchanged.

    Numbers are keyed by value, as pycocotools (a Python dict) matches them: 2, 2.0 and true-as-1 are one id.
    """
    if isinstance(image_id, bool | float) and float(image_id).is_integer():
        image_id = int(image_id)
    return json.dumps(image_id, sort_keys=True)


# -- one image ---------------------------------------------------------------------------------------
def segment_image_boxes(
    model: SegmentationModel, image: np.ndarray, boxes: list[tuple[float, float, float, float]]
) -> tuple[list[tuple[np.ndarray, float]], float, float]:
    """Encode ``image`` (H, W, 3) uint8 once, decode each box ``(x0, y0, x1, y1)`` against that embedding.

    Returns:
        ([(mask (H, W) bool, score)] in box order, encode seconds, decode seconds).
    """
    t0 = time.perf_counter()
    embedding = encode(model, image)
    t1 = time.perf_counter()
    results = []
    for box in boxes:
        mask, score, _ = decode(model, embedding, Prompt.from_lists(box=box)).best()
        results.append((mask, score))
    return results, t1 - t0, time.perf_counter() - t1


@dataclass
class ImageJob:
    """One image's work, everything a (possibly remote) worker needs besides the pixels."""

    image_id: Any
    file_name: str
    boxes: list[tuple[int, tuple[float, float, float, float]]]  # (annotation index, (x0, y0, x1, y1))
    coco_size: tuple[Any, Any]  # (height, width) as the COCO file says; None where it says nothing

    def __str__(self) -> str:
        return f"image {self.file_name}"


@dataclass
class ImageResult:
    """What segmenting one image gave: its record, or why the image could not be used."""

    record: ImageRecord | None = None  # None: the image could not be used, its annotations stay untouched
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    error: str | None = None
    reason: str = UNREADABLE
    warning: str | None = None


class ImageSizeError(ImageError):
    """The image is neither of the sizes (displayed, stored) its COCO entry could mean."""


def decode_for_coco(data: bytes, name: str, coco_size: tuple[Any, Any]) -> tuple[np.ndarray, str | None]:
    """The pixels an image entry's boxes are on, decided by the entry's size (see the module docstring).

    Returns:
        ((H, W, 3) uint8 RGB, a note when EXIF was ignored else None).

    Raises:
        ImageSizeError: neither the displayed nor the stored size is the COCO size.
        ImageError: not a readable image.
    """
    from PIL import Image

    displayed = decode_image(data, name=name)
    if _fits(coco_size, displayed.shape):
        return displayed, None
    orientation = _exif_orientation(data)
    undo = _UNDO_ORIENTATION.get(orientation)
    stored = displayed if undo is None else np.asarray(Image.fromarray(displayed).transpose(Image.Transpose[undo]))
    said = "x".join("?" if v is None else str(v) for v in reversed(coco_size))
    if undo is not None and _fits(coco_size, stored.shape):
        return stored, (f"image {name}: EXIF orientation {orientation} ignored: the COCO file gives its stored size "
                        f"{said}, so its boxes are on the stored pixels")
    shown = f"{displayed.shape[1]}x{displayed.shape[0]}"
    as_stored = f" ({stored.shape[1]}x{stored.shape[0]} as stored)" if stored.shape != displayed.shape else ""
    raise ImageSizeError(f"{name} is {shown}{as_stored} but the COCO file says {said}: annotations left as they are")


def _fits(coco_size: tuple[Any, Any], shape: tuple[int, ...]) -> bool:
    """Every size the COCO entry gives equals the image's (a missing one fits anything)."""
    return all(given is None or (not isinstance(given, bool) and given == actual)
               for given, actual in zip(coco_size, shape[:2], strict=True))


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1 to 8; 1 when absent or unreadable) of an image file that decodes."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            value = img.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError):
        return 1
    return value if isinstance(value, int) else 1


def _overlaps(box: tuple[float, float, float, float], width: int, height: int) -> bool:
    x0, y0, x1, y1 = box
    return x0 < width and y0 < height and x1 > 0 and y1 > 0


def segment_job(model: SegmentationModel, job: ImageJob, data: bytes | str, fmt: str) -> ImageResult:
    """Decode the image file ``data`` (its bytes, or why they could not be read), segment ``job``'s boxes.

    Runs in this process, or on a Ray worker (``--ray-address``): only bytes travel, never a path.
    """
    if isinstance(data, str):
        return ImageResult(error=data)
    try:
        image, note = decode_for_coco(data, job.file_name, job.coco_size)
    except ImageSizeError as exc:
        return ImageResult(error=str(exc), reason=SIZE_MISMATCH)
    except LabelAnythingError as exc:
        return ImageResult(error=str(exc))
    height, width = image.shape[:2]
    record = ImageRecord({}, as_stored=note is not None)
    # SAM would still answer a box beside the image, with a mask made of padding: not a mask of anything.
    boxes = [(index, xyxy) for index, xyxy in job.boxes if _overlaps(xyxy, width, height)]
    record.skipped = {str(index): OUTSIDE for index, xyxy in job.boxes if not _overlaps(xyxy, width, height)}
    if not boxes:
        return ImageResult(record, warning=note)
    log.debug("boxes-to-masks: encoding image %s", _id_key(job.image_id))
    results, t_enc, t_dec = segment_image_boxes(model, image, [xyxy for _, xyxy in boxes])
    for (index, _), (mask, score) in zip(boxes, results, strict=True):
        segmentation = mask_segmentation(mask, fmt)
        if not segmentation:  # "segmentation": [] breaks pycocotools' annToMask and mask training
            record.skipped[str(index)] = NO_POLYGON
            continue
        record.fields[str(index)] = {"segmentation": segmentation, "area": segmentation_area(mask, segmentation),
                                     SCORE_FIELD: round(float(score), 6)}
    return ImageResult(record, t_enc, t_dec, warning=note)


def read_file_bytes(path: Path) -> bytes | str:
    """The bytes of an image file, or the reason it cannot be read (a message for the report)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        return f"cannot read image {path}: {exc.strerror or exc}"


# -- the whole file ----------------------------------------------------------------------------------
@dataclass
class Skip:
    """Boxes found unusable while planning, before any image is read."""

    reason: str | None
    message: str
    boxes: int = 1


def plan_jobs(coco: dict[str, Any]) -> tuple[list[ImageJob], list[Skip]]:
    """The images to segment (in ``images`` order, each with its usable boxes) and the boxes that cannot be.

    Annotations are keyed by their index in the file, which also covers files whose ids are missing or
    repeated; an image id given to two images is ambiguous, so boxes on it are skipped, not guessed.
    """
    annotations = coco["annotations"]
    positions: dict[str, list[int]] = defaultdict(list)
    skips: list[Skip] = []
    for position, img in enumerate(coco["images"]):
        if isinstance(img, dict) and "id" in img:
            positions[_id_key(img["id"])].append(position)
        else:
            skips.append(Skip(None, f"images[{position}] is not an image entry with an id", boxes=0))
    by_image: dict[str, list[int]] = defaultdict(list)
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            skips.append(Skip(NOT_AN_OBJECT, f"annotations[{index}] is not a JSON object: {_short(ann)}"))
        elif "bbox" not in ann:
            continue  # not a box (keypoints, a caption...): passes through
        elif "image_id" not in ann or _id_key(ann["image_id"]) not in positions:
            skips.append(Skip(UNKNOWN_IMAGE, f"annotation {_short(ann.get('id'))}: image_id "
                                             f"{_short(ann.get('image_id'))} is not in images"))
        elif len(positions[_id_key(ann["image_id"])]) > 1:
            skips.append(Skip(REPEATED_IMAGE, f"annotation {_short(ann.get('id'))}: image id "
                                              f"{_short(ann['image_id'])} is given to several images"))
        else:
            by_image[_id_key(ann["image_id"])].append(index)
    jobs = []
    for key, indexes in by_image.items():
        job, job_skips = _job(coco["images"][positions[key][0]], [(i, annotations[i]) for i in indexes])
        skips.extend(job_skips)
        if job is not None:
            jobs.append(job)
    order = {key: positions[key][0] for key in by_image}
    jobs.sort(key=lambda job: order[_id_key(job.image_id)])
    return jobs, skips


def _job(img: dict[str, Any], anns: list[tuple[int, dict[str, Any]]]) -> tuple[ImageJob | None, list[Skip]]:
    """The work of one image (None when it has nothing to do), and the boxes of it that are unusable."""
    name = img.get("file_name")
    if not isinstance(name, str) or not name.strip():
        return None, [Skip(NO_FILE_NAME, f"image {_short(img['id'])} has no file_name: its {len(anns)} box(es) "
                                         "are left as they are", boxes=len(anns))]
    boxes: list[tuple[int, tuple[float, float, float, float]]] = []
    skips = []
    for index, ann in anns:
        xyxy = coco_box_to_xyxy(ann["bbox"])
        if xyxy is None:
            skips.append(Skip(NO_BOX, f"{name}: annotation {ann.get('id')} has no usable bbox {_short(ann['bbox'])}"))
        else:
            boxes.append((index, xyxy))
    size = tuple(img.get(key) for key in ("height", "width"))
    return (ImageJob(img["id"], name, boxes, size) if boxes else None), skips  # type: ignore[arg-type]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def boxes_to_masks(
    model: SegmentationModel | None,
    coco_path: Path,
    images_dir: Path,
    out: Path,
    *,
    fmt: str = "rle",
    min_score: float = 0.0,
    progress: bool = True,
    after_image: Callable[[Any], None] | None = None,
    pool: RayPool | None = None,
) -> BoxesReport:
    """Add a mask to every box annotation of ``coco_path``; write ``out``; return what was done.

    Args:
        model: any engine model (SAM family or classical); None with ``pool``.
        coco_path: COCO instances JSON with ``images`` (``id``, ``file_name``) and ``annotations`` (``bbox``).
        images_dir: folder that ``file_name`` is relative to (read here, on the driver, even with ``pool``).
        out: where to write the completed COCO JSON (its sidecar ``OUT.partial.jsonl`` holds the progress).
        fmt: ``"rle"`` or ``"polygon"``.
        min_score: masks scoring below this are still written, and listed in ``report.low_score``.
        progress: show a tqdm bar on stderr.
        after_image: called with each image id once its results are safely in the progress file (a hook for
            tests and callers that want to stop early: an exception raised there stops the run, resumably).
        pool: Ray workers (``distributed.ray_pool``) to segment on instead of ``model``; the output is the same.
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise LabelAnythingError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if (model is None) == (pool is None):
        raise ValueError("give either a model or a pool")
    coco_path, images_dir, out = Path(coco_path), Path(images_dir), Path(out)
    coco = _read_coco(coco_path)
    if not images_dir.is_dir():
        raise LabelAnythingError(f"--images {images_dir}: not a folder")
    if out.is_dir():
        raise LabelAnythingError(f"--out {out} is a folder; give the COCO file to write")
    jobs, skips = plan_jobs(coco)
    report = BoxesReport()
    for item in skips:
        report.skip(item.reason, item.message, item.boxes)

    model_id = pool.model_id if pool is not None else model.info.model_id  # type: ignore[union-attr]
    out.parent.mkdir(parents=True, exist_ok=True)
    done, progress_file = open_progress(partial_path(out), _fingerprint(model_id, fmt, coco_path, images_dir))
    todo = [job for job in jobs if _id_key(job.image_id) not in done]
    for job in jobs:
        if _id_key(job.image_id) in done:
            report.images_skipped += 1
            report.boxes_resumed += len(done[_id_key(job.image_id)].fields)
            _count_record(report, job, done[_id_key(job.image_id)], coco["annotations"])

    def calls() -> Iterator[tuple[ImageJob, tuple[Any, ...]]]:
        # Read lazily, one image at a time: with a pool only the images in flight are held in memory.
        for job in todo:
            yield job, (job, read_file_bytes(images_dir / job.file_name), fmt)

    if pool is not None:
        results: Iterator[tuple[ImageJob, str | None, ImageResult]] = pool.map(segment_job, calls())
    else:
        results = ((job, None, segment_job(model, *args)) for job, args in calls())  # type: ignore[arg-type]

    with progress_file, tqdm(total=len(jobs), initial=report.images_skipped, unit="img", desc="boxes-to-masks",
                             disable=not progress) as bar:
        for job, worker, result in results:
            _count(report, job, result, worker, coco["annotations"])
            if result.record is not None:
                # One line per image, written whole and fsync'ed: a crash loses at most the image in flight.
                progress_file.write(result.record.to_line(job.image_id))
                _sync(progress_file)
                done[_id_key(job.image_id)] = result.record
            bar.update()
            bar.set_postfix(boxes=report.boxes_done)
            if after_image is not None:
                after_image(job.image_id)

    _apply(coco, done, min_score, report)
    _write_atomic(out, coco)
    partial_path(out).unlink(missing_ok=True)
    for item in report.low_score:
        log.warning("annotation %s (image %s): mask score %.3f under --min-score %.3f", item["id"],
                    item["image_id"], item[SCORE_FIELD], min_score)
    return report


def _apply(coco: dict[str, Any], done: dict[str, ImageRecord], min_score: float, report: BoxesReport) -> None:
    """Put the new fields of every finished image on its annotations; list the low scores."""
    annotations = coco["annotations"]
    for record in done.values():
        for index, new in record.fields.items():
            ann = annotations[int(index)] if int(index) < len(annotations) else None
            if not isinstance(ann, dict):
                continue  # cannot happen for a record of this very input (the fingerprint says so)
            ann.update(new)
            score = new.get(SCORE_FIELD)
            if isinstance(score, int | float) and score < min_score:
                report.low_score.append({"id": ann.get("id"), "image_id": ann.get("image_id"), SCORE_FIELD: score})


def _read_coco(coco_path: Path) -> dict[str, Any]:
    """The COCO file as a dict with ``images`` and ``annotations`` lists, or a one-line error."""
    try:
        coco = json.loads(coco_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise LabelAnythingError(f"cannot read COCO file {coco_path}: {reason}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or not isinstance(
        coco.get("annotations"), list
    ):
        raise LabelAnythingError(f"{coco_path} is not a COCO instances file (needs 'images' and 'annotations' lists)")
    return coco


def _count(report: BoxesReport, job: ImageJob, result: ImageResult, worker: str | None,
           annotations: list[Any]) -> None:
    """Add one image's result to ``report`` (and say what went wrong with it)."""
    if result.warning:
        log.warning("%s", result.warning)
    if result.record is None:
        # One unusable image must not stop a long run: report it, leave its annotations untouched.
        log.warning("image %s: skipped (%s)", job.file_name, result.error)
        report.skip(result.reason, f"{job.file_name}: {result.error}", boxes=len(job.boxes))
        return
    _count_record(report, job, result.record, annotations)
    report.encode_seconds += result.encode_seconds
    report.decode_seconds += result.decode_seconds
    if not result.record.fields:
        return
    report.images_done += 1
    report.boxes_done += len(result.record.fields)
    if worker is not None:
        report.workers[worker] = report.workers.get(worker, 0) + 1


def _count_record(report: BoxesReport, job: ImageJob, record: ImageRecord, annotations: list[Any]) -> None:
    """What a finished image's record says beyond its masks: boxes skipped, EXIF ignored."""
    if record.as_stored:
        report.as_stored.append(job.file_name)
    for index, reason in record.skipped.items():
        ann = annotations[int(index)] if int(index) < len(annotations) else None
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        report.skip(reason, f"{job.file_name}: annotation {_short(ann_id)}: {reason}")


def _write_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path`` (never a half file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- the model a batch command may use ---------------------------------------------------------------
def refuse_grabcut_fallback(args: argparse.Namespace, command: str) -> None:
    """Refuse ``--model-name auto`` when it would pick the classical engine (no checkpoint in the cache).

    Interactive commands fall back to GrabCut with a warning; a batch command would silently give a whole
    dataset GrabCut masks with heuristic scores, so there ``classical`` must be asked for by name.
    Checked before anything loads: ``auto`` picks from the files in the cache folder alone.
    """
    if str(getattr(args, "model_name", None) or "auto").lower() != "auto":
        return
    from label_anything.engine.models import choose_model

    # Either device order tries every checkpoint: classical comes out only when none is there.
    choice = choose_model("auto", getattr(args, "sam_config", None), getattr(args, "checkpoint", None),
                          cache_dir=getattr(args, "cache_dir", None), device="cpu")
    if choice.name == "classical":
        raise LabelAnythingError(_grabcut_refusal(args, command))


def refuse_classical_model(args: argparse.Namespace, command: str, model_name: str) -> None:
    """The same refusal after loading (a Ray worker resolves ``auto`` on its own node): ``model_name`` is
    the loaded model's family."""
    if str(getattr(args, "model_name", None) or "auto").lower() == "auto" and model_name == "classical":
        raise LabelAnythingError(_grabcut_refusal(args, command))


def _grabcut_refusal(args: argparse.Namespace, command: str) -> str:
    from label_anything.engine.weights import checkpoint_dir

    return (f"--model-name auto found no SAM checkpoint in {checkpoint_dir(getattr(args, 'cache_dir', None))}, "
            f"and {command} does not fall back to GrabCut for a whole dataset: get one with "
            "`label-anything download mobile_sam` (or pass --model-name and --checkpoint), or pass "
            "--model-name classical to use GrabCut")


# -- command line ------------------------------------------------------------------------------------
def add_boxes_to_masks_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything boxes-to-masks`` to the CLI's sub-commands."""
    from label_anything.cli.options import add_model_arguments, add_ray_arguments, finite_float

    p = subparsers.add_parser(
        "boxes-to-masks",
        help="add a mask to every box of a COCO file (the box as the prompt)",
        description="Segment every box annotation of a COCO file: adds 'segmentation' (RLE or polygons), "
        f"'area' (mask pixels) and '{SCORE_FIELD}' (predicted IoU); keeps every other field. Each image is "
        "encoded once for all its boxes. Boxes that cannot be segmented are left untouched and counted by "
        "reason. Resumable: progress is kept in OUT.partial.jsonl until OUT is written. Needs a SAM "
        "checkpoint, or --model-name classical for GrabCut.",
    )
    p.add_argument("coco", type=Path, metavar="COCO.json", help="COCO instances file with bbox annotations")
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder the file_name fields are in")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.json", help="COCO file to write")
    p.add_argument("--format", choices=FORMATS, default="rle", help="segmentation format (default: %(default)s)")
    p.add_argument("--min-score", type=finite_float, default=0.0, metavar="F",
                   help=f"report masks whose {SCORE_FIELD} is under F (they are still written; default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_model_arguments(p)
    add_ray_arguments(p)
    p.set_defaults(func=cmd_boxes_to_masks)
    return p


def cmd_boxes_to_masks(args: argparse.Namespace) -> int:
    from label_anything.cli.options import load_model_from_args

    refuse_grabcut_fallback(args, "boxes-to-masks")
    options = dict(fmt=args.format, min_score=args.min_score, progress=args.progress)
    if args.ray_address:
        from label_anything.app.ray_pool import PoolOptions, model_options, ray_pool

        with ray_pool(PoolOptions.from_args(args), model_options(args)) as pool:
            model_id = pool.model_id
            refuse_classical_model(args, "boxes-to-masks", model_id.split("-", 1)[0])
            report = boxes_to_masks(None, args.coco, args.images, args.out, pool=pool, **options)
    else:
        model = load_model_from_args(args)
        refuse_classical_model(args, "boxes-to-masks", model.info.name)
        model_id = model.info.model_id
        report = boxes_to_masks(model, args.coco, args.images, args.out, **options)
    summary = {
        "model": model_id,
        "out": str(args.out),
        "images": report.images_done,
        "images_resumed": report.images_skipped,
        "boxes": report.boxes_done,
        "boxes_resumed": report.boxes_resumed,
        "skipped": dict(report.skipped),
        "images_as_stored": len(report.as_stored),
        "low_score": report.low_score,
        "failed": report.failed,
        "images_per_s": round(report.images_per_s, 3),
        "boxes_per_s": round(report.boxes_per_s, 3),
    }
    if args.ray_address:
        summary["ray_workers"] = report.workers  # images done by each worker (host:pid)
    print(json.dumps(summary))
    # Boxes were given and not one could be segmented: most likely a wrong --images folder or COCO file.
    return 1 if report.skipped and not (report.boxes_done or report.boxes_resumed) else 0
