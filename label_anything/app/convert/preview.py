"""Pictures of a converted dataset: every image with its masks, boxes and labels, and a contact sheet.

Reads ``DIR/annotations/ann.json`` (COCO, RLE or polygons; the boxes of ``boxes.json`` beside it are drawn
too) or, failing that, ``DIR/data.yaml`` with ``DIR/labels/*.txt`` (YOLO-seg). An annotation or label line
that cannot be drawn is counted, not fatal. Each class has its own colour (golden-ratio hues, so neighbours in the
class list differ); each picture carries a legend of the classes it shows.
"""

from __future__ import annotations

import colorsys
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from label_anything.app.convert.coco import BOXES_FILE
from label_anything.errors import ImageError, LabelAnythingError
from label_anything.geometry.masks import coco_rle_to_mask, polygons_to_mask
from label_anything.imaging.decode import read_image

THUMB = 256


@dataclass
class Instance:
    """One object to draw: class index (0-based), (H, W) bool mask or None, box x0, y0, x1, y1 in pixels."""

    class_index: int
    mask: np.ndarray | None
    box: tuple[float, float, float, float]


def class_colour(index: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour for class ``index``."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LabelAnythingError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise LabelAnythingError(f"{path} is not a COCO file (not a JSON object)")
    return data


def _coco_instance(a: dict, h: int, w: int, index: dict[int, int]) -> Instance:
    seg = a.get("segmentation")
    if isinstance(seg, dict):
        mask = coco_rle_to_mask(seg)
    elif seg:
        mask = polygons_to_mask(seg, h, w)
    else:
        mask = None
    x, y, bw, bh = (float(v) for v in a["bbox"])
    if not np.isfinite([x, y, bw, bh]).all():
        raise ValueError("bbox is not finite")
    return Instance(index.get(a.get("category_id"), 0), mask, (x, y, x + bw, y + bh))


def _coco_items(ann_path: Path, stats: dict[str, int]) -> tuple[list[str], Iterator[tuple[str, list[Instance]]]]:
    coco = _read_json(ann_path)
    boxes_path = ann_path.with_name(BOXES_FILE)
    boxes = _read_json(boxes_path) if boxes_path.is_file() else {}
    categories = sorted((c for c in coco.get("categories") or [] if isinstance(c, dict) and "id" in c),
                        key=lambda c: (not isinstance(c["id"], int), c["id"] if isinstance(c["id"], int) else 0,
                                       str(c["id"])))
    names = [str(c.get("name", c["id"])) for c in categories]
    index = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict[object, list[dict]] = {}
    for a in [*(coco.get("annotations") or []), *(boxes.get("annotations") or [])]:
        if isinstance(a, dict):
            by_image.setdefault(a.get("image_id"), []).append(a)

    def items() -> Iterator[tuple[str, list[Instance]]]:
        for image in coco.get("images") or []:
            try:
                h, w, name = int(image["height"]), int(image["width"]), str(image["file_name"])
            except (KeyError, TypeError, ValueError):
                stats["unusable"] += 1
                continue
            instances = []
            for a in by_image.get(image.get("id"), []):
                try:
                    instances.append(_coco_instance(a, h, w, index))
                except (KeyError, TypeError, ValueError, IndexError):
                    stats["unusable"] += 1
            yield name, instances

    return names, items()


def _yolo_items(root: Path, stats: dict[str, int]) -> tuple[list[str], Iterator[tuple[str, list[Instance]]]]:
    names_by_index: dict[int, str] = {}
    try:
        yaml_lines = (root / "data.yaml").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise LabelAnythingError(f"cannot read {root / 'data.yaml'}: {exc}") from None
    for line in yaml_lines:
        m = re.match(r"^\s+(\d+):\s*(.+)$", line)
        if m:
            text = m.group(2).strip()
            try:
                names_by_index[int(m.group(1))] = json.loads(text) if text.startswith('"') else text
            except ValueError:
                names_by_index[int(m.group(1))] = text
    names = [str(names_by_index[i]) for i in sorted(names_by_index)]

    def items() -> Iterator[tuple[str, list[Instance]]]:
        images = root / "images"
        for image_path in sorted(images.iterdir()) if images.is_dir() else []:
            if image_path.name.startswith("."):
                continue
            label = root / "labels" / f"{image_path.stem}.txt"
            try:
                lines = label.read_text(encoding="utf-8").splitlines() if label.exists() else []
            except (OSError, ValueError):
                lines = ["unreadable"]
            instances = []
            for line in (line for line in lines if line.strip()):
                try:
                    instances.append(_yolo_instance(line))
                except (TypeError, ValueError, IndexError):
                    stats["unusable"] += 1
            yield image_path.name, instances

    return names, items()


def _yolo_instance(line: str) -> Instance:
    # Normalized coordinates: kept as is here and scaled once the image size is known (see _scaled).
    values = line.split()
    xy = np.array(values[1:], dtype=np.float64).reshape(-1, 2)
    if len(xy) < 3 or not np.isfinite(xy).all() or int(values[0]) < 0:
        raise ValueError(f"not a YOLO-seg line: {line[:60]!r}")
    return Instance(int(values[0]), xy, (-1.0, -1.0, -1.0, -1.0))


def _scaled(instance: Instance, h: int, w: int) -> Instance:
    if instance.box[0] >= 0 or instance.mask is None:
        return instance
    xy = instance.mask * np.array([w, h])
    mask = polygons_to_mask([xy], h, w)
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return Instance(instance.class_index, mask, (x0, y0, x1, y1))


def draw(image: np.ndarray, instances: list[Instance], names: list[str]) -> np.ndarray:
    """Masks (translucent fill and outline), boxes, labels and a legend over an (H, W, 3) uint8 RGB image."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(0.4, min(h, w) / 800)
    thick = max(1, round(2 * scale))
    for inst in instances:
        colour = class_colour(inst.class_index)
        if inst.mask is not None and inst.mask.shape == (h, w):
            out[inst.mask] = (0.5 * out[inst.mask] + 0.5 * np.array(colour)).astype(np.uint8)
            contours, _ = cv2.findContours(inst.mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, thick)
    for inst in instances:
        colour = class_colour(inst.class_index)
        x0, y0, x1, y1 = (round(v) for v in inst.box)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, thick)
        name = names[inst.class_index] if inst.class_index < len(names) else str(inst.class_index)
        _label(out, name, (x0, max(0, y0)), colour, scale)
    present = sorted({i.class_index for i in instances})
    for row, ci in enumerate(present):
        name = names[ci] if ci < len(names) else str(ci)
        _label(out, name, (4, 4 + row * round(22 * scale)), class_colour(ci), scale)
    return out


def _label(img: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int], scale: float) -> None:
    # OpenCV's Hershey fonts are ASCII only: other characters are drawn as '?'.
    text = text.encode("ascii", "replace").decode()
    font_scale = 0.5 * scale
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    x, y = org
    cv2.rectangle(img, (x, y), (x + tw + 4, y + th + base + 4), colour, -1)
    cv2.putText(img, text, (x + 2, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)


def contact_sheet(thumbs: list[np.ndarray], columns: int = 6) -> np.ndarray:
    """Thumbnails (each at most THUMB x THUMB, RGB) on a grid, letterboxed in grey."""
    rows = max(1, -(-len(thumbs) // columns))
    cols = max(1, min(columns, len(thumbs)))
    sheet = np.full((rows * THUMB, cols * THUMB, 3), 40, dtype=np.uint8)
    for k, t in enumerate(thumbs):
        r, c = divmod(k, columns)
        y = r * THUMB + (THUMB - t.shape[0]) // 2
        x = c * THUMB + (THUMB - t.shape[1]) // 2
        sheet[y : y + t.shape[0], x : x + t.shape[1]] = t
    return sheet


def legend(names: list[str], width: int) -> np.ndarray:
    """A strip (rows of 24 px, RGB) naming every class in its colour, in class order."""
    cells = []
    for i, name in enumerate(names):
        cell = np.full((24, 160, 3), 40, dtype=np.uint8)
        _label(cell, f"{i}: {name}"[:22], (2, 2), class_colour(i), 1.0)
        cells.append(cell)
    per_row = max(1, width // 160)
    strip = np.full((24 * max(1, -(-len(cells) // per_row)), width, 3), 40, dtype=np.uint8)
    for k, cell in enumerate(cells):
        r, c = divmod(k, per_row)
        strip[r * 24 : r * 24 + 24, c * 160 : c * 160 + min(160, width)] = cell[:, : min(160, width)]
    return strip


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise LabelAnythingError(f"cannot encode {path}")
    from label_anything.app.atomic import atomic_open

    with atomic_open(path, "wb") as f:
        f.write(buf.tobytes())


def preview(dataset: Path, out_dir: Path, *, max_sheet: int = 60) -> dict[str, int | Path]:
    """Draw every image of a converted dataset into ``out_dir`` and a contact sheet ``out_dir/contact_sheet.png``.

    Returns counts (``drawn``, ``missing`` images, ``unusable`` annotations or label lines) and the sheet's path.
    """
    dataset = Path(dataset)
    stats = {"unusable": 0}
    if (dataset / "annotations" / "ann.json").is_file():
        names, items = _coco_items(dataset / "annotations" / "ann.json", stats)
    elif (dataset / "data.yaml").is_file():
        names, items = _yolo_items(dataset, stats)
    else:
        raise LabelAnythingError(
            f"{dataset} is not a converted dataset (no annotations/ann.json or data.yaml); run `convert` first"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabelAnythingError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    thumbs: list[np.ndarray] = []
    drawn = missing = 0
    for file_name, instances in items:
        try:
            image = read_image(dataset / "images" / file_name)
        except ImageError:
            missing += 1
            continue
        h, w = image.shape[:2]
        picture = draw(image, [_scaled(i, h, w) for i in instances], names)
        _write_png(out_dir / f"{Path(file_name).stem}.png", picture)
        drawn += 1
        if len(thumbs) < max_sheet:
            f = THUMB / max(h, w)
            size = (max(1, round(w * f)), max(1, round(h * f)))
            thumbs.append(cv2.resize(picture, size, interpolation=cv2.INTER_AREA))
    sheet_path = out_dir / "contact_sheet.png"
    sheet = contact_sheet(thumbs) if thumbs else np.full((THUMB, THUMB, 3), 40, np.uint8)
    _write_png(sheet_path, np.concatenate([sheet, legend(names, sheet.shape[1])]))
    return {"drawn": drawn, "missing": missing, "unusable": stats["unusable"], "sheet": sheet_path}
