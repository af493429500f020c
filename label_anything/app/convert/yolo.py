"""Ultralytics YOLO segmentation labels: ``labels/<image stem>.txt``, ``data.yaml``, train/val image lists.

The format (docs.ultralytics.com/datasets/segment/): one text file per image, named like the image with
``.txt``, in a ``labels`` folder beside ``images``; one line per object::

    <class-index> <x1> <y1> <x2> <y2> ... <xn> <yn>

class indices 0-based, coordinates normalized by the image width and height to [0, 1]. An image without
objects gets an empty file (a background image). ``data.yaml`` gives ``path``, ``train``, ``val`` (a folder
or a text file listing image paths) and ``names`` (index: name).

One line holds one polygon, so a mask of several parts or with holes is joined into a single ring by
zero-width cuts walked there and back (what Ultralytics' own ``merge_multi_segment`` does for COCO).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from label_anything.app.atomic import write_text_atomic
from label_anything.geometry.polygons import mask_to_polygons, splice_rings
from label_anything.geometry.polygons_clip import clip_polygon
from label_anything.labelstudio.regions import Region


def merge_polygons(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Join polygons (K_i, 2) into one ring, every other part attached to the first by a zero-width cut."""
    return splice_rings(polygons[0], polygons[1:])


def region_to_yolo(region: Region, class_index: int, *, tolerance: float = 1.0) -> str | None:
    """One label line for a region with a mask, or None when it covers no pixel.

    Brush masks are traced with ``mask_to_polygons`` (holes and parts spliced in); drawn polygons are kept,
    cut to the image (Ultralytics reads coordinates in [0, 1]), the parts of one smart-click answer joined.
    A box-only region has no line: YOLO-seg has no box lines, and its 4 corners would be a mask.
    """
    if region.box_only or not region.to_mask().any():
        return None
    if region.polygons:
        rings = [clip_polygon(p, 0, 0, region.width, region.height) for p in region.polygons]
        polygons = [r for r in rings if len(r) >= 3]
    else:
        polygons = mask_to_polygons(region.to_mask(), tolerance=tolerance)
    if not polygons:
        return None
    ring = merge_polygons(polygons)
    xy = np.clip(ring / np.array([region.width, region.height]), 0.0, 1.0)
    return f"{class_index} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1))


class YoloWriter:
    """Write one label file per image as images arrive, then ``data.yaml`` (and ``train.txt``/``val.txt``)."""

    def __init__(self, out_dir: Path, *, tolerance: float = 1.0) -> None:
        self.out_dir = out_dir
        self.labels_dir = out_dir / "labels"
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        self.tolerance = tolerance
        self._lines: dict[int, list[str]] = {}
        self._names: dict[int, str] = {}
        self.n_images = 0
        self.n_annotations = 0

    def add_image(self, image_id: int, file_name: str, width: int, height: int) -> None:
        self._flush()
        self._names[image_id] = file_name
        self._lines[image_id] = []
        self.n_images += 1

    def add_region(self, image_id: int, region: Region, category_id: int) -> bool:
        line = region_to_yolo(region, category_id - 1, tolerance=self.tolerance)
        if line is None:
            return False
        self._lines[image_id].append(line)
        self.n_annotations += 1
        return True

    def _flush(self) -> None:
        # Labels of the previous image are complete once the next image starts: write and forget them.
        for image_id, lines in self._lines.items():
            stem = Path(self._names[image_id]).stem
            write_text_atomic(self.labels_dir / f"{stem}.txt", "".join(line + "\n" for line in lines))
        self._lines.clear()

    def finish(self, classes: Sequence[str], splits: dict[str, Collection[int]] | None = None) -> list[Path]:
        """Write the last label file, the image lists of the splits and ``data.yaml``; returns the paths."""
        self._flush()
        written = []
        entries = {}
        for name, ids in (splits or {}).items():
            path = self.out_dir / f"{name}.txt"
            paths = sorted(f"./images/{self._names[i]}" for i in ids)
            write_text_atomic(path, "".join(p + "\n" for p in paths))
            entries[name] = path.name
            written.append(path)
        train = entries.get("train", "images")
        val = entries.get("val", train)
        # JSON strings are valid YAML double-quoted scalars: names with quotes, colons or non-ASCII survive.
        lines = [
            f"path: {json.dumps(str(self.out_dir.resolve()), ensure_ascii=False)}",
            f"train: {json.dumps(train)}",
            f"val: {json.dumps(val)}",
            f"nc: {len(classes)}",
            "names:",
            *(f"  {i}: {json.dumps(name, ensure_ascii=False)}" for i, name in enumerate(classes)),
        ]
        yaml_path = self.out_dir / "data.yaml"
        write_text_atomic(yaml_path, "\n".join(lines) + "\n")
        written.append(yaml_path)
        return written

    def abort(self) -> None:
        self._lines.clear()
