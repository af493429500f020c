"""``label-anything up``: the options. The work is ``label_anything.app.up.run_up``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from label_anything.app.up import DEMO_LABELS, FIRST_RUN_CHECKPOINT, UpOptions, run_up
from label_anything.cli.options import add_model_arguments, env, port_number
from label_anything.engine.weights import CHECKPOINTS


def add_up_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``label-anything up``."""
    p = subparsers.add_parser(
        "up",
        help="start Label Studio + the SAM backend on a folder of images, ready to label (one command)",
        description="Start Label Studio and the backend, create (or reuse) a project for the folder with a "
        "label config for the labels, import the images, connect the backend as interactive, and print "
        "the URL. Run it again on the same folder to pick up new images. Ctrl+C stops both servers. "
        "First run: with --model-name auto and no SAM checkpoint in the cache, it downloads MobileSAM "
        f"({CHECKPOINTS[FIRST_RUN_CHECKPOINT].size / 2**20:.0f} MiB, verified by size and SHA-256, once) "
        "before it starts; with --no-download, or when the download fails, it says why in one line and the "
        "backend uses the weight-free classical engine (GrabCut).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of images to label (searched recursively)")
    src.add_argument("--demo", action="store_true", help="label scikit-image demo photos (written on first use)")
    p.add_argument("--labels", default=None, metavar="A,B,...",
                   help=f"label names (default: object; with --demo {DEMO_LABELS})")
    p.add_argument("--port", type=port_number, default=env("LABEL_STUDIO_PORT", "8080"),
                   help="Label Studio's port [env LABEL_STUDIO_PORT; default: %(default)s]")
    p.add_argument("--backend-port", type=port_number, default=env("LABEL_ANYTHING_PORT", "8003"),
                   help="the backend's port [env LABEL_ANYTHING_PORT; default: %(default)s]")
    p.add_argument("--data-dir", type=Path, default=env("LABEL_ANYTHING_DATA_DIR"),
                   help="Label Studio's database, the login and the logs [env LABEL_ANYTHING_DATA_DIR; "
                        "default: ~/.local/share/label-anything]")
    p.add_argument("--username", default=env("LABEL_STUDIO_USERNAME"),
                   help="admin e-mail [env LABEL_STUDIO_USERNAME; default: generated on first run, remembered]")
    p.add_argument("--password", default=env("LABEL_STUDIO_PASSWORD"),
                   help="admin password [env LABEL_STUDIO_PASSWORD; default: generated, remembered]")
    p.add_argument("--user-token", default=env("LABEL_STUDIO_USER_TOKEN"),
                   help="admin API token (Authorization: Token ...) [env LABEL_STUDIO_USER_TOKEN; default: "
                        "generated, remembered]")
    p.add_argument("--out-poly", action=argparse.BooleanOptionalAction, default=False,
                   help="also suggest polygons (default: mask and box)")
    add_model_arguments(p)
    first = p.add_argument_group("first run")
    first.add_argument("--download", action=argparse.BooleanOptionalAction,
                       default=env("LABEL_ANYTHING_DOWNLOAD", True),
                       help="with --model-name auto and no checkpoint in the cache, download MobileSAM "
                            f"(`label-anything download {FIRST_RUN_CHECKPOINT}`) before starting; --no-download "
                            "starts the classical engine instead [env LABEL_ANYTHING_DOWNLOAD; default: on]")
    first.add_argument("--download-url", default=env("LABEL_ANYTHING_DOWNLOAD_URL"), metavar="URL",
                       help="fetch that MobileSAM file from this mirror instead (still verified) "
                            f"[env LABEL_ANYTHING_DOWNLOAD_URL; default: {CHECKPOINTS[FIRST_RUN_CHECKPOINT].url}]")
    p.set_defaults(func=cmd_up)
    return p


def up_options(args: argparse.Namespace) -> UpOptions:
    """The parsed options as ``app.up`` takes them (the same names)."""
    return UpOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(UpOptions)})


def cmd_up(args: argparse.Namespace) -> int:
    return run_up(up_options(args))
