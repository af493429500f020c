"""One image of ``boxes-to-masks``: decode it as its COCO entry means it, encode once, decode every box.

Which pixels the boxes are on is ``app.coco_images.decode_for_coco``'s decision, per image, from the entry's
``height``/``width``: the displayed size (or none given) → EXIF applied; the stored size → the stored
pixels, EXIF ignored (and counted); neither → the image is skipped. So an RLE's size always equals its
image entry's.

``segment_job`` runs in this process or on a Ray worker (``--ray-address``): it takes the file's bytes,
never a path, and returns plain data (an ``ImageResult``) that travels back to the driver.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from label_anything.app.boxes_to_masks.coco_input import (
    NO_POLYGON,
    OUTSIDE,
    SIZE_MISMATCH,
    UNREADABLE,
    Box,
    ImageJob,
)
from label_anything.app.boxes_to_masks.progress import ImageRecord, id_key
from label_anything.app.coco_images import ImageSizeError, decode_for_coco, read_file_bytes
from label_anything.engine import Prompt, decode, encode
from label_anything.engine.types import SegmentationModel
from label_anything.errors import LabelAnythingError
from label_anything.geometry.masks import (
    mask_area,
    mask_to_coco_rle,
    polygons_to_coco,
    polygons_to_mask,
)
from label_anything.geometry.polygons import mask_to_polygons

__all__ = [
    "FORMATS", "SCORE_FIELD", "ImageResult", "ImageSizeError", "decode_for_coco", "mask_segmentation",
    "read_file_bytes", "segment_image_boxes", "segment_job", "segmentation_area",
]

log = logging.getLogger(__name__)

FORMATS = ("rle", "polygon")
SCORE_FIELD = "mask_score"
"""Annotation field that receives the mask's predicted IoU (not ``score``: COCO's ``score`` is the detector's
confidence in result files, which this must not overwrite)."""

# Polygon output: the hole cap the Label Studio results use (see mask_segmentation).
_POLY_MAX_HOLES = 32


def mask_segmentation(mask: np.ndarray, fmt: str) -> dict[str, Any] | list[list[float]]:
    """A mask (H, W) bool as a COCO ``segmentation``: RLE dict (``fmt`` ``"rle"``), or a list of flat polygons
    ``[x0, y0, x1, y1, ...]`` in pixels (``"polygon"``)."""
    if fmt == "rle":
        return mask_to_coco_rle(mask)
    # Every part is kept (a box's object may be split by an occluder); holes are capped because splicing them
    # costs time quadratic in their number, and a noisy mask can have thousands of pinholes.
    polygons = mask_to_polygons(mask, tolerance=1.0, max_holes=_POLY_MAX_HOLES)
    return polygons_to_coco(polygons)


def segmentation_area(mask: np.ndarray, segmentation: dict[str, Any] | list[list[float]]) -> int:
    """``area`` of an annotation: the pixels of ``mask`` (H, W) bool for RLE, the rasterized polygons' pixels
    for polygons (so ``area`` always measures what ``segmentation`` holds, as COCO evaluation expects)."""
    if isinstance(segmentation, dict):
        return mask_area(mask)
    return mask_area(polygons_to_mask(segmentation, *mask.shape)) if segmentation else 0


def segment_image_boxes(
    model: SegmentationModel, image: np.ndarray, boxes: list[Box]
) -> tuple[list[tuple[np.ndarray, float]], float, float]:
    """Encode ``image`` (H, W, 3) uint8 RGB once, decode each box ``(x0, y0, x1, y1)`` (pixels) against that
    embedding, as an interactive ``decode(model, encode(model, image), Prompt.from_lists(box=...)).best()`` would.

    Returns:
        ([(mask (H, W) bool, predicted IoU)] in box order, encode seconds, decode seconds).
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
class ImageResult:
    """What segmenting one image gave: its record, or why the image could not be used."""

    record: ImageRecord | None = None  # None: the image could not be used, its annotations stay untouched
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    error: str | None = None
    reason: str = UNREADABLE
    warning: str | None = None


def _overlaps(box: Box, width: int, height: int) -> bool:
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
        return ImageResult(error=f"{exc}: annotations left as they are", reason=SIZE_MISMATCH)
    except LabelAnythingError as exc:
        return ImageResult(error=str(exc))
    height, width = image.shape[:2]
    record = ImageRecord({}, as_stored=note is not None)
    # SAM would still answer a box beside the image, with a mask made of padding: not a mask of anything.
    boxes = [(index, xyxy) for index, xyxy in job.boxes if _overlaps(xyxy, width, height)]
    record.skipped = {str(index): OUTSIDE for index, xyxy in job.boxes if not _overlaps(xyxy, width, height)}
    if not boxes:
        return ImageResult(record, warning=note)
    log.debug("boxes-to-masks: encoding image %s", id_key(job.image_id))
    results, t_enc, t_dec = segment_image_boxes(model, image, [xyxy for _, xyxy in boxes])
    for (index, _), (mask, score) in zip(boxes, results, strict=True):
        segmentation = mask_segmentation(mask, fmt)
        if not segmentation:  # "segmentation": [] breaks pycocotools' annToMask and mask training
            record.skipped[str(index)] = NO_POLYGON
            continue
        record.fields[str(index)] = {"segmentation": segmentation, "area": segmentation_area(mask, segmentation),
                                     SCORE_FIELD: round(float(score), 6)}
    return ImageResult(record, t_enc, t_dec, warning=note)
