"""``label-anything precompute``: the options, and the JSON summary printed on stdout.

The work is ``label_anything.app.precompute`` (local) and ``label_anything.app.ray_pool`` (``--ray-address``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from label_anything.app.model_options import ModelOptions
from label_anything.app.precompute import (
    ImageSource,
    embedding_disk_cache,
    folder_images,
    precompute,
    precompute_summary,
    project_images,
    project_task_count,
)
from label_anything.app.ray_pool import PoolOptions
from label_anything.cli.options import (
    add_cache_url_arguments,
    add_image_host_arguments,
    add_model_arguments,
    add_ray_arguments,
    allowed_image_hosts,
    env,
    load_model_from_args,
    positive_int,
    shared_level_from_args,
)

COMMAND = "precompute"


def add_precompute_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything precompute`` to the CLI's sub-commands."""
    p = subparsers.add_parser(
        COMMAND,
        help="encode the images of a folder or a Label Studio project into the embedding cache",
        description="Encode every image not yet cached, so clicks in Label Studio skip the encoder. "
        "Resumable: run it again after an interruption and it continues where it stopped. Warns when the "
        "images will not all fit the disk cache (--cache-disk-gb). Needs a SAM checkpoint, or --model-name "
        "classical.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", type=Path, metavar="DIR", help="a folder of images (searched recursively)")
    what.add_argument("--project", type=positive_int, metavar="ID", help="a Label Studio project id")
    p.add_argument("--label-studio-url", default=env("LABEL_STUDIO_URL"),
                   help="Label Studio's URL, for --project [env LABEL_STUDIO_URL]")
    p.add_argument("--label-studio-api-key", default=env("LABEL_STUDIO_API_KEY"),
                   help="access token, for --project [env LABEL_STUDIO_API_KEY]")
    p.add_argument("--local-files-root", type=Path, default=env("LOCAL_FILES_DOCUMENT_ROOT"),
                   help="read /data/local-files/ images from this folder [env LOCAL_FILES_DOCUMENT_ROOT]")
    # The same allow-list and pixel limit as `serve`: precompute must fetch exactly what serve will fetch.
    add_image_host_arguments(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_model_arguments(p)
    add_ray_arguments(p)
    add_cache_url_arguments(p.add_argument_group("shared cache"))
    p.set_defaults(func=cmd_precompute)
    return p


def cmd_precompute(args: argparse.Namespace) -> int:
    from label_anything.imaging.fetch import ImageFetcher

    model_options = ModelOptions.of(vars(args))
    model_options.refuse_grabcut_fallback(COMMAND)
    shared = shared_level_from_args(args)  # before the model loads: a malformed --cache-url fails at once
    cache = embedding_disk_cache(args.cache_dir, getattr(args, "cache_disk_gb", None), shared)
    fetcher = None
    if args.images is not None:
        names = list(folder_images(args.images, args.max_image_pixels))
        source: ImageSource = iter(names)
        total: int | None = len(names)
    else:
        fetcher = ImageFetcher(args.label_studio_url, args.label_studio_api_key, args.local_files_root,
                               max_pixels=args.max_image_pixels, allowed_hosts=allowed_image_hosts(args))
    try:
        if fetcher is not None:
            # tasks, not images: a task may name several images, but most name one, and it is only an estimate
            source, total = project_images(args.project, fetcher), project_task_count(args.project, fetcher)
        if args.ray_address:  # with Ray, each worker loads its own model
            from label_anything.app.ray_pool import precompute_on_ray

            pool_options = PoolOptions(args.ray_address, args.ray_workers, args.ray_gpus_per_worker,
                                       args.ray_cpus_per_worker)
            report, model_id = precompute_on_ray(pool_options, model_options, source, cache,
                                                 progress=args.progress, total=total)
        else:
            model = load_model_from_args(args)
            model_options.refuse_classical_model(COMMAND, model.info.name)
            report = precompute(model, source, cache, progress=args.progress, total=total)
            model_id = model.info.model_id
    finally:
        if fetcher is not None:
            fetcher.close()
    print(json.dumps(precompute_summary(report, model_id, cache)))
    return 1 if report.failed and not (report.encoded or report.cached) else 0
