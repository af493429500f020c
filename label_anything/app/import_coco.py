"""``label-anything import-coco``: a COCO file (boxes, masks) → Label Studio tasks to review, written to a
file or created in a project of a running Label Studio (``--project``).

Each COCO image becomes one task whose ``data[DATA_KEY]`` points at the image, and whose annotations
become one *prediction*: a ``rectanglelabels`` region per ``bbox`` and a ``brushlabels`` region per
``segmentation`` (RLE or polygons, decoded to a mask and re-encoded as Label Studio brush RLE), in percent
of the image with ``original_width``/``original_height``. Predictions, not annotations: an annotator
opens the task, sees the regions pre-filled, corrects them and submits.

The matching label config (``label_config_for``) has a ``RectangleLabels`` and a ``BrushLabels`` control
with one label per COCO category.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from label_anything.errors import LabelAnythingError
from label_anything.geometry.coords import pixels_to_percent
from label_anything.geometry.masks import coco_rle_to_mask, polygons_to_mask
from label_anything.labelstudio.client import LabelStudioClient
from label_anything.labelstudio.config import parse_label_config
from label_anything.labelstudio.rle import brush_rle_encode

LOCAL_FILES_PREFIX = "/data/local-files/?d="


def task_image_url(file_name: str, images_dir: Path, *, local_files_root: Path | None, url_prefix: str) -> str:
    """What Label Studio loads for an image: a local-files URL under ``local_files_root``, else prefix + name.

    >>> task_image_url("a b.jpg", Path("/srv/data/imgs"), local_files_root=Path("/srv/data"), url_prefix="")
    '/data/local-files/?d=imgs/a%20b.jpg'
    >>> task_image_url("x/1.jpg", Path("."), local_files_root=None, url_prefix="https://cdn.example/set/")
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
    ann: dict[str, Any], label: str, width: int, height: int, *, box_control: str | None, brush_control: str | None,
    to_name: str
) -> list[dict]:
    """Label Studio result regions of one COCO annotation: its box and, when it has one, its mask (a control
    of None leaves that kind of region out).

    The COCO ``bbox`` ``[x, y, w, h]`` is in pixels of a ``width`` x ``height`` image; the rectangle's value is in
    percent of that size. The ``segmentation`` (RLE or polygons, pixels) is decoded to a (height, width) bool
    mask and re-encoded as Label Studio brush RLE.
    """
    score = ann.get("mask_score", ann.get("score"))
    score = None if score is None else float(score)
    regions = []
    bbox = ann.get("bbox")
    if box_control is not None and isinstance(bbox, list) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0:
        x, y, w, h = (float(v) for v in bbox)
        value = {"x": pixels_to_percent(x, width), "y": pixels_to_percent(y, height),
                 "width": pixels_to_percent(w, width), "height": pixels_to_percent(h, height),
                 "rotation": 0, "rectanglelabels": [label]}
        regions.append(_region(box_control, to_name, "rectanglelabels", value, width, height, score))
    mask = segmentation_to_mask(ann.get("segmentation"), height, width) if brush_control is not None else None
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
    box_control: str | None = "label",
    brush_control: str | None = "brush",
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
        ref = task_image_url(str(img["file_name"]), images_dir, local_files_root=local_files_root,
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


def read_coco_file(path: Path) -> dict[str, Any]:
    """The parsed COCO file, or a one-line error."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LabelAnythingError(f"cannot read COCO file {path}: {exc}") from None


def write_tasks(
    coco: dict[str, Any],
    images_dir: Path,
    out: Path,
    *,
    local_files_root: Path | None,
    url_prefix: str,
    label_config: Path | None = None,
    data_key: str = "image",
    to_name: str = "image",
    box_control: str = "label",
    brush_control: str = "brush",
) -> dict[str, Any]:
    """Write ``coco_to_tasks``' tasks to ``out`` as a Label Studio import JSON (and, with ``label_config``, a
    label config whose names match them there). Returns a summary for the user."""
    names = dict(data_key=data_key, to_name=to_name, box_control=box_control, brush_control=brush_control)
    tasks = coco_to_tasks(coco, images_dir, local_files_root=local_files_root, url_prefix=url_prefix, **names)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks), encoding="utf-8")
    if label_config:
        categories = [str(c.get("name", c["id"])) for c in coco.get("categories", [])]
        label_config.write_text(label_config_for(categories, **names), encoding="utf-8")
    return {"out": str(out), "tasks": len(tasks), "regions": _region_count(tasks)}


# -- into a running Label Studio ----------------------------------------------------------------------
def names_from_label_config(xml: str, to_name: str, categories: list[str]) -> dict[str, str | None]:
    """``coco_to_tasks``'s naming arguments that fit a project's label config: the Image object (``to_name``,
    else the config's only one), its data key, and the RectangleLabels / BrushLabels controls on it, found by
    type and ``toName`` (None for a control the config lacks; those regions are left out).

    Raises LabelAnythingError when the config has no such image or neither control, or when a COCO category
    is not a label of a control (Label Studio does not check predictions against the config: such regions
    would fail silently in the labeling screen).
    """
    config = parse_label_config(xml)
    if to_name not in config.images and len(config.images) == 1:
        to_name = next(iter(config.images))
    data_key = config.image_key(to_name)
    controls = {t: config.output_control(t, to_name) for t in ("rectanglelabels", "brushlabels")}
    if not any(controls.values()):
        raise LabelAnythingError(
            f"the project's label config has no RectangleLabels or BrushLabels control with toName={to_name!r}; "
            "add them (import-coco --label-config CONFIG.xml writes a config that fits)"
        )
    for control in controls.values():
        missing = [c for c in categories if control is not None and c not in control.labels]
        if missing:
            raise LabelAnythingError(
                f"COCO categories {', '.join(map(repr, missing))} are not labels of <{control.type}> control "
                f"{control.name!r} in the project; add them to its label config"
            )
    box, brush = controls["rectanglelabels"], controls["brushlabels"]
    return {"data_key": data_key, "to_name": to_name, "box_control": box.name if box else None,
            "brush_control": brush.name if brush else None}


def ensure_image_storage(client: LabelStudioClient, project_id: int, images_dir: Path) -> dict | None:
    """A local-files storage of the project covering ``images_dir``, created (never synced) when missing.

    Label Studio serves ``/data/local-files/`` only from folders some local-files storage names. Syncing
    this storage would import the images a second time as tasks without predictions. Returns the created
    storage, or None when one already covered the folder.
    """
    folder = Path(os.path.abspath(images_dir))
    for storage in client.local_storages(project_id):
        path = Path(os.path.abspath(storage.get("path") or "/nonexistent"))
        if folder == path or path in folder.parents:
            return None
    return client.add_local_storage(project_id, folder, f"import-coco {folder.name} (serves images; do not sync)")


def import_into_project(
    coco: dict[str, Any],
    images_dir: Path,
    client: LabelStudioClient,
    project_ref: str,
    *,
    local_files_root: Path | None,
    url_prefix: str,
    to_name: str = "image",
) -> dict[str, Any]:
    """Create one task per COCO image in the project ``project_ref`` (id or title), boxes and masks as its
    prediction, named after the project's own controls. Returns a summary for the user."""
    client.check_access()
    project = client.find_project(project_ref)
    categories = [str(c.get("name", c["id"])) for c in coco.get("categories", [])]
    names = names_from_label_config(project.get("label_config") or "", to_name, categories)
    tasks = coco_to_tasks(coco, images_dir, local_files_root=local_files_root, url_prefix=url_prefix, **names)
    storage = ensure_image_storage(client, project["id"], images_dir) if local_files_root is not None else None
    totals = client.import_tasks(project["id"], tasks)
    summary: dict[str, Any] = {"project": project["id"], "title": project.get("title"), **totals,
                               "regions": _region_count(tasks)}
    if storage is not None:
        summary["storage_created"] = storage.get("id")
    return summary


def _region_count(tasks: list[dict]) -> int:
    return sum(len(t.get("predictions", [{}])[0].get("result", [])) for t in tasks)
