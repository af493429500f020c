"""COCO instance-segmentation files from regions: compressed RLE or polygons, streamed to disk.

Image and annotation entries are spooled as JSON lines into a temporary file while tasks stream in, so
memory stays bounded on exports of any size; ``finish`` then writes ``ann.json`` (and ``train.json`` /
``val.json``) atomically. One ``images`` entry per task (id = the task id), one annotation per region:
``bbox`` tight around the mask, ``area`` = the mask's pixel count, ``iscrowd`` 0.

Every annotation of ``ann.json`` has a mask that ``pycocotools.COCO.annToMask`` loads, as Mask R-CNN
training needs. A box-only region (``rectanglelabels``) has none: it goes to ``boxes.json``, a detection
file with the same images and categories (``bbox`` as drawn, ``area`` = box width × height, no
``segmentation``), ready for ``label-anything boxes-to-masks``. Annotation ids are unique across both files.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from label_anything.app.atomic import atomic_open
from label_anything.geometry.masks import (
    mask_area,
    mask_to_coco_rle,
    mask_to_xyxy,
    polygons_to_coco,
    xyxy_to_xywh,
)
from label_anything.geometry.polygons import mask_to_polygons
from label_anything.labelstudio.regions import Region

CocoMode = Literal["rle", "polygon"]
BOXES_FILE = "boxes.json"


def region_to_coco(region: Region, mode: CocoMode, *, tolerance: float = 1.0) -> dict[str, Any] | None:
    """The ``segmentation``, ``bbox`` and ``area`` of one region with a mask, or None when it covers no pixel.

    Args:
        region: a parsed region with a mask (brush, or polygons in pixels); see ``box_to_coco`` for boxes.
        mode: ``rle`` (compressed COCO RLE of the mask) or ``polygon`` (COCO polygons; brush masks are traced
            with holes and several parts by ``mask_to_polygons``; drawn polygons are kept as drawn).
        tolerance: Douglas-Peucker tolerance in pixels when tracing brush masks.
    """
    mask = region.to_mask()
    if not mask.any():
        return None
    if mode == "rle":
        segmentation: Any = mask_to_coco_rle(mask)
    elif region.polygons:
        segmentation = polygons_to_coco(region.polygons)
    else:
        segmentation = _traced(mask, tolerance)
    if not segmentation:
        return None
    bbox = [float(v) for v in xyxy_to_xywh(mask_to_xyxy(mask))]
    return {"segmentation": segmentation, "bbox": bbox, "area": mask_area(mask)}


def _traced(mask: np.ndarray, tolerance: float) -> list[list[float]]:
    # Simplification can leave no ring of 3 vertices on a mask of specks: the exact outline always has one.
    return polygons_to_coco(mask_to_polygons(mask, tolerance=tolerance)) or polygons_to_coco(
        mask_to_polygons(mask, tolerance=0.0)
    )


def box_to_coco(region: Region) -> dict[str, Any]:
    """The ``bbox`` and ``area`` of a box-only region, for a detection file (no ``segmentation``)."""
    assert region.box is not None
    # Edges rounded, then the size: x + width stays within the image.
    x0, y0, x1, y1 = (round(float(v), 3) for v in region.box)
    return {"bbox": [x0, y0, round(x1 - x0, 3), round(y1 - y0, 3)], "area": round(region.box_area, 2)}


class CocoWriter:
    """Spool COCO entries to disk, then write ``annotations/ann.json`` (+ train/val) atomically.

    Args:
        out_dir: the dataset folder; files go to ``out_dir/annotations/``.
        mode: ``rle`` or ``polygon``.
        tolerance: polygon simplification in pixels (polygon mode, brush regions).
    """

    def __init__(self, out_dir: Path, mode: CocoMode, *, tolerance: float = 1.0) -> None:
        self.ann_dir = out_dir / "annotations"
        self.ann_dir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.tolerance = tolerance
        fd, name = tempfile.mkstemp(dir=self.ann_dir, prefix=".spool.", suffix=".tmp")
        self._spool_path = Path(name)
        # "i" lines are images, "a" annotations, "b" box-only annotations: "<kind>\t<image id>\t<json>\n"
        self._spool = os.fdopen(fd, "w", encoding="utf-8")
        self.n_images = 0
        self.n_annotations = 0
        self.n_boxes = 0

    def add_image(self, image_id: int, file_name: str, width: int, height: int) -> None:
        entry = {"id": image_id, "file_name": file_name, "width": width, "height": height}
        self._spool.write(f"i\t{image_id}\t{json.dumps(entry, ensure_ascii=False)}\n")
        self.n_images += 1

    def add_region(self, image_id: int, region: Region, category_id: int) -> bool:
        """Add one region with a mask as an annotation; False when it covers no pixel (the caller counts it)."""
        coco = region_to_coco(region, self.mode, tolerance=self.tolerance)
        if coco is None:
            return False
        self.n_annotations += 1
        self._add("a", image_id, category_id, coco)
        return True

    def add_box(self, image_id: int, region: Region, category_id: int) -> None:
        """Add a box-only region to ``boxes.json``."""
        self.n_boxes += 1
        self._add("b", image_id, category_id, box_to_coco(region))

    def _add(self, kind: str, image_id: int, category_id: int, coco: dict[str, Any]) -> None:
        ann_id = self.n_annotations + self.n_boxes
        entry = {"id": ann_id, "image_id": image_id, "category_id": category_id, **coco, "iscrowd": 0}
        self._spool.write(f"{kind}\t{image_id}\t{json.dumps(entry, separators=(',', ':'), allow_nan=False)}\n")

    def finish(self, classes: Sequence[str], splits: dict[str, Collection[int]] | None = None) -> list[Path]:
        """Write ``ann.json`` and one file per split (e.g. ``{"train": ids, "val": ids}``); returns the paths.

        Category ids are 1-based in the order of ``classes``.
        """
        self._spool.close()
        categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(classes)]
        targets: list[tuple[Path, Collection[int] | None, str]] = [(self.ann_dir / "ann.json", None, "a")]
        targets += [(self.ann_dir / f"{name}.json", ids, "a") for name, ids in (splits or {}).items()]
        boxes = self.ann_dir / BOXES_FILE
        if self.n_boxes:
            targets.append((boxes, None, "b"))
        else:
            boxes.unlink(missing_ok=True)  # from an earlier run: it would not match this ann.json
        written = []
        try:
            for path, ids, kind in targets:
                self._write(path, categories, ids, kind)
                written.append(path)
        finally:
            self._spool_path.unlink(missing_ok=True)
        return written

    def abort(self) -> None:
        """Drop the spool without writing anything."""
        self._spool.close()
        self._spool_path.unlink(missing_ok=True)

    def _write(self, path: Path, categories: list[dict[str, Any]], ids: Collection[int] | None, kind: str) -> None:
        info = {
            "description": "exported from Label Studio by label-anything",
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with atomic_open(path) as out:
            out.write('{"info": ' + json.dumps(info) + ', "licenses": [], "categories": ')
            out.write(json.dumps(categories, ensure_ascii=False))
            for wanted, key in (("i", "images"), (kind, "annotations")):
                out.write(f',\n"{key}": [')
                first = True
                with self._spool_path.open(encoding="utf-8") as spool:
                    for line in spool:
                        k, image_id, entry = line.rstrip("\n").split("\t", 2)
                        if k != wanted or (ids is not None and int(image_id) not in ids):
                            continue
                        out.write(("\n" if first else ",\n") + entry)
                        first = False
                out.write("]")
            out.write("}\n")
