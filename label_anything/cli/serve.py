"""``label-anything serve``: its options, the backend they describe, and the uvicorn process hand-off.

With ``--workers 1`` (the default) the app runs in this process. With ``--workers N`` the parsed options go
to the worker processes uvicorn spawns as JSON in ``LABEL_ANYTHING_SERVE_OPTIONS``, and each worker builds
its own backend in ``worker_app`` (uvicorn's factory ``label_anything.cli.serve:worker_app``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from starlette.applications import Starlette

from label_anything.app.concepts import ConceptOptions
from label_anything.app.interactive import Backend, ServeOptions
from label_anything.cli.options import (
    add_cache_url_arguments,
    add_concept_threshold_argument,
    add_image_host_arguments,
    add_model_arguments,
    allowed_image_hosts,
    concept_map,
    env,
    load_model_from_args,
    non_negative_float,
    port_number,
    positive_int,
    shared_level_from_args,
)
from label_anything.engine.cache import EmbeddingCache
from label_anything.engine.concepts import DEFAULT_CONCEPT_THRESHOLD
from label_anything.errors import LabelAnythingError
from label_anything.imaging.fetch import ImageFetcher
from label_anything.labelstudio.results import OutputOptions
from label_anything.server.http import create_app

log = logging.getLogger("label_anything.server")

WORKERS_ENV = "LABEL_ANYTHING_WORKERS"
WORKER_OPTIONS_ENV = "LABEL_ANYTHING_SERVE_OPTIONS"
"""How ``serve --workers N`` hands its parsed options to the worker processes uvicorn spawns (JSON)."""
WORKER_APP = "label_anything.cli.serve:worker_app"
"""uvicorn's app factory for ``serve --workers N`` (imported by name in each worker process)."""


def _basic_auth(text: str) -> tuple[str, str]:
    """argparse ``type`` for ``--basic-auth USER:PASSWORD`` → (user, password)."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("not USER:PASSWORD (both non-empty, joined by ':')")
    return user, password


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything serve`` to the CLI's sub-commands."""
    p = subparsers.add_parser(
        "serve",
        help="run the Label Studio ML backend (interactive masks, boxes, polygons)",
        description="Serve SAM-family models to Label Studio as an ML backend. In Label Studio: "
        "Settings → Model → "
        "Connect Model, URL http://HOST:PORT, 'Interactive preannotations' on.",
    )
    add_model_arguments(p)
    out = p.add_argument_group("answer")
    out.add_argument(
        "--out-mask",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_OUT_MASK", True),
        help="answer the mask: a BrushLabels region, or where the image has no BrushLabels control a "
        "BitmaskLabels one [env LABEL_ANYTHING_OUT_MASK; default: on]",
    )
    out.add_argument(
        "--out-bbox",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_OUT_BBOX", False),
        help="answer the mask's box (RectangleLabels) [env LABEL_ANYTHING_OUT_BBOX; default: off]",
    )
    out.add_argument(
        "--out-poly",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_OUT_POLY", False),
        help="answer polygons (PolygonLabels), one per part [env LABEL_ANYTHING_OUT_POLY; default: off]",
    )
    out.add_argument(
        "--poly-tolerance",
        type=non_negative_float,
        default=env("LABEL_ANYTHING_POLY_TOLERANCE", "1.0"),
        help="polygon simplification in pixels [env LABEL_ANYTHING_POLY_TOLERANCE; default: %(default)s]",
    )
    out.add_argument(
        "--poly-min-area",
        type=non_negative_float,
        default=env("LABEL_ANYTHING_POLY_MIN_AREA", "16"),
        help="drop polygon parts (specks) smaller than this many pixels "
        "[env LABEL_ANYTHING_POLY_MIN_AREA; default: %(default)s]",
    )
    out.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_REFINE", True),
        help="refine the previous mask when points are added to the same object "
        "[env LABEL_ANYTHING_REFINE; default: on]",
    )
    out.add_argument(
        "--boxes-to-masks",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_BOXES_TO_MASKS", True),
        help="'Retrieve predictions' (and opening a task) on tasks that hold rectangles, in their newest "
        "annotation or else a prediction: answer one mask per rectangle, its box as the prompt, under its "
        "label; with SAM 3 this comes before --label-concepts [env LABEL_ANYTHING_BOXES_TO_MASKS; default: on]",
    )
    sam3 = p.add_argument_group("SAM 3 concepts (--model-name sam3)")
    add_concept_threshold_argument(
        sam3, "answer the instances of a concept (typed in a TextArea, a label's name, a find-similar box)"
    )
    sam3.add_argument(
        "--label-concepts",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_LABEL_CONCEPTS", True),
        help="'Retrieve predictions' (and opening a task) on a task without rectangles: answer every instance "
        "of every label of the label config, as one prediction, each label standing for its --concepts "
        "phrases. Tasks that hold rectangles get --boxes-to-masks first. Stops starting tasks after 60 s, as "
        "boxes to masks does: rerun 'Retrieve predictions' for the rest [env LABEL_ANYTHING_LABEL_CONCEPTS; "
        "default: on]",
    )
    sam3.add_argument(
        "--concepts",
        type=concept_map,
        default=env("LABEL_ANYTHING_CONCEPTS"),
        metavar="LABEL=PHRASE,...;...",
        help="the phrases SAM 3 looks for for each label, e.g. 'person=person,pedestrian;car=car'; a label not "
        "listed stands for its own name, 'LABEL=' (no phrase) leaves it out [env LABEL_ANYTHING_CONCEPTS]",
    )
    net = p.add_argument_group("server")
    net.add_argument(
        "--host",
        default=env("LABEL_ANYTHING_HOST", "127.0.0.1"),
        help="address to listen on [env LABEL_ANYTHING_HOST; default: %(default)s]",
    )
    net.add_argument(
        "--port",
        type=port_number,
        default=env("LABEL_ANYTHING_PORT", "8003"),
        help="[env LABEL_ANYTHING_PORT; default: %(default)s]",
    )
    net.add_argument(
        "--basic-auth",
        type=_basic_auth,
        default=env("LABEL_ANYTHING_BASIC_AUTH"),
        metavar="USER:PASS",
        help="require HTTP basic auth from Label Studio [env LABEL_ANYTHING_BASIC_AUTH]",
    )
    net.add_argument(
        "--label-studio-url",
        default=env("LABEL_STUDIO_URL"),
        help="Label Studio's URL, to fetch uploaded images [env LABEL_STUDIO_URL]",
    )
    net.add_argument(
        "--label-studio-api-key",
        default=env("LABEL_STUDIO_API_KEY"),
        help="personal access token (or legacy token) [env LABEL_STUDIO_API_KEY]",
    )
    net.add_argument(
        "--local-files-root",
        type=Path,
        default=env("LOCAL_FILES_DOCUMENT_ROOT"),
        help="read /data/local-files/ images from this folder [env LOCAL_FILES_DOCUMENT_ROOT]",
    )
    add_image_host_arguments(net)
    net.add_argument(
        "--embedding-cache-mb",
        type=positive_int,
        default=env("LABEL_ANYTHING_EMBEDDING_CACHE_MB", "1024"),
        help="memory for image embeddings, per worker [env LABEL_ANYTHING_EMBEDDING_CACHE_MB; default: %(default)s]",
    )
    net.add_argument(
        "--workers",
        type=positive_int,
        default=env(WORKERS_ENV, "1"),
        help="backend processes answering on one port, each with its own model, memory cache and share of "
        "the CPU cores. They share embeddings through the disk cache in --cache-dir (one machine) or "
        f"through Redis with --cache-url [env {WORKERS_ENV}; default: %(default)s]",
    )
    add_cache_url_arguments(net)
    p.set_defaults(func=cmd_serve)
    return p


def _serve_options(args: argparse.Namespace) -> ServeOptions:
    """The non-model options of ``serve``; raises LabelAnythingError when they cannot work."""
    # a tuple, also when the options came back from JSON (``serve --workers N``) as a list
    basic_auth = tuple(args.basic_auth) if args.basic_auth else None
    outputs = OutputOptions(
        mask=args.out_mask,
        bbox=args.out_bbox,
        poly=args.out_poly,
        poly_tolerance=args.poly_tolerance,
        poly_min_area=args.poly_min_area,
    )
    if not outputs.types():
        raise LabelAnythingError(
            "every output is off: enable at least one of --out-mask, --out-bbox, --out-poly"
        )
    # ``getattr``: options from before these flags (a test's Namespace) mean the defaults; lists: back from JSON
    concepts = ConceptOptions(
        threshold=float(getattr(args, "concept_threshold", DEFAULT_CONCEPT_THRESHOLD)),
        label_concepts=bool(getattr(args, "label_concepts", True)),
        concepts={str(k): tuple(v) for k, v in (getattr(args, "concepts", None) or {}).items()},
    )
    return ServeOptions(
        outputs=outputs,
        refine=args.refine,
        basic_auth=basic_auth,
        boxes_to_masks=args.boxes_to_masks,
        concepts=concepts,
    )


def build_backend(args: argparse.Namespace) -> Backend:
    """The backend ``serve``'s options describe: loads the model, opens the caches and the image fetcher."""
    from label_anything.engine.weights import default_cache_dir

    options = _serve_options(args)
    shared = shared_level_from_args(args)
    model = load_model_from_args(args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    disk_gb = float(args.cache_disk_gb)
    cache = EmbeddingCache(
        max_memory_bytes=args.embedding_cache_mb * 2**20,
        disk_dir=cache_dir / "embeddings" if disk_gb > 0 else None,  # --cache-disk-gb 0: no disk level
        max_disk_bytes=int(disk_gb * 2**30),
        shared=shared,
    )
    hosts = allowed_image_hosts(args)
    fetcher = ImageFetcher(
        args.label_studio_url,
        args.label_studio_api_key,
        args.local_files_root,
        max_pixels=args.max_image_pixels,
        allowed_hosts=hosts,
    )
    # httpx logs every request URL at INFO; presigned URLs carry credentials in their query string
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    backend = Backend(model, fetcher, cache, options)
    if backend.concepts.supported:
        log.info(
            "SAM 3 concepts: threshold %g; typed in a TextArea, find similar on exemplar labels; label names as "
            "concepts %s%s",
            options.concepts.threshold,
            "on" if options.concepts.label_concepts else "off",
            "".join(
                f"; {label}={','.join(phrases) or '(skipped)'}" for label, phrases in options.concepts.concepts.items()
            ),
        )
    log.info(
        "serving %s at http://%s:%d (outputs: %s; refine %s; basic auth %s; image hosts: Label Studio%s; "
        "embeddings: memory, %s%s)",
        backend.model_version,
        args.host,
        args.port,
        ", ".join(options.outputs.types()),
        "on" if args.refine else "off",
        "on" if options.basic_auth else "off",
        "".join(f", {h}" for h in hosts),
        f"Redis at {shared.display_url}, " if shared is not None else "",
        f"disk {cache.disk_dir} (at most {disk_gb:g} GiB)" if cache.disk_dir else "no disk",
    )
    return backend


def _options_to_env(args: argparse.Namespace) -> str:
    """``args`` as JSON for the workers (paths remembered as paths; the sub-command function left out)."""

    values = {k: v for k, v in vars(args).items() if not callable(v)}
    paths = [k for k, v in values.items() if isinstance(v, Path)]
    return json.dumps({"args": values, "paths": paths}, default=str)


def _options_from_env(text: str) -> argparse.Namespace:
    """The inverse of ``_options_to_env``: the parent's parsed options, in a worker process."""
    data = json.loads(text)
    values = data["args"]
    for key in data["paths"]:
        values[key] = Path(values[key])
    return argparse.Namespace(**values)


def worker_app() -> Starlette:
    """uvicorn's app factory for ``serve --workers N``, run in each worker process.

    The parent process put its parsed options in ``LABEL_ANYTHING_SERVE_OPTIONS``; each worker loads its
    own model from them. Log lines carry the worker's pid, so the log tells which worker answered a click.
    """
    args = _options_from_env(os.environ[WORKER_OPTIONS_ENV])
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s [worker %(process)d]: %(message)s",
        stream=sys.stderr,
    )
    _share_cpu_cores(args.workers)
    backend = build_backend(args)
    log.info("worker %d ready", os.getpid())
    return create_app(backend)


def _share_cpu_cores(workers: int) -> None:
    """Give each of ``workers`` processes its share of the cores: N processes each using every core would
    slow every click. Set on PyTorch, which the ONNX Runtime decoder follows (``OnnxDecoder``); left alone
    when the user set OMP_NUM_THREADS."""
    if workers <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    # the cores this process may run on (a container or taskset may allow fewer than the machine has)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // workers))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the backend under uvicorn until interrupted: in this process, or in ``--workers`` processes."""
    import uvicorn

    log_options = {"log_level": args.log_level.lower(), "access_log": args.log_level == "DEBUG"}
    if args.workers == 1:
        uvicorn.run(create_app(build_backend(args)), host=args.host, port=args.port, **log_options)
        return 0
    # Check what can be checked here, before N workers each load a model and fail the same way.
    _serve_options(args)
    if args.cache_url:
        from label_anything.engine.redis_cache import check_shared_cache_arguments

        check_shared_cache_arguments(args.cache_url)
    log.info(
        "starting %d workers on http://%s:%d; they share embeddings through %s",
        args.workers,
        args.host,
        args.port,
        "Redis" if args.cache_url else "the disk cache" if args.cache_disk_gb > 0 else "nothing (--cache-disk-gb 0)",
    )
    os.environ[WORKER_OPTIONS_ENV] = _options_to_env(args)
    uvicorn.run(
        WORKER_APP, factory=True, workers=args.workers, host=args.host, port=args.port, **log_options
    )
    return 0
