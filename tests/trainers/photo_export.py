"""A small Label Studio export of real photos (scikit-image's), with brush and polygon regions.

Four photos (chelsea, coffee, astronaut, rocket: four sizes, none square but one) saved as JPEGs, each with a
brush region (a real shape: the horse silhouette, coins with their holes, a ring) and a polygon, in the JSON
Label Studio exports (brush RLE from ``brush_rle_encode``, polygons in percent). ``convert_export`` runs the
real command line on it, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from label_anything.labelstudio.rle import brush_rle_encode

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
CLASSES = ("horse", "coins", "ring", "star")


@dataclass
class PhotoExport:
    """What ``build_photo_export`` wrote: the export, the image folder, and per image the brush masks."""

    export: Path
    images: Path
    brush_masks: dict[str, list[tuple[str, np.ndarray]]] = field(default_factory=dict)
    """file name → [(label, (H, W) bool mask)] of its brush regions, as drawn."""
    regions: int = 0


def _fit(shape: np.ndarray, height: int, width: int, top: float, left: float, size: float) -> np.ndarray:
    """``shape`` (bool) scaled to ``size`` of the image's shorter side, placed at fractions (top, left)."""
    side = round(size * min(height, width))
    scale = side / max(shape.shape)
    h, w = max(2, round(shape.shape[0] * scale)), max(2, round(shape.shape[1] * scale))
    small = np.asarray(Image.fromarray(shape.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
    mask = np.zeros((height, width), bool)
    y, x = round(top * (height - h)), round(left * (width - w))
    mask[y : y + h, x : x + w] = small
    return mask


def _shapes() -> dict[str, np.ndarray]:
    from skimage import data

    yy, xx = np.mgrid[:100, :100]
    radius = np.hypot(yy - 49.5, xx - 49.5)
    return {
        "horse": ~data.horse().astype(bool),  # the silhouette is dark
        "coins": data.coins()[::2, ::2] > 110,  # several parts, some with holes
        "ring": (radius < 48) & (radius > 22),  # one part with a hole
    }


def _star(width: int, height: int, cx: float, cy: float, r: float) -> list[list[float]]:
    """A five-pointed star, in Label Studio's percent coordinates."""
    points = []
    for k in range(10):
        angle = np.pi / 2 + k * np.pi / 5
        rad = r if k % 2 == 0 else r * 0.45
        x, y = cx * width + rad * np.cos(angle), cy * height - rad * np.sin(angle)
        points.append([x * 100 / width, y * 100 / height])
    return points


def build_photo_export(folder: Path) -> PhotoExport:
    """Write ``folder/images/<photo>.jpg`` and ``folder/export.json`` (one task per photo)."""
    from skimage import data

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    shapes = _shapes()
    brush_names = ("horse", "coins", "ring", "horse")
    result = PhotoExport(export=folder / "export.json", images=images)
    tasks = []
    for index, photo in enumerate(PHOTOS):
        pixels = np.asarray(getattr(data, photo)())
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        height, width = pixels.shape[:2]
        name = f"{photo}.jpg"
        Image.fromarray(pixels[:, :, :3]).save(images / name, quality=95)
        common = {"to_name": "image", "original_width": width, "original_height": height, "image_rotation": 0}
        label = brush_names[index]
        mask = _fit(shapes[label], height, width, top=0.15, left=0.1, size=0.5)
        regions = [
            {"id": f"b{index}", "type": "brushlabels", "from_name": "brush", **common,
             "value": {"format": "rle", "rle": brush_rle_encode(mask), "brushlabels": [label]}},
            {"id": f"p{index}", "type": "polygonlabels", "from_name": "poly", **common,
             "value": {"points": _star(width, height, 0.78, 0.7, 0.2 * min(width, height)), "closed": True,
                       "polygonlabels": ["star"]}},
        ]
        result.brush_masks[name] = [(label, mask)]
        if index % 2 == 0:  # a second brush object on half the photos: images with different object counts
            ring = _fit(shapes["ring"], height, width, top=0.9, left=0.2, size=0.25)
            regions.append({"id": f"c{index}", "type": "brushlabels", "from_name": "brush", **common,
                            "value": {"format": "rle", "rle": brush_rle_encode(ring), "brushlabels": ["ring"]}})
            result.brush_masks[name].append(("ring", ring))
        result.regions += len(regions)
        stamp = "2024-05-01T10:00:00.000000Z"
        tasks.append({"id": index + 1, "data": {"image": f"/data/upload/1/{name}"}, "predictions": [],
                      "annotations": [{"id": 100 + index, "result": regions, "was_cancelled": False,
                                       "created_at": stamp, "updated_at": stamp}]})
    result.export.write_text(json.dumps(tasks), encoding="utf-8")
    return result


def convert_export(export: PhotoExport, out: Path, *args: str) -> str:
    """Run ``label-anything convert EXPORT --out OUT --images-root IMAGES ARGS...``; returns its stdout."""
    cmd = [sys.executable, "-m", "label_anything", "convert", str(export.export), "--out", str(out),
           "--images-root", str(export.images), "--classes", ",".join(CLASSES), "--strict", "--no-progress", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"convert failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout
