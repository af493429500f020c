"""``label-anything import-coco``: a COCO file (boxes, masks) → a Label Studio tasks file to review.

Each COCO image becomes one task whose ``data[DATA_KEY]`` points at the image, and whose annotations
become one *prediction*: a ``rectanglelabels`` region per ``bbox`` and a ``brushlabels`` region per
``segmentation`` (RLE or polygons, decoded to a mask and re-encoded as Label Studio brush RLE), in percent
of the image with ``original_width``/``original_height``. Predictions, not annotations: an annotator
opens the task, sees the regions pre-filled, corrects them and submits.

The matching label config (``label_config_for``) has a ``RectangleLabels`` and a ``BrushLabels`` control
with one label per COCO category.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from label_anything.errors import LabelAnythingError
from label_anything.labelstudio.context import pixels_to_percent
from label_anything.labelstudio.rle import brush_rle_encode
from label_anything.masks import coco_rle_to_mask, polygons_to_mask

LOCAL_FILES_PREFIX = "/data/local-files/?d="


def image_reference(file_name: str, images_dir: Path, *, local_files_root: Path | None, url_prefix: str) -> str:
    """What Label Studio loads for an image: a local-files URL under ``local_files_root``, else prefix + name.

    >>> image_reference("a b.jpg", Path("/srv/data/imgs"), local_files_root=Path("/srv/data"), url_prefix="")
    '/data/local-files/?d=imgs/a%20b.jpg'
    >>> image_reference("x/1.jpg", Path("."), local_files_root=None, url_prefix="https://cdn.example/set/")
    'https://cdn.example/set/x/1.jpg'
    """
    if local_files_root is not None:
        path = Path(os.path.abspath(images_dir / file_name))
        root = Path(os.path.abspath(local_files_root))
        try:
            relative = path.relative_to(root)
        except ValueError:
            raise LabelAnythingError(f"image {path} is not under --local-files-root {root}") from None
        return LOCAL_FILES_PREFIX + quote(relative.as_posix())
    return url_prefix + quote(file_name) if url_prefix.startswith(("http://", "https://")) else url_prefix + file_name


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """A COCO ``segmentation`` (RLE dict, or a list of flat polygons) → (H, W) bool; None if there is none."""
    if isinstance(segmentation, dict) and "counts" in segmentation:
        mask = coco_rle_to_mask(segmentation)
        if mask.shape != (height, width):
            raise LabelAnythingError(f"RLE of size {mask.shape} on an image of {height}x{width}")
        return mask
    if isinstance(segmentation, list) and segmentation:
        return polygons_to_mask(segmentation, height, width)
    return None


def _region(control: str, to_name: str, type_: str, value: dict, width: int, height: int,
            score: float | None) -> dict:
    region = {"id": uuid.uuid4().hex[:10], "from_name": control, "to_name": to_name, "type": type_,
              "original_width": width, "original_height": height, "image_rotation": 0, "value": value}
    if score is not None:
        region["score"] = score
    return region


def annotation_regions(
    ann: dict[str, Any], label: str, width: int, height: int, *, box_control: str, brush_control: str, to_name: str
) -> list[dict]:
    """Label Studio result regions of one COCO annotation: its box and, when it has one, its mask."""
    score = ann.get("mask_score", ann.get("score"))
    score = None if score is None else float(score)
    regions = []
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0:
        x, y, w, h = (float(v) for v in bbox)
        value = {"x": pixels_to_percent(x, width), "y": pixels_to_percent(y, height),
                 "width": pixels_to_percent(w, width), "height": pixels_to_percent(h, height),
                 "rotation": 0, "rectanglelabels": [label]}
        regions.append(_region(box_control, to_name, "rectanglelabels", value, width, height, score))
    mask = segmentation_to_mask(ann.get("segmentation"), height, width)
    if mask is not None and mask.any():
        value = {"format": "rle", "rle": brush_rle_encode(mask), "brushlabels": [label]}
        regions.append(_region(brush_control, to_name, "brushlabels", value, width, height, score))
    return regions


def coco_to_tasks(
    coco: dict[str, Any],
    images_dir: Path,
    *,
    local_files_root: Path | None = None,
    url_prefix: str = "",
    data_key: str = "image",
    to_name: str = "image",
    box_control: str = "label",
    brush_control: str = "brush",
    model_version: str = "coco-import",
) -> list[dict]:
    """Label Studio import tasks (one per COCO image) with the image's boxes and masks as one prediction.

    ``width``/``height`` come from the COCO ``images`` entries (they must be there: percent coordinates
    need them, and reading every image to learn its size would be slow on large sets).
    """
    categories = {c["id"]: str(c.get("name", c["id"])) for c in coco.get("categories", [])}
    by_image: dict[Any, list[dict]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    tasks = []
    for img in coco.get("images", []):
        width, height = img.get("width"), img.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise LabelAnythingError(f"image {img.get('id')} ({img.get('file_name')}) has no width/height")
        result: list[dict] = []
        scores = []
        for ann in by_image.get(img["id"], []):
            label = categories.get(ann.get("category_id"), str(ann.get("category_id")))
            regions = annotation_regions(ann, label, width, height, box_control=box_control,
                                         brush_control=brush_control, to_name=to_name)
            result.extend(regions)
            scores.extend(r["score"] for r in regions[:1] if "score" in r)
        ref = image_reference(str(img["file_name"]), images_dir, local_files_root=local_files_root,
                              url_prefix=url_prefix)
        task: dict[str, Any] = {"data": {data_key: ref, "coco_image_id": img["id"]}}
        if result:
            prediction: dict[str, Any] = {"model_version": model_version, "result": result}
            if scores:
                prediction["score"] = float(np.mean(scores))
            task["predictions"] = [prediction]
        tasks.append(task)
    return tasks


def label_config_for(categories: list[str], *, to_name: str = "image", data_key: str = "image",
                     box_control: str = "label", brush_control: str = "brush") -> str:
    """A label config that shows what ``coco_to_tasks`` produces (the control names must match)."""
    labels = "\n".join(f"    <Label value={quoteattr(c)}/>" for c in categories)
    return (f'<View>\n  <Image name={quoteattr(to_name)} value="${data_key}" zoom="true"/>\n'
            f"  <RectangleLabels name={quoteattr(box_control)} toName={quoteattr(to_name)}>\n{labels}\n"
            f"  </RectangleLabels>\n  <BrushLabels name={quoteattr(brush_control)} toName={quoteattr(to_name)}>\n"
            f"{labels}\n  </BrushLabels>\n</View>\n")


# -- command line ------------------------------------------------------------------------------------
def add_import_coco_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything import-coco`` to the CLI's sub-commands."""
    p = subparsers.add_parser(
        "import-coco",
        help="turn a COCO file (boxes, masks) into a Label Studio tasks file with predictions to review",
        description="Write a Label Studio import JSON: one task per COCO image, its boxes (rectanglelabels) and "
        "masks (brushlabels) as predictions. Import it in a project whose label config has the same control "
        "names (--label-config writes one).",
    )
    p.add_argument("coco", type=Path, metavar="COCO.json")
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder the file_name fields are in")
    p.add_argument("--out", type=Path, required=True, metavar="TASKS.json")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local-files-root", type=Path, default=os.environ.get("LOCAL_FILES_DOCUMENT_ROOT"),
                       help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT: images become /data/local-files/?d=<path "
                            "relative to it> [env LOCAL_FILES_DOCUMENT_ROOT]")
    where.add_argument("--url-prefix", default="",
                       help="else: prefix put before each file_name (e.g. https://host/images/ or s3://bucket/)")
    p.add_argument("--data-key", default="image", help="task data key ($image in the config; default: %(default)s)")
    p.add_argument("--to-name", default="image", help="name of the Image tag (default: %(default)s)")
    p.add_argument("--box-control", default="label", help="RectangleLabels name (default: %(default)s)")
    p.add_argument("--brush-control", default="brush", help="BrushLabels name (default: %(default)s)")
    p.add_argument("--label-config", type=Path, metavar="CONFIG.xml", help="also write a matching label config")
    p.set_defaults(func=cmd_import_coco)
    return p


def cmd_import_coco(args: argparse.Namespace) -> int:
    try:
        coco = json.loads(Path(args.coco).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LabelAnythingError(f"cannot read COCO file {args.coco}: {exc}") from None
    names = dict(data_key=args.data_key, to_name=args.to_name, box_control=args.box_control,
                 brush_control=args.brush_control)
    tasks = coco_to_tasks(coco, args.images, local_files_root=args.local_files_root, url_prefix=args.url_prefix,
                          **names)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(tasks), encoding="utf-8")
    if args.label_config:
        categories = [str(c.get("name", c["id"])) for c in coco.get("categories", [])]
        args.label_config.write_text(label_config_for(categories, **names), encoding="utf-8")
    n_regions = sum(len(t.get("predictions", [{}])[0].get("result", [])) for t in tasks)
    print(json.dumps({"out": str(args.out), "tasks": len(tasks), "regions": n_regions}))
    return 0
