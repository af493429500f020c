"""The ``label-anything`` command line. Each sub-command is a thin layer over a library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from label_anything import __version__
from label_anything.cli.options import (
    Parser,
    add_concept_threshold_argument,
    add_model_arguments,
    env,
    load_model_from_args,
    positive_int,
    print_error,
)
from label_anything.errors import LabelAnythingError

__all__ = ["add_model_arguments", "build_parser", "load_model_from_args", "main", "positive_int"]

log = logging.getLogger("label_anything")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


# -- segment -----------------------------------------------------------------------------------------
def _point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1]), 1
        if len(parts) == 3 and parts[2].strip() in ("0", "1"):
            return float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"a point is X,Y or X,Y,1 (positive) or X,Y,0 (negative); got {text!r}")


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a box is X0,Y0,X1,Y1 in pixels; got {text!r}") from None
    return x0, y0, x1, y1


def _exemplar(text: str) -> tuple[float, float, float, float, bool]:
    parts = text.split(",")
    label = True
    if len(parts) == 5 and parts[4].strip() in ("0", "1"):
        label = parts.pop().strip() == "1"
    try:
        x0, y0, x1, y1 = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"an exemplar is X0,Y0,X1,Y1 in pixels, or X0,Y0,X1,Y1,0 for a counter-example; got {text!r}"
        ) from None
    return x0, y0, x1, y1, label


def cmd_segment(args: argparse.Namespace) -> int:
    from label_anything.imaging.decode import read_image

    if args.demo:
        image, args.point, args.box = _demo_image(args)
    elif args.image is None:
        raise LabelAnythingError("give an IMAGE to segment (or --demo)")
    else:
        image = read_image(args.image)
    concept = args.concept is not None or bool(args.exemplar)
    if concept and (args.point or args.box is not None):
        raise LabelAnythingError("--concept/--exemplar find every instance; --point/--box segment one object: "
                                 "give one kind of prompt")
    if not concept and not args.point and args.box is None:
        raise LabelAnythingError("give at least one --point X,Y or a --box X0,Y0,X1,Y1 (or, with SAM 3, a "
                                 "--concept PHRASE)")
    _check_inside(image, args.point, args.box)
    for x0, y0, x1, y1, _ in args.exemplar:
        _check_inside(image, [], (x0, y0, x1, y1), flag="--exemplar")
    model = load_model_from_args(args)
    if concept:
        _require_concepts(model)  # before the encoder: seconds spent on a refusal otherwise
    embedding = _embedding(model, image, args)
    if concept:
        return _segment_instances(model, embedding, image, args)
    return _segment_one(model, embedding, image, args)


def _embedding(model, image, args: argparse.Namespace):
    """The image's embedding, from the disk cache that serve and precompute fill (CACHE_DIR/embeddings) when
    it is there, else encoded (and kept there for the next run, unless --cache-disk-gb 0)."""
    from label_anything.engine import encode
    from label_anything.engine.cache import EmbeddingCache, cache_key
    from label_anything.engine.weights import default_cache_dir
    from label_anything.imaging.decode import image_digest

    if model.info.name == "classical" or float(args.cache_disk_gb) <= 0:
        return encode(model, image)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    cache = EmbeddingCache(disk_dir=cache_dir / "embeddings", max_disk_bytes=int(float(args.cache_disk_gb) * 2**30))
    digest = image_digest(image)
    return cache.get_or_compute(cache_key(model.info.model_id, digest), lambda: encode(model, image, digest))


def _segment_one(model, embedding, image, args: argparse.Namespace) -> int:
    from label_anything.engine import Prompt, decode

    prompt = Prompt.from_lists(points=[(x, y) for x, y, _ in args.point], labels=[v for _, _, v in args.point],
                               box=args.box)
    mask, score, _ = decode(model, embedding, prompt).best()
    out = Path(args.out)
    found = _write_mask(mask, out, score)
    result = {**found, "model": model.info.model_id}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {out} ({image.shape[1]}x{image.shape[0]}, {found['area']} mask pixels, score {score:.3f}, "
              f"model {model.info.model_id})")
    return 0


def _segment_instances(model, embedding, image, args: argparse.Namespace) -> int:
    """Every instance of --concept / --exemplar: one PNG per instance, ``<out>-<k>.png``, best score first."""
    from label_anything.engine.concepts import ConceptPrompt

    prompt = ConceptPrompt.from_lists(
        text=args.concept,
        boxes=[e[:4] for e in args.exemplar],
        labels=[e[4] for e in args.exemplar],
        threshold=args.concept_threshold,
    )
    instances = model.find_instances(embedding, prompt)
    out = Path(args.out)
    found = []
    for k in range(len(instances)):
        path = out.with_name(f"{out.stem}-{k + 1}{out.suffix or '.png'}")
        found.append(_write_mask(instances.masks[k], path, float(instances.scores[k])))
    what = repr(prompt.text) if prompt.text else f"{len(prompt.boxes)} exemplar box(es)"
    if args.json:
        print(json.dumps({"concept": prompt.text, "instances": found, "model": model.info.model_id}))
    else:
        print(f"{len(found)} instance(s) of {what} above score {prompt.threshold:g} "
              f"({image.shape[1]}x{image.shape[0]}, model {model.info.model_id})")
        for item in found:
            print(f"  {item['mask']}  score {item['score']:.3f}  bbox {[round(v, 1) for v in item['bbox']]}  "
                  f"{item['area']} px")
    return 0


def _require_concepts(model) -> None:
    from label_anything.engine.concepts import answers_concepts

    if not answers_concepts(model):
        raise LabelAnythingError(f"--concept/--exemplar need SAM 3 (--model-name sam3); {model.info.name} "
                                 "segments one object per --point/--box")


def _write_mask(mask, out: Path, score: float) -> dict:
    """Save a 0/255 PNG; its score, tight COCO bbox [x, y, w, h] and area."""
    import numpy as np
    from PIL import Image

    from label_anything.geometry.masks import mask_area, mask_to_xyxy

    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out)
    area = mask_area(mask)
    if area:
        x0, y0, x1, y1 = (float(v) for v in mask_to_xyxy(mask))
        bbox = [x0, y0, x1 - x0, y1 - y0]
    else:
        bbox = [0.0, 0.0, 0.0, 0.0]
    return {"score": round(score, 6), "bbox": bbox, "area": area, "mask": str(out)}


def _check_inside(image, points: list[tuple[float, float, int]], box: tuple[float, ...] | None,
                  flag: str = "--box") -> None:
    """A click off the image, or a box beside it, is a typo: SAM would answer it with an empty mask."""
    height, width = image.shape[:2]
    for x, y, _ in points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise LabelAnythingError(f"--point {x:g},{y:g} is outside the {width}x{height} image")
    if box is not None and (box[0] >= width or box[1] >= height or box[2] <= 0 or box[3] <= 0):
        raise LabelAnythingError(f"{flag} {','.join(f'{v:g}' for v in box)} does not overlap the {width}x{height} "
                                 "image")


def _demo_image(args: argparse.Namespace):
    """Chelsea the cat from scikit-image, clicked on her head."""
    try:
        import skimage.data
    except ImportError:
        raise LabelAnythingError("--demo needs scikit-image (pip install scikit-image)") from None
    image = skimage.data.chelsea()
    if args.out == "mask.png":
        args.out = "demo-out/chelsea-mask.png"
    return image, args.point or [(270.0, 150.0, 1)], args.box


# -- download / models -------------------------------------------------------------------------------
def cmd_download(args: argparse.Namespace) -> int:
    from label_anything.engine.weights import CHECKPOINTS, download

    names = list(CHECKPOINTS) if args.name == ["all"] else args.name
    unknown = [n for n in names if n not in CHECKPOINTS]
    if unknown:
        raise LabelAnythingError(f"unknown checkpoint {unknown[0]!r}; choose from: {', '.join(CHECKPOINTS)} or all")
    if args.log_level != "DEBUG":  # a line per request (and per redirect) otherwise; a failure is one line
        logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in names:
        path = download(CHECKPOINTS[name], args.cache_dir, url=args.url)
        print(f"{name}: {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from label_anything.engine.weights import CHECKPOINTS, checkpoint_dir

    folder = checkpoint_dir(args.cache_dir)
    print(f"checkpoints in {folder}:")
    for spec in CHECKPOINTS.values():
        have = "yes" if (folder / spec.filename).is_file() else "no "
        gated = f"  (gated: accept the licence at {spec.gate.page}, set HF_TOKEN)" if spec.gate else ""
        print(f"  {have}  {spec.name:22} --model-name {spec.model:10} --sam-config {spec.config:9} "
              f"{spec.size / 2**20:7.0f} MiB  {spec.url}{gated}")
    print(f"  yes  {'classical':22} --model-name classical  (no weights: OpenCV GrabCut)")
    return 0


# -- parser ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="label-anything",
        description="Segment Anything models do the tedious part of image labeling: click once in Label "
                    "Studio, get the object's mask, box and polygon; export COCO with exact RLE masks.",
    )
    parser.add_argument("--version", action="version", version=f"label-anything {__version__}")
    parser.add_argument("--log-level", type=str.upper, default=env("LABEL_ANYTHING_LOG_LEVEL", "INFO"),
                        choices=LOG_LEVELS, metavar="LEVEL",
                        help="DEBUG, INFO, WARNING or ERROR, any case; DEBUG also prints the traceback of an "
                             "internal error [env LABEL_ANYTHING_LOG_LEVEL; default: %(default)s]")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser("segment", help="segment one object from points and/or a box, or (SAM 3) every "
                                         "instance of a concept",
                         description="Segment one object: writes a 0/255 PNG mask of the image's size. With "
                                     "--model-name sam3 and --concept and/or --exemplar: every instance, one PNG "
                                     "each (OUT-1.png, OUT-2.png, ... best score first). The image's embedding "
                                     "is kept in the disk cache (CACHE_DIR/embeddings, as serve and precompute "
                                     "keep it), so the next prompt on the same image skips the encoder.")
    seg.add_argument("image", nargs="?", help="image file (JPEG, PNG, ...); EXIF orientation is applied")
    seg.add_argument("--point", type=_point, action="append", default=[], metavar="X,Y[,1|0]",
                     help="a click in pixels; ,1 (default) on the object, ,0 not on it; repeat for more")
    seg.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="a box around the object, in pixels")
    seg.add_argument("--concept", metavar="PHRASE",
                     help='SAM 3: a short noun phrase ("cat", "red car"): every instance of it')
    seg.add_argument("--exemplar", type=_exemplar, action="append", default=[], metavar="X0,Y0,X1,Y1[,1|0]",
                     help="SAM 3: a box around one example of the concept (,0: around something that is not); "
                          "alone or with --concept; repeat for more")
    add_concept_threshold_argument(seg, "SAM 3: keep the instances")
    seg.add_argument("--out", default="mask.png", help="mask PNG to write (default: %(default)s)")
    seg.add_argument("--json", action="store_true", help='print {"score", "bbox": [x, y, w, h], "area"} on stdout')
    seg.add_argument("--demo", action="store_true", help="segment the cat in scikit-image's 'chelsea' photo")
    add_model_arguments(seg)
    seg.set_defaults(func=cmd_segment)

    dl = sub.add_parser("download", help="download official checkpoints into the cache (verified)",
                        description="Download official checkpoints with a progress bar; verifies size and "
                                    "SHA-256 and never leaves a partial file.")
    dl.add_argument("name", nargs="+", help="checkpoint name(s) from `label-anything models`, or all; gated ones "
                                            "(sam3) read a Hugging Face token from HF_TOKEN")
    dl.add_argument("--cache-dir", type=Path, default=env("LABEL_ANYTHING_CACHE"),
                    help="default: ~/.cache/label-anything")
    dl.add_argument("--url", help="fetch from this mirror URL instead of the official one (still verified; "
                                  "HF_TOKEN goes to the official host only)")
    dl.set_defaults(func=cmd_download)

    ls = sub.add_parser("models", help="list the official checkpoints and which ones are downloaded")
    ls.add_argument("--cache-dir", type=Path, default=env("LABEL_ANYTHING_CACHE"),
                    help="default: ~/.cache/label-anything [env LABEL_ANYTHING_CACHE]")
    ls.set_defaults(func=cmd_models)

    from label_anything.cli.bench import add_bench_parser
    from label_anything.cli.boxes_to_masks import add_boxes_to_masks_parser
    from label_anything.cli.concepts_to_masks import add_concepts_to_masks_parser
    from label_anything.cli.convert import add_convert_parser, add_preview_parser
    from label_anything.cli.import_coco import add_import_coco_parser
    from label_anything.cli.precompute import add_precompute_parser
    from label_anything.cli.serve import add_serve_parser
    from label_anything.cli.up import add_up_parser

    for add in (add_serve_parser, add_up_parser, add_convert_parser, add_preview_parser, add_precompute_parser,
                add_bench_parser, add_boxes_to_masks_parser, add_concepts_to_masks_parser, add_import_coco_parser):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A user mistake is one line on stderr and exit 2; an internal error (a bug) is one
    line and exit 1, with its traceback only under ``--log-level DEBUG``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LabelAnythingError as exc:
        print_error(str(exc))
        return 2
    except OSError as exc:  # a file the user named cannot be read or written, a full disk, a port in use...
        where = f": {exc.filename}" if exc.filename else ""
        print_error(f"{exc.strerror or exc}{where}")
        return 2
    except KeyboardInterrupt:
        print("label-anything: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.log_level == "DEBUG":
            traceback.print_exc()
        print(f"label-anything: internal error: {type(exc).__name__}: {exc} (a bug: please report it; "
              "--log-level DEBUG shows where it happened)", file=sys.stderr)
        return 1
