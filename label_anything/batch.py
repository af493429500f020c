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

Resumable, bounded memory: one image's embedding is alive at a time, and after each image its results are
appended to ``OUT.partial.jsonl`` (one JSON line per image). A rerun reads that file and skips the images
it lists; the final OUT is written atomically (temporary file + rename) and only then is the sidecar removed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from label_anything.engine import Prompt, decode, encode
from label_anything.engine.types import SegmentationModel
from label_anything.errors import LabelAnythingError
from label_anything.masks import mask_area, mask_to_coco_rle, mask_to_polygons, polygons_to_coco, polygons_to_mask

if TYPE_CHECKING:
    from label_anything.distributed import RayPool

log = logging.getLogger(__name__)

FORMATS = ("rle", "polygon")
SCORE_FIELD = "mask_score"
"""Annotation field that receives the mask's predicted IoU (not ``score``: see the module docstring)."""

# Polygon output: the hole cap the Label Studio results use (see mask_segmentation).
_POLY_MAX_HOLES = 32


@dataclass
class BoxesReport:
    """What one run did. ``seconds`` counts encode + decode only (not reading files or writing JSON)."""

    images_done: int = 0
    images_skipped: int = 0  # already finished by an earlier, interrupted run
    boxes_done: int = 0
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    low_score: list[dict[str, Any]] = field(default_factory=list)  # {"id", "image_id", "mask_score"}
    failed: list[str] = field(default_factory=list)  # images or boxes that could not be segmented
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


def partial_path(out: Path) -> Path:
    """The sidecar progress file of ``out``: ``OUT.partial.jsonl`` next to it."""
    return out.with_name(out.name + ".partial.jsonl")


def coco_box_to_xyxy(bbox: list[float]) -> tuple[float, float, float, float] | None:
    """COCO ``[x, y, w, h]`` → ``(x0, y0, x1, y1)``; None when it is not a box with positive width and height."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
        return None
    return x, y, x + w, y + h


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


def _fingerprint(model_id: str, fmt: str, coco_path: Path) -> dict[str, Any]:
    # A progress file written by another model, format or input must not be mixed into this output.
    stat = coco_path.stat()
    return {"model": model_id, "format": fmt, "input": str(coco_path.resolve()),
            "input_size": stat.st_size, "input_mtime_ns": stat.st_mtime_ns}


def read_progress(path: Path, fingerprint: dict[str, Any]) -> dict[Any, dict[str, dict[str, Any]]]:
    """Finished images of an earlier run: image id → {annotation index (str) → new fields}.

    The first line is the run's fingerprint; a file of another run is ignored (and later overwritten).
    A last line cut short by a crash is ignored too: that image is simply done again.
    """
    if not path.is_file():
        return {}
    done: dict[Any, dict[str, dict[str, Any]]] = {}
    with path.open(encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines:
        return {}
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        return {}
    if header.get("fingerprint") != fingerprint:
        log.warning("%s belongs to another run (model, format or input changed): starting over", path)
        return {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # the torn tail of an interrupted write
        done[_id_key(record["image_id"])] = record["annotations"]
    return done


def _id_key(image_id: Any) -> str:
    # Ids may be ints or strings; their JSON text is a hashable key that survives the progress file unchanged.
    return json.dumps(image_id)


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
    coco_size: tuple[Any, Any]  # (height, width) as the COCO file says, possibly (None, None)

    def __str__(self) -> str:
        return f"image {self.file_name}"


@dataclass
class ImageResult:
    """What segmenting one image gave: new annotation fields keyed by annotation index, or an error."""

    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    error: str | None = None  # the image could not be read: its annotations stay untouched
    warning: str | None = None


def segment_job(model: SegmentationModel, job: ImageJob, data: bytes | str, fmt: str) -> ImageResult:
    """Decode the image file ``data`` (its bytes, or why they could not be read), segment ``job``'s boxes.

    Runs in this process, or on a Ray worker (``--ray-address``): only bytes travel, never a path.
    """
    from label_anything.images import decode_image

    if not job.boxes:  # nothing to segment (every box unusable): the image is not even decoded
        return ImageResult()
    if isinstance(data, str):
        return ImageResult(error=data)
    try:
        image = decode_image(data, name=job.file_name)
    except LabelAnythingError as exc:
        return ImageResult(error=str(exc))
    height, width = image.shape[:2]
    warning = None
    if job.coco_size not in ((None, None), (height, width)):
        warning = (f"image {job.file_name} is {width}x{height} but the COCO file says "
                   f"{job.coco_size[1]}x{job.coco_size[0]}: masks follow the pixels")
    results, t_enc, t_dec = segment_image_boxes(model, image, [xyxy for _, xyxy in job.boxes])
    fields: dict[str, dict[str, Any]] = {}
    for (index, _), (mask, score) in zip(job.boxes, results, strict=True):
        segmentation = mask_segmentation(mask, fmt)
        fields[str(index)] = {"segmentation": segmentation, "area": segmentation_area(mask, segmentation),
                              SCORE_FIELD: round(float(score), 6)}
    return ImageResult(fields, t_enc, t_dec, warning=warning)


def read_file_bytes(path: Path) -> bytes | str:
    """The bytes of an image file, or the reason it cannot be read (a message for the report)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        return f"cannot read image {path}: {exc.strerror or exc}"


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

    # Annotations are keyed by their index in the file, which also covers files whose ids are missing or repeated.
    by_image: dict[str, list[int]] = defaultdict(list)
    for index, ann in enumerate(coco["annotations"]):
        if isinstance(ann, dict) and "image_id" in ann and "bbox" in ann:
            by_image[_id_key(ann["image_id"])].append(index)
    images = [img for img in coco["images"] if _id_key(img.get("id")) in by_image]

    report = BoxesReport()
    sidecar = partial_path(out)
    model_id = pool.model_id if pool is not None else model.info.model_id  # type: ignore[union-attr]
    fingerprint = _fingerprint(model_id, fmt, coco_path)
    done = read_progress(sidecar, fingerprint)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not done:
        sidecar.write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")

    todo: list[ImageJob] = []
    for img in images:
        if _id_key(img["id"]) in done:
            report.images_skipped += 1
        else:
            todo.append(_job(img, [(i, coco["annotations"][i]) for i in by_image[_id_key(img["id"])]], report))

    def calls() -> Iterator[tuple[ImageJob, tuple[Any, ...]]]:
        # Read lazily, one image at a time: with a pool only the images in flight are held in memory.
        for job in todo:
            yield job, (job, read_file_bytes(images_dir / job.file_name) if job.boxes else b"", fmt)

    if pool is not None:
        results: Iterator[tuple[ImageJob, str | None, ImageResult]] = pool.map(segment_job, calls())
    else:
        results = ((job, None, segment_job(model, *args)) for job, args in calls())  # type: ignore[arg-type]

    with sidecar.open("a", encoding="utf-8") as log_file, tqdm(
        total=len(images), initial=report.images_skipped, unit="img", desc="boxes-to-masks", disable=not progress
    ) as bar:
        for job, worker, result in results:
            _count(report, job, result, worker)
            # One line per image, flushed and fsync'ed: a crash loses at most the image in flight.
            log_file.write(json.dumps({"image_id": job.image_id, "annotations": result.fields}) + "\n")
            log_file.flush()
            os.fsync(log_file.fileno())
            done[_id_key(job.image_id)] = result.fields
            bar.update()
            bar.set_postfix(boxes=report.boxes_done)
            if after_image is not None:
                after_image(job.image_id)

    for fields in done.values():
        for index, new in fields.items():
            ann = coco["annotations"][int(index)]
            ann.update(new)
            score = new.get(SCORE_FIELD)
            if score is not None and score < min_score:
                report.low_score.append({"id": ann.get("id"), "image_id": ann["image_id"], SCORE_FIELD: score})
    _write_atomic(out, coco)
    sidecar.unlink(missing_ok=True)
    for item in report.low_score:
        log.warning("annotation %s (image %s): mask score %.3f under --min-score %.3f", item["id"],
                    item["image_id"], item[SCORE_FIELD], min_score)
    return report


def _read_coco(coco_path: Path) -> dict[str, Any]:
    """The COCO file as a dict with ``images`` and ``annotations`` lists, or a one-line error."""
    try:
        coco = json.loads(coco_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LabelAnythingError(f"cannot read COCO file {coco_path}: {exc}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or not isinstance(
        coco.get("annotations"), list
    ):
        raise LabelAnythingError(f"{coco_path} is not a COCO instances file (needs 'images' and 'annotations')")
    return coco


def _job(img: dict[str, Any], anns: list[tuple[int, dict[str, Any]]], report: BoxesReport) -> ImageJob:
    """The work of one image: its usable boxes; the unusable ones go to ``report.failed`` now."""
    name = str(img.get("file_name", ""))
    boxes: list[tuple[int, tuple[float, float, float, float]]] = []
    for index, ann in anns:
        xyxy = coco_box_to_xyxy(ann["bbox"])
        if xyxy is None:
            report.failed.append(f"{name}: annotation {ann.get('id')} has no usable bbox {ann['bbox']!r}")
            continue
        boxes.append((index, xyxy))
    return ImageJob(img["id"], name, boxes, (img.get("height"), img.get("width")))


def _count(report: BoxesReport, job: ImageJob, result: ImageResult, worker: str | None) -> None:
    """Add one image's result to ``report`` (and say what went wrong with it)."""
    if result.warning:
        log.warning("%s", result.warning)
    if result.error is not None:
        # One unreadable file must not stop a long run: report it, leave its annotations untouched.
        log.warning("image %s: skipped (%s)", job.file_name, result.error)
        report.failed.append(job.file_name)
        return
    if not result.fields:
        return
    report.encode_seconds += result.encode_seconds
    report.decode_seconds += result.decode_seconds
    report.images_done += 1
    report.boxes_done += len(result.fields)
    if worker is not None:
        report.workers[worker] = report.workers.get(worker, 0) + 1


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


# -- command line ------------------------------------------------------------------------------------
def add_boxes_to_masks_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything boxes-to-masks`` to the CLI's sub-commands."""
    from label_anything.cli import add_model_arguments
    from label_anything.distributed import add_ray_arguments

    p = subparsers.add_parser(
        "boxes-to-masks",
        help="add a mask to every box of a COCO file (the box as the prompt)",
        description="Segment every box annotation of a COCO file: adds 'segmentation' (RLE or polygons), "
        f"'area' (mask pixels) and '{SCORE_FIELD}' (predicted IoU); keeps every other field. Each image is "
        "encoded once for all its boxes. Resumable: progress is kept in OUT.partial.jsonl until OUT is written.",
    )
    p.add_argument("coco", type=Path, metavar="COCO.json", help="COCO instances file with bbox annotations")
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder the file_name fields are in")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.json", help="COCO file to write")
    p.add_argument("--format", choices=FORMATS, default="rle", help="segmentation format (default: %(default)s)")
    p.add_argument("--min-score", type=float, default=0.0, metavar="F",
                   help=f"report masks whose {SCORE_FIELD} is under F (they are still written; default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_model_arguments(p)
    add_ray_arguments(p)
    p.set_defaults(func=cmd_boxes_to_masks)
    return p


def cmd_boxes_to_masks(args: argparse.Namespace) -> int:
    from label_anything.cli import load_model_from_args

    options = dict(fmt=args.format, min_score=args.min_score, progress=args.progress)
    if args.ray_address:
        from label_anything.distributed import PoolOptions, model_options, ray_pool

        with ray_pool(PoolOptions.from_args(args), model_options(args)) as pool:
            model_id = pool.model_id
            report = boxes_to_masks(None, args.coco, args.images, args.out, pool=pool, **options)
    else:
        model = load_model_from_args(args)
        model_id = model.info.model_id
        report = boxes_to_masks(model, args.coco, args.images, args.out, **options)
    summary = {
        "model": model_id,
        "out": str(args.out),
        "images": report.images_done,
        "images_resumed": report.images_skipped,
        "boxes": report.boxes_done,
        "low_score": report.low_score,
        "failed": report.failed,
        "images_per_s": round(report.images_per_s, 3),
        "boxes_per_s": round(report.boxes_per_s, 3),
    }
    if args.ray_address:
        summary["ray_workers"] = report.workers  # images done by each worker (host:pid)
    print(json.dumps(summary))
    return 1 if report.failed and not report.boxes_done else 0
