"""Label Studio JSON export → dataset folder (COCO RLE / COCO polygons / YOLO-seg), streamed task by task.

Output::

    DIR/images/<file name>             every image found (URL-decoded original names; EXIF-rotated ones upright)
    DIR/annotations/ann.json           COCO, masks only (+ train.json / val.json with a split)
    DIR/annotations/boxes.json         COCO detection file of the box-only regions (when there are any)
    DIR/labels/<stem>.txt, data.yaml   YOLO-seg (+ train.txt / val.txt with a split)
    DIR/<model>_custom.py              MMDetection config (--mmdet-config)

The split is deterministic: images are ordered by a hash of their file name and the first
``round(n × ratio)`` go to validation, so the same export always splits the same way and adding tasks
moves few images.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from label_anything.app.convert.coco import BOXES_FILE, CocoWriter
from label_anything.app.convert.images import (
    UNREADABLE,
    ImageLocator,
    ImageSource,
    copy_image,
    image_size,
    unique_file_name,
)
from label_anything.app.convert.mmdet import write_config
from label_anything.app.convert.yolo import YoloWriter
from label_anything.errors import ImageError, LabelAnythingError
from label_anything.labelstudio.regions import (
    Region,
    count_regions,
    merge_suggestion_duplicates,
    parse_regions,
    task_size,
)
from label_anything.labelstudio.tally import Tally
from label_anything.labelstudio.tasks import choose_annotations, count_predictions, image_reference, iter_tasks

Format = Literal["coco-rle", "coco-polygon", "yolo-seg"]
FORMATS: tuple[str, ...] = ("coco-rle", "coco-polygon", "yolo-seg")
BOX_TO_DETECTION_FILE = f"box-only region (no mask): written to annotations/{BOXES_FILE}"
BOX_NOT_IN_YOLO = "box-only region (no mask): YOLO-seg has no box lines (use --boxes-as-masks or --skip-boxes)"
SIZE_DIFFERS = "image whose file size differs from original_width/height of its regions"
NO_SIZE = "task without a size (no readable image, no region with original_width/height)"


class StrictError(LabelAnythingError):
    """``--strict`` and some regions or images could not be converted."""


class Classes:
    """Class names → 1-based category ids: a fixed list, or grown in order of first appearance.

    Args:
        names: the known classes in order (``--classes`` or the label config).
        fixed: when True, a label outside ``names`` is refused; else it is appended.
    """

    def __init__(self, names: Sequence[str] = (), *, fixed: bool = False) -> None:
        self.names: list[str] = []
        self._ids: dict[str, int] = {}
        for name in names:
            self.id_of(name)
        self.fixed = fixed and bool(names)

    def id_of(self, name: str, *, grow: bool = True) -> int | None:
        """1-based id of ``name``; None when the list is fixed and does not hold it."""
        if name not in self._ids:
            if not grow:
                return None
            self.names.append(name)
            self._ids[name] = len(self.names)
        return self._ids[name]

    def lookup(self, name: str) -> int | None:
        return self.id_of(name, grow=not self.fixed)


@dataclass
class ConvertResult:
    """What ``convert`` did."""

    out_dir: Path
    classes: list[str]
    n_tasks: int = 0
    n_images: int = 0
    n_images_copied: int = 0
    n_images_upright: int = 0
    n_annotations: int = 0
    files: list[Path] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    splits: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> str:
        """The report printed at the end: counts, losses by reason, files, and the class list."""
        lines = [
            f"converted {self.n_tasks} tasks: {self.n_images} images ({self.n_images_copied} copied to "
            f"{self.out_dir / 'images'}), {self.n_annotations} annotations",
        ]
        if self.n_images_upright:
            lines.append(f"  {self.n_images_upright} images written upright (EXIF orientation applied)")
        if self.splits:
            lines.append("split: " + ", ".join(f"{k} {len(v)} images" for k, v in self.splits.items()))
        lines += self.tally.lines() or ["  every region was converted"]
        lines += [f"wrote {p}" for p in self.files]
        lines.append(f"classes ({len(self.classes)}, in category-id order):")
        lines.append(f"classes = {tuple(self.classes)!r}")
        return "\n".join(lines)


def split_ids(keys: dict[int, str], val_ratio: float) -> dict[str, list[int]]:
    """Deterministic train/val split of image ids by a hash of their key (file name).

    At least one image goes to each side when there are two or more and ``0 < val_ratio < 1``.
    """
    if not 0.0 < val_ratio < 1.0:
        raise LabelAnythingError(f"--val-ratio must be between 0 and 1 (exclusive), got {val_ratio}")
    order = sorted(keys, key=lambda i: (hashlib.sha1(keys[i].encode()).hexdigest(), i))
    n_val = round(len(order) * val_ratio)
    if len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    val = set(order[:n_val])
    return {"train": [i for i in keys if i not in val], "val": [i for i in keys if i in val]}


def convert(
    export: Path,
    out_dir: Path,
    *,
    fmt: str = "coco-rle",
    locator: ImageLocator | None = None,
    classes: Sequence[str] = (),
    config_labels: Sequence[str] = (),
    image_key: str | None = None,
    val_ratio: float | None = None,
    mmdet_config: str | None = None,
    skip_boxes: bool = False,
    boxes_as_masks: bool = False,
    merge_suggestions: bool = True,
    all_annotations: bool = False,
    strict: bool = False,
    copy_images: bool = True,
    tolerance: float = 1.0,
    progress: bool = True,
) -> ConvertResult:
    """Convert a Label Studio JSON export into a dataset folder.

    Args:
        export: the export file.
        out_dir: the dataset folder (created).
        fmt: ``coco-rle``, ``coco-polygon`` or ``yolo-seg``.
        locator: finds the images (default: from the environment, no ``--images-root``).
        classes: ``--classes``: the class list, in order; other labels are not converted (counted).
        config_labels: labels of the label config, in order; labels not in it are appended.
        image_key: the task data key of the image (default: the label config's, else ``image``).
        val_ratio: fraction of images for validation (None: no split).
        mmdet_config: write an MMDetection config for this model (COCO formats only).
        skip_boxes: leave box-only regions out (counted as skipped). Otherwise they go to
            ``annotations/boxes.json`` (COCO formats; counted as skipped) or are counted as not converted
            (YOLO-seg), unless ``boxes_as_masks``.
        boxes_as_masks: write a box-only region as a mask of its rectangle.
        merge_suggestions: one object per smart-click answer: the brush mask, box and polygons whose ids
            mark them as one answer become one annotation (see ``merge_suggestion_duplicates``).
        all_annotations: convert every non-cancelled annotation of a task, not only the newest.
        strict: raise ``StrictError`` (writing no annotation file) when anything was not converted.
        copy_images: copy the images found into ``out_dir/images``.
        tolerance: polygon simplification in pixels for traced brush masks.
        progress: show a tqdm progress bar (by bytes of the export) on stderr.

    Raises:
        LabelAnythingError: bad arguments or export, or ``StrictError``.
    """
    if fmt not in FORMATS:
        raise LabelAnythingError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if mmdet_config and fmt == "yolo-seg":
        raise LabelAnythingError("--mmdet-config needs a COCO format (--to coco-rle or coco-polygon), not yolo-seg")
    if skip_boxes and boxes_as_masks:
        raise LabelAnythingError("--skip-boxes and --boxes-as-masks contradict each other: choose one")
    if val_ratio is not None:
        split_ids({}, val_ratio)  # validate before any work
    export = Path(export)
    if not export.is_file():
        raise LabelAnythingError(f"the export {export} does not exist; export the project from Label Studio as JSON")
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabelAnythingError(f"cannot create the dataset folder {images_dir}: {exc.strerror or exc}") from None
    own_locator = locator is None
    locator = locator or ImageLocator()
    cls = Classes(classes, fixed=True) if classes else Classes(config_labels)
    writer: CocoWriter | YoloWriter
    if fmt == "yolo-seg":
        writer = YoloWriter(out_dir, tolerance=tolerance)
    else:
        writer = CocoWriter(out_dir, "rle" if fmt == "coco-rle" else "polygon", tolerance=tolerance)
    result = ConvertResult(out_dir=out_dir, classes=cls.names)
    tally = result.tally
    keys: dict[int, str] = {}
    taken: dict[str, str] = {}
    bar = tqdm(total=export.stat().st_size, unit="B", unit_scale=True, desc="convert", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        for index, task in enumerate(iter_tasks(export, on_read=bar.update)):
            result.n_tasks += 1
            _convert_task(task, index, result=result, writer=writer, locator=locator, cls=cls, keys=keys,
                          taken=taken, images_dir=images_dir, image_key=image_key,
                          options=_Options(skip_boxes, boxes_as_masks, merge_suggestions, all_annotations,
                                           copy_images))
            if result.n_tasks % 256 == 0:
                bar.set_postfix(tasks=result.n_tasks, refresh=False)
        bar.set_postfix(tasks=result.n_tasks)
        if strict and tally.losses():
            losses = {**tally.images_dropped, **tally.dropped}
            raise StrictError(
                f"--strict: {tally.losses()} regions or images could not be converted "
                f"({'; '.join(f'{n} × {r}' for r, n in losses.items())}); no annotation file was written"
            )
        splits = split_ids(keys, val_ratio) if val_ratio is not None else {}
        result.splits = splits
        result.files = writer.finish(cls.names, {k: set(v) for k, v in splits.items()} if splits else None)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
        if own_locator:
            locator.close()
    result.n_images, result.n_annotations = writer.n_images, writer.n_annotations
    if mmdet_config:
        train_ann, val_ann = ("annotations/train.json", "annotations/val.json") if splits else (
            "annotations/ann.json",
            "annotations/ann.json",
        )
        path = out_dir / f"{mmdet_config}_custom.py"
        result.files.append(write_config(path, mmdet_config, cls.names, out_dir, train_ann=train_ann,
                                         val_ann=val_ann, split=bool(splits)))
    return result


@dataclass(frozen=True)
class _Options:
    skip_boxes: bool
    boxes_as_masks: bool
    merge_suggestions: bool
    all_annotations: bool
    copy_images: bool


def _task_id(raw_id: Any, keys: dict[int, str]) -> int:
    # COCO ids are 64-bit ints in most loaders; anything else (or a repeated id) gets a fresh one.
    if isinstance(raw_id, int) and not isinstance(raw_id, bool) and 0 <= raw_id < 2**63 and raw_id not in keys:
        return raw_id
    return max(keys, default=0) + 1


def _image_size(source: ImageSource | None, task: dict[str, Any], tally: Tally, where: str) -> \
        tuple[ImageSource | None, tuple[int, int] | None, tuple[int, int] | None]:
    """(the source if it is a readable image, its size as shown, the regions' size)."""
    file_size = image_size(source) if source is not None else None
    if source is not None and file_size is None:
        tally.drop_image(UNREADABLE, where)
        source = None
    return source, file_size, task_size(task)


def _convert_task(
    task: dict[str, Any],
    index: int,
    *,
    result: ConvertResult,
    writer: CocoWriter | YoloWriter,
    locator: ImageLocator,
    cls: Classes,
    keys: dict[int, str],
    taken: dict[str, str],
    images_dir: Path,
    image_key: str | None,
    options: _Options,
) -> None:
    tally = result.tally
    raw_id = task.get("id")
    where = f"task {raw_id if isinstance(raw_id, int | str) else index}"[:80]
    annotations = choose_annotations(task, all_annotations=options.all_annotations, tally=tally)
    count_predictions(task, tally)
    n_regions = sum(count_regions(a.get("result")) for a in annotations)
    ref = image_reference(task, image_key)
    if ref is None:
        tally.drop_image("task without an image reference in its data", where)
        tally.drop("region of a task without an image reference in its data", where, n=n_regions)
        return
    task_id = _task_id(raw_id, keys)
    found = locator.find(ref)
    if isinstance(found, str):
        tally.drop_image(found, f"{where}: {ref[:200]}")
    source, file_size, size = _image_size(found if isinstance(found, ImageSource) else None, task, tally,
                                          f"{where}: {ref[:200]}")
    if size is not None and file_size is not None and file_size != size:
        # The regions' pixels are relative to original_width/height: on this file they would be wrong.
        tally.drop_image(SIZE_DIFFERS, f"{where}: file {file_size[0]}x{file_size[1]}, regions {size[0]}x{size[1]}")
        tally.drop(f"region of an {SIZE_DIFFERS}", where, n=n_regions)
        return
    size = size or file_size
    if size is None:
        tally.drop_image(NO_SIZE, f"{where}: {ref[:200]}")
        tally.drop(f"region of a {NO_SIZE}", where, n=n_regions)
        return
    file_name = unique_file_name(ref, task_id, taken)
    if source is not None and options.copy_images:
        try:
            result.n_images_upright += copy_image(source, images_dir / file_name)
            result.n_images_copied += 1
        except ImageError as exc:
            tally.drop_image("image with an EXIF orientation that cannot be written upright (not copied)",
                             f"{where}: {exc}")
    keys[task_id] = file_name
    writer.add_image(task_id, file_name, *size)
    for annotation in annotations:
        regions = list(parse_regions(annotation, tally, where))
        if options.merge_suggestions:
            regions = merge_suggestion_duplicates(regions, tally)
        for region in regions:
            _add_region(region, task_id, size, writer=writer, cls=cls, tally=tally, where=where, options=options)


def _add_region(region: Region, task_id: int, size: tuple[int, int], *, writer: CocoWriter | YoloWriter,
                cls: Classes, tally: Tally, where: str, options: _Options) -> None:
    if region.box_only and options.skip_boxes:
        tally.skip("box-only region (--skip-boxes)")
        return
    if (region.width, region.height) != size:
        tally.drop("region whose original size differs from its image's",
                   f"{where}: {region.width}x{region.height} vs {size[0]}x{size[1]}")
        return
    category_id = cls.lookup(region.label)
    if category_id is None:
        tally.drop("label not in --classes", f"{where}: {region.label[:80]!r}")
        return
    if region.box_only and options.boxes_as_masks:
        region = region.with_box_as_mask()
    if region.box_only:
        if isinstance(writer, CocoWriter):
            writer.add_box(task_id, region, category_id)
            tally.skip(BOX_TO_DETECTION_FILE)
        else:
            tally.drop(BOX_NOT_IN_YOLO, where)
        return
    if not writer.add_region(task_id, region, category_id):
        tally.drop(f"{region.kind} region that covers no pixel", where)
