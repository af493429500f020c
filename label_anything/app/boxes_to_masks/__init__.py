"""``label-anything boxes-to-masks``: give every box annotation of a COCO file a mask, the box as prompt.

Each image is read and encoded once, then every one of its boxes is decoded against that one embedding,
exactly as an interactive ``decode(model, encode(model, image), Prompt.from_lists(box=...)).best()`` would,
so a batch mask equals the mask a click-by-click session gives for the same box.

Output: the input COCO file with, on every annotation that has a usable ``bbox``:

* ``segmentation``: the mask as compressed COCO RLE (``fmt="rle"``, default) or polygons (``fmt="polygon"``);
* ``area``: painted pixels of the mask (polygons: of the rasterized polygons, which fill holes beyond the 32
  largest per part and smooth the outline by 1 px);
* ``mask_score``: the model's predicted IoU of the mask (a field of its own: COCO's ``score`` means the
  detector's confidence in result files, which this must not overwrite).

Every other field (``bbox`` included, left as given) and every other annotation stays as it was.

A box that cannot be segmented (no usable ``bbox``, an image that is missing, unreadable or of another size
than the COCO file says, a box beside the image...) leaves its annotation untouched and is counted under its
reason (``BoxesReport.skipped``); no input stops the run.

Resumable, bounded memory: one image's embedding is alive at a time, its results are appended to
``OUT.partial.jsonl`` after each image, and the final OUT is written atomically.

The modules, in the order a run uses them:

* ``coco_input``: read and check the COCO file, one ``ImageJob`` per image, the skip reasons;
* ``progress``: the resume file ``OUT.partial.jsonl`` and the atomic write of OUT;
* ``image_job``: one image: the EXIF decision (which pixels the boxes are on), encode once, decode each box;
* ``run``: ``boxes_to_masks``, the loop over the images (here or on a Ray pool) and its ``BoxesReport``.

The command line (``label_anything.cli.boxes_to_masks``) only parses options and prints the summary.
"""

from label_anything.app.boxes_to_masks.coco_input import (
    NO_BOX,
    NO_FILE_NAME,
    NO_POLYGON,
    NOT_AN_OBJECT,
    OUTSIDE,
    REPEATED_IMAGE,
    SIZE_MISMATCH,
    UNKNOWN_IMAGE,
    UNREADABLE,
    ImageJob,
    Skip,
    coco_box_to_xyxy,
    plan_jobs,
    read_coco,
)
from label_anything.app.boxes_to_masks.image_job import (
    FORMATS,
    SCORE_FIELD,
    ImageResult,
    ImageSizeError,
    decode_for_coco,
    mask_segmentation,
    segment_image_boxes,
    segment_job,
    segmentation_area,
)
from label_anything.app.boxes_to_masks.progress import (
    PROGRESS_VERSION,
    ImageRecord,
    Progress,
    open_progress,
    partial_path,
    read_progress,
)
from label_anything.app.boxes_to_masks.run import BoxesReport, boxes_to_masks

__all__ = [
    "FORMATS",
    "NOT_AN_OBJECT",
    "NO_BOX",
    "NO_FILE_NAME",
    "NO_POLYGON",
    "OUTSIDE",
    "PROGRESS_VERSION",
    "REPEATED_IMAGE",
    "SCORE_FIELD",
    "SIZE_MISMATCH",
    "UNKNOWN_IMAGE",
    "UNREADABLE",
    "BoxesReport",
    "ImageJob",
    "ImageRecord",
    "ImageResult",
    "ImageSizeError",
    "Progress",
    "Skip",
    "boxes_to_masks",
    "coco_box_to_xyxy",
    "decode_for_coco",
    "mask_segmentation",
    "open_progress",
    "partial_path",
    "plan_jobs",
    "read_coco",
    "read_progress",
    "segment_image_boxes",
    "segment_job",
    "segmentation_area",
]
