"""``label-anything import-coco``: the options, and the JSON summary printed on stdout.

The work is ``label_anything.app.import_coco``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from label_anything.app.import_coco import import_into_project, read_coco_file, write_tasks
from label_anything.cli.options import env
from label_anything.errors import LabelAnythingError
from label_anything.labelstudio.client import LabelStudioClient


def add_import_coco_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything import-coco`` to the CLI's sub-commands."""
    p = subparsers.add_parser(
        "import-coco",
        help="bring a COCO file (boxes, masks) into Label Studio as tasks with predictions to review",
        description="One Label Studio task per COCO image, its boxes (rectanglelabels) and masks (brushlabels) as "
        "a prediction. --project ID|NAME creates the tasks in a project of a running Label Studio, named after "
        "that project's own RectangleLabels/BrushLabels controls (found by type and toName). --out writes an "
        "import JSON instead (or too), for a project whose label config has the control names given here "
        "(--label-config writes one).",
    )
    p.add_argument("coco", type=Path, metavar="COCO.json")
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder the file_name fields are in")
    p.add_argument("--out", type=Path, metavar="TASKS.json", help="write the tasks to this file")
    ls = p.add_argument_group("into a running Label Studio")
    ls.add_argument("--project", metavar="ID|NAME", help="create the tasks in this project (its id or exact title)")
    ls.add_argument("--label-studio-url", default=env("LABEL_STUDIO_URL"),
                    help="Label Studio's URL [env LABEL_STUDIO_URL]")
    ls.add_argument("--label-studio-api-key", default=env("LABEL_STUDIO_API_KEY"),
                    help="personal access token (or legacy token) [env LABEL_STUDIO_API_KEY]")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local-files-root", type=Path, default=env("LOCAL_FILES_DOCUMENT_ROOT"),
                       help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT: images become /data/local-files/?d=<path "
                            "relative to it>; with --project, a local-files storage of DIR is added to the project "
                            "when none covers it, so Label Studio serves them (not synced: do not sync it) "
                            "[env LOCAL_FILES_DOCUMENT_ROOT]")
    where.add_argument("--url-prefix", default="",
                       help="else: prefix put before each file_name (e.g. https://host/images/ or s3://bucket/)")
    p.add_argument("--data-key", default="image",
                   help="--out: task data key ($image in the config; default: %(default)s)")
    p.add_argument("--to-name", default="image",
                   help="name of the Image tag (with --project: when the project has several; default: %(default)s)")
    p.add_argument("--box-control", default="label", help="--out: RectangleLabels name (default: %(default)s)")
    p.add_argument("--brush-control", default="brush", help="--out: BrushLabels name (default: %(default)s)")
    p.add_argument("--label-config", type=Path, metavar="CONFIG.xml", help="--out: also write a matching label config")
    p.set_defaults(func=cmd_import_coco)
    return p


def cmd_import_coco(args: argparse.Namespace) -> int:
    if args.out is None and args.project is None:
        raise LabelAnythingError("say where the tasks go: --project ID|NAME, --out TASKS.json, or both")
    if args.project is not None and not (args.label_studio_url and args.label_studio_api_key):
        raise LabelAnythingError(
            "--project needs Label Studio's URL and an API key: --label-studio-url / LABEL_STUDIO_URL and "
            "--label-studio-api-key / LABEL_STUDIO_API_KEY"
        )
    coco = read_coco_file(args.coco)
    summary: dict[str, Any] = {}
    if args.out is not None:
        summary.update(write_tasks(coco, args.images, args.out, local_files_root=args.local_files_root,
                                   url_prefix=args.url_prefix, label_config=args.label_config,
                                   data_key=args.data_key, to_name=args.to_name, box_control=args.box_control,
                                   brush_control=args.brush_control))
    if args.project is not None:
        # one INFO line per REST call would bury the summary
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
        client = LabelStudioClient(args.label_studio_url, args.label_studio_api_key)
        try:
            summary.update(import_into_project(coco, args.images, client, args.project,
                                               local_files_root=args.local_files_root, url_prefix=args.url_prefix,
                                               to_name=args.to_name))
        finally:
            client.close()
    print(json.dumps(summary))
    return 0
