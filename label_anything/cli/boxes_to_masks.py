"""``label-anything boxes-to-masks``: the options, and the JSON summary printed on stdout.

The work is ``label_anything.app.boxes_to_masks.boxes_to_masks``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from label_anything.app.boxes_to_masks import FORMATS, SCORE_FIELD, BoxesReport, boxes_to_masks
from label_anything.app.model_options import ModelOptions
from label_anything.app.ray_pool import PoolOptions
from label_anything.cli.options import add_model_arguments, add_ray_arguments, finite_float, load_model_from_args

COMMAND = "boxes-to-masks"


def add_boxes_to_masks_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything boxes-to-masks`` to the CLI's sub-commands."""
    p = subparsers.add_parser(
        COMMAND,
        help="add a mask to every box of a COCO file (the box as the prompt)",
        description="Segment every box annotation of a COCO file: adds 'segmentation' (RLE or polygons), "
        f"'area' (mask pixels) and '{SCORE_FIELD}' (predicted IoU); keeps every other field. Each image is "
        "encoded once for all its boxes. Boxes that cannot be segmented are left untouched and counted by "
        "reason. Resumable: progress is kept in OUT.partial.jsonl until OUT is written. Needs a SAM "
        "checkpoint, or --model-name classical for GrabCut.",
    )
    p.add_argument("coco", type=Path, metavar="COCO.json", help="COCO instances file with bbox annotations")
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder the file_name fields are in")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.json", help="COCO file to write")
    p.add_argument("--format", choices=FORMATS, default="rle", help="segmentation format (default: %(default)s)")
    p.add_argument("--min-score", type=finite_float, default=0.0, metavar="F",
                   help=f"report masks whose {SCORE_FIELD} is under F (they are still written; default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_model_arguments(p)
    add_ray_arguments(p)
    p.set_defaults(func=cmd_boxes_to_masks)
    return p


def cmd_boxes_to_masks(args: argparse.Namespace) -> int:
    model_options = ModelOptions.of(vars(args))
    model_options.refuse_grabcut_fallback(COMMAND)
    run = dict(fmt=args.format, min_score=args.min_score, progress=args.progress)
    if args.ray_address:
        from label_anything.app.ray_pool import ray_pool

        pool_options = PoolOptions(args.ray_address, args.ray_workers, args.ray_gpus_per_worker,
                                   args.ray_cpus_per_worker)
        with ray_pool(pool_options, model_options.for_worker()) as pool:
            model_id = pool.model_id
            model_options.refuse_classical_model(COMMAND, model_id.split("-", 1)[0])
            report = boxes_to_masks(None, args.coco, args.images, args.out, pool=pool, **run)
    else:
        model = load_model_from_args(args)
        model_options.refuse_classical_model(COMMAND, model.info.name)
        model_id = model.info.model_id
        report = boxes_to_masks(model, args.coco, args.images, args.out, **run)
    print(json.dumps(summary(report, model_id, args.out, ray=bool(args.ray_address))))
    # Boxes were given and not one could be segmented: most likely a wrong --images folder or COCO file.
    return 1 if report.skipped and not (report.boxes_done or report.boxes_resumed) else 0


def summary(report: BoxesReport, model_id: str, out: Path, *, ray: bool) -> dict:
    """The one JSON line the command prints."""
    result = {
        "model": model_id,
        "out": str(out),
        "images": report.images_done,
        "images_resumed": report.images_skipped,
        "boxes": report.boxes_done,
        "boxes_resumed": report.boxes_resumed,
        "skipped": dict(report.skipped),
        "images_as_stored": len(report.as_stored),
        "low_score": report.low_score,
        "failed": report.failed,
        "images_per_s": round(report.images_per_s, 3),
        "boxes_per_s": round(report.boxes_per_s, 3),
    }
    if ray:
        result["ray_workers"] = report.workers  # images done by each worker (host:pid)
    return result
