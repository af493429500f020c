"""The run of ``boxes-to-masks``: plan the jobs, resume, segment image after image (here or on a Ray pool),
write the progress line of each, then the whole output file, atomically."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from label_anything.app.boxes_to_masks.coco_input import ImageJob, plan_jobs, read_coco, short
from label_anything.app.boxes_to_masks.image_job import (
    FORMATS,
    SCORE_FIELD,
    ImageResult,
    read_file_bytes,
    segment_job,
)
from label_anything.app.boxes_to_masks.progress import (
    ImageRecord,
    id_key,
    open_progress,
    partial_path,
    run_fingerprint,
    sync,
    write_json_atomic,
)
from label_anything.engine.types import SegmentationModel
from label_anything.errors import LabelAnythingError

if TYPE_CHECKING:
    from label_anything.app.ray_pool import RayPool

log = logging.getLogger(__name__)


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
    as_stored: list[str] = field(default_factory=list)  # images whose EXIF orientation was ignored (see image_job)
    workers: dict[str, int] = field(default_factory=dict)  # with a Ray pool: images done per host:pid

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
        coco_path: COCO instances JSON with ``images`` (``id``, ``file_name``) and ``annotations`` (``bbox``
            ``[x, y, w, h]`` in pixels).
        images_dir: folder that ``file_name`` is relative to (read here, on the driver, even with ``pool``).
        out: where to write the completed COCO JSON (its sidecar ``OUT.partial.jsonl`` holds the progress).
        fmt: ``"rle"`` or ``"polygon"``.
        min_score: masks scoring below this are still written, and listed in ``report.low_score``.
        progress: show a tqdm bar on stderr.
        after_image: called with each image id once its results are safely in the progress file (a hook for
            tests and callers that want to stop early: an exception raised there stops the run, resumably).
        pool: Ray workers (``app.ray_pool.ray_pool``) to segment on instead of ``model``; the output is the same.
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise LabelAnythingError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if (model is None) == (pool is None):
        raise ValueError("give either a model or a pool")
    coco_path, images_dir, out = Path(coco_path), Path(images_dir), Path(out)
    coco = read_coco(coco_path)
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
    done, progress_file = open_progress(partial_path(out), run_fingerprint(model_id, fmt, coco_path, images_dir))
    todo = [job for job in jobs if id_key(job.image_id) not in done]
    for job in jobs:
        if id_key(job.image_id) in done:
            report.images_skipped += 1
            report.boxes_resumed += len(done[id_key(job.image_id)].fields)
            _count_record(report, job, done[id_key(job.image_id)], coco["annotations"])

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
                sync(progress_file)
                done[id_key(job.image_id)] = result.record
            bar.update()
            bar.set_postfix(boxes=report.boxes_done)
            if after_image is not None:
                after_image(job.image_id)

    _apply(coco, done, min_score, report)
    write_json_atomic(out, coco)
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
        report.skip(reason, f"{job.file_name}: annotation {short(ann_id)}: {reason}")
