"""The input of ``boxes-to-masks``: read the COCO file, check each entry, plan one job per image.

Nothing here reads an image: the checks are those the COCO file alone allows (a box that is no box, an
annotation on an image that is not listed or listed twice, an image without a file name). What they find
is a ``Skip``, counted under one of the reasons below; what remains is one ``ImageJob`` per image.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from label_anything.app.coco_images import NO_FILE_NAME, REPEATED_IMAGE, SIZE_MISMATCH, UNREADABLE, read_coco, short
from label_anything.app.journal import id_key

__all__ = [
    "NOT_AN_OBJECT", "NO_BOX", "NO_FILE_NAME", "NO_POLYGON", "OUTSIDE", "REPEATED_IMAGE", "SIZE_MISMATCH",
    "UNKNOWN_IMAGE", "UNREADABLE", "Box", "ImageJob", "Skip", "coco_box_to_xyxy", "plan_jobs", "read_coco", "short",
]

# Why a box was not segmented (keys of ``BoxesReport.skipped`` and of the summary's ``skipped``); the reasons
# about images (unreadable, repeated id, no file name, another size) are ``app.coco_images``'.
NOT_AN_OBJECT = "annotation is not a JSON object"
NO_BOX = "no usable bbox"
UNKNOWN_IMAGE = "image_id not in images"
OUTSIDE = "box outside the image"
NO_POLYGON = "mask has no polygon"

Box = tuple[float, float, float, float]
"""A box ``(x0, y0, x1, y1)`` in pixels of the image, float, ``x1 > x0`` and ``y1 > y0``."""


def coco_box_to_xyxy(bbox: Any) -> Box | None:
    """COCO ``[x, y, w, h]`` (pixels, top-left corner and size) → ``(x0, y0, x1, y1)``; None unless it is four
    finite numbers making a box of positive width and height (after the sums: ``1e300 + 1e-300`` is no wider
    than ``1e300``)."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return None
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = x + w, y + h
    if not (np.isfinite([x, y, x1, y1]).all() and x1 > x and y1 > y):
        return None
    return x, y, x1, y1


@dataclass
class ImageJob:
    """One image's work, everything a (possibly remote) worker needs besides the pixels."""

    image_id: Any
    file_name: str
    boxes: list[tuple[int, Box]]  # (annotation index in the file, (x0, y0, x1, y1) in pixels)
    coco_size: tuple[Any, Any]  # (height, width) as the COCO file says; None where it says nothing

    def __str__(self) -> str:
        return f"image {self.file_name}"


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
            positions[id_key(img["id"])].append(position)
        else:
            skips.append(Skip(None, f"images[{position}] is not an image entry with an id", boxes=0))
    by_image: dict[str, list[int]] = defaultdict(list)
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            skips.append(Skip(NOT_AN_OBJECT, f"annotations[{index}] is not a JSON object: {short(ann)}"))
        elif "bbox" not in ann:
            continue  # not a box (keypoints, a caption...): passes through
        elif "image_id" not in ann or id_key(ann["image_id"]) not in positions:
            skips.append(Skip(UNKNOWN_IMAGE, f"annotation {short(ann.get('id'))}: image_id "
                                             f"{short(ann.get('image_id'))} is not in images"))
        elif len(positions[id_key(ann["image_id"])]) > 1:
            skips.append(Skip(REPEATED_IMAGE, f"annotation {short(ann.get('id'))}: image id "
                                              f"{short(ann['image_id'])} is given to several images"))
        else:
            by_image[id_key(ann["image_id"])].append(index)
    jobs = []
    for key, indexes in by_image.items():
        job, job_skips = _job(coco["images"][positions[key][0]], [(i, annotations[i]) for i in indexes])
        skips.extend(job_skips)
        if job is not None:
            jobs.append(job)
    order = {key: positions[key][0] for key in by_image}
    jobs.sort(key=lambda job: order[id_key(job.image_id)])
    return jobs, skips


def _job(img: dict[str, Any], anns: list[tuple[int, dict[str, Any]]]) -> tuple[ImageJob | None, list[Skip]]:
    """The work of one image (None when it has nothing to do), and the boxes of it that are unusable."""
    name = img.get("file_name")
    if not isinstance(name, str) or not name.strip():
        return None, [Skip(NO_FILE_NAME, f"image {short(img['id'])} has no file_name: its {len(anns)} box(es) "
                                         "are left as they are", boxes=len(anns))]
    boxes: list[tuple[int, Box]] = []
    skips = []
    for index, ann in anns:
        xyxy = coco_box_to_xyxy(ann["bbox"])
        if xyxy is None:
            skips.append(Skip(NO_BOX, f"{name}: annotation {ann.get('id')} has no usable bbox {short(ann['bbox'])}"))
        else:
            boxes.append((index, xyxy))
    size = tuple(img.get(key) for key in ("height", "width"))
    return (ImageJob(img["id"], name, boxes, size) if boxes else None), skips  # type: ignore[arg-type]
