"""The ``convert`` and ``preview`` sub-commands (argparse), and stand-alone entry points for them."""

from __future__ import annotations

import argparse
from pathlib import Path

from label_anything.app.convert.dataset import FORMATS, convert
from label_anything.app.convert.images import ImageLocator
from label_anything.app.convert.mmdet import TEMPLATES
from label_anything.cli.options import add_image_host_arguments, allowed_image_hosts, non_negative_float
from label_anything.errors import LabelAnythingError


def _class_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--classes needs at least one name, e.g. cat,dog")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--classes has a name twice: {text!r}")
    return names


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--val-ratio is a number between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"--val-ratio is a number between 0 and 1 (exclusive), got {text!r}")
    return value


def add_convert_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``convert``: Label Studio JSON export → COCO (RLE or polygons) or YOLO-seg dataset."""
    p = subparsers.add_parser(
        "convert",
        help="Label Studio JSON export → COCO (RLE / polygons) or YOLO-seg dataset, images gathered",
        description="Convert a Label Studio JSON export into a dataset folder: annotations, the images found, "
                    "optionally a train/val split and an MMDetection config. Prints what was not converted "
                    "and the class list. COCO ann.json holds masks only; box-only regions go to "
                    "annotations/boxes.json (see --skip-boxes, --boxes-as-masks). Photos with an EXIF "
                    "orientation are written upright.",
    )
    p.add_argument("export", type=Path, help="the project's JSON export (Export → JSON in Label Studio)")
    p.add_argument("--to", dest="fmt", choices=FORMATS, default="coco-rle", help="default: %(default)s")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--images-root", type=Path,
                   help="folder holding the images (searched first: by upload path, by file name)")
    p.add_argument("--classes", type=_class_list, metavar="A,B,...",
                   help="class list in category-id order; regions with other labels are not converted")
    p.add_argument("--label-config", type=Path, metavar="FILE",
                   help="the project's label config XML: class order and image key (default: order of first "
                        "appearance)")
    p.add_argument("--image-key", help="task data key of the image (default: from the label config, else 'image')")
    p.add_argument("--val-ratio", type=_ratio, metavar="F", help="hold out this fraction of images as val")
    p.add_argument("--mmdet-config", choices=sorted(TEMPLATES), help="also write an MMDetection 3.x config")
    boxes = p.add_mutually_exclusive_group()
    boxes.add_argument("--skip-boxes", action="store_true",
                       help="leave box-only (rectanglelabels) regions out. By default COCO formats write them to "
                            "annotations/boxes.json (a detection file; ann.json holds masks only, so that every "
                            "annotation has a mask to train on) and yolo-seg counts them as not converted")
    boxes.add_argument("--boxes-as-masks", action="store_true",
                       help="write a box-only region as a mask: the filled rectangle, in ann.json / the labels")
    p.add_argument("--keep-duplicates", dest="merge_suggestions", action="store_false",
                   help="keep the brush mask, box and polygons of one smart-click answer as separate annotations "
                        "(by default the regions whose ids mark them as one answer are one object; regions "
                        "drawn by hand are never merged)")
    p.add_argument("--all-annotations", action="store_true",
                   help="convert every non-cancelled annotation of a task (default: the newest one)")
    p.add_argument("--strict", action="store_true", help="fail (writing no annotation file) if anything is lost")
    p.add_argument("--no-copy-images", dest="copy_images", action="store_false",
                   help="do not copy images into OUT/images")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="never fetch images over http(s), only look on disk")
    add_image_host_arguments(p, max_pixels=False)
    p.add_argument("--polygon-tolerance", type=non_negative_float, default=1.0, metavar="PX",
                   help="simplification of traced masks, pixels (0 = exact outline) (default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_convert)
    return p


def add_preview_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``preview``: draw a converted dataset's masks, boxes and labels, plus a contact sheet."""
    p = subparsers.add_parser(
        "preview",
        help="draw every image of a converted dataset with its masks, boxes and labels, and a contact sheet",
    )
    p.add_argument("dataset", type=Path, help="a folder written by `convert`")
    p.add_argument("--out", type=Path, required=True, help="folder for the pictures")
    p.set_defaults(func=cmd_preview)
    return p


def _config_labels(path: Path | None) -> tuple[list[str], str | None]:
    if path is None:
        return [], None
    from label_anything.labelstudio.config import OUTPUT_TYPES, parse_label_config

    try:
        xml = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LabelAnythingError(f"cannot read --label-config {path}: {exc.strerror or exc}") from None
    config = parse_label_config(xml)
    labels: list[str] = []
    for control in config.controls:
        if control.type in OUTPUT_TYPES or control.type == "labels":
            labels += [name for name in control.labels if name not in labels]
    image_key = next(iter(config.images.values()), None)
    return labels, image_key


def cmd_convert(args: argparse.Namespace) -> int:
    labels, config_key = _config_labels(args.label_config)
    locator = ImageLocator(args.images_root, download=args.download, allowed_hosts=allowed_image_hosts(args))
    try:
        result = convert(
            args.export, args.out, fmt=args.fmt, locator=locator, classes=args.classes or (),
            config_labels=labels, image_key=args.image_key or config_key, val_ratio=args.val_ratio,
            mmdet_config=args.mmdet_config, skip_boxes=args.skip_boxes, boxes_as_masks=args.boxes_as_masks,
            merge_suggestions=args.merge_suggestions, all_annotations=args.all_annotations,
            strict=args.strict, copy_images=args.copy_images, tolerance=args.polygon_tolerance,
            progress=args.progress,
        )
    finally:
        locator.close()
    print(result.summary())
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from label_anything.app.convert.preview import preview

    info = preview(args.dataset, args.out)
    missing = f", {info['missing']} images missing" if info["missing"] else ""
    unusable = f", {info['unusable']} annotations that cannot be drawn" if info["unusable"] else ""
    print(f"drew {info['drawn']} images into {args.out}{missing}{unusable}; contact sheet: {info['sheet']}")
    return 0
