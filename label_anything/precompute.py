"""``label-anything precompute``: encode every image of a folder or a Label Studio project ahead of time.

The embeddings land in the same disk cache ``serve`` reads (``<cache>/embeddings``), keyed by (model id,
image content digest), so a later click on any of these images skips the encoder. Each embedding is
written atomically as soon as it is computed, and an image already cached is skipped: an interrupted run
(Ctrl-C, crash, reboot) resumes where it stopped, losing at most the image it was encoding.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from label_anything.engine.cache import EmbeddingCache, cache_key
from label_anything.engine.types import SegmentationModel
from label_anything.errors import LabelAnythingError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

ImageSource = Iterator[tuple[str, Callable[[], tuple[np.ndarray, str]]]]
"""(name shown to the user, a function that loads the image → (RGB pixels, content digest))."""


@dataclass
class PrecomputeReport:
    """What one run did. ``seconds`` counts encoding only, so ``images_per_s`` is the encoder's rate."""

    encoded: int = 0
    cached: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


def folder_images(folder: Path) -> ImageSource:
    """Every image file under ``folder`` (recursively, sorted: a resumed run walks the same order)."""
    from label_anything.images import image_digest, read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise LabelAnythingError(f"--images {folder}: not a folder")
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):

        def load(path: Path = path) -> tuple[np.ndarray, str]:
            image = read_image(path)
            return image, image_digest(image)

        yield str(path.relative_to(folder)), load


def project_images(project_id: int, fetcher, page_size: int = 100) -> ImageSource:
    """Every image referenced by the tasks of a Label Studio project (all ``data`` values that are
    image references), fetched the way ``serve`` fetches them (``fetcher``: an ``ImageFetcher`` with
    Label Studio's URL and API key)."""
    if fetcher.label_studio_url is None or fetcher.auth is None:
        raise LabelAnythingError("--project needs --label-studio-url and --label-studio-api-key")
    page = 1
    while True:
        url = f"{fetcher.label_studio_url}/api/tasks?project={project_id}&page={page}&page_size={page_size}"
        response = fetcher.client.get(url, headers={"Authorization": fetcher.auth.header()})
        if response.status_code == 404 and page > 1:
            return  # past the last page
        if response.status_code != 200:
            raise LabelAnythingError(f"GET {url} answered HTTP {response.status_code}")
        body = response.json()
        tasks = body.get("tasks", []) if isinstance(body, dict) else body
        if not tasks:
            return
        for task in tasks:
            task_id = task.get("id")
            for value in (task.get("data") or {}).values():
                if isinstance(value, str) and _looks_like_image(value):

                    def load(ref: str = value, tid: object = task_id) -> tuple[np.ndarray, str]:
                        return fetcher.fetch(ref, tid)

                    yield f"task {task_id}: {value}", load
        if len(tasks) < page_size:
            return
        page += 1


def _looks_like_image(value: str) -> bool:
    """Label Studio data values that name an image: uploads, local files, URLs, cloud URIs."""
    lowered = value.lower().split("?", 1)[0]
    if value.startswith(("/data/", "http://", "https://", "s3://", "gs://", "azure-blob://")):
        return True
    return lowered.endswith(IMAGE_SUFFIXES)


def precompute(
    model: SegmentationModel,
    source: ImageSource,
    cache: EmbeddingCache,
    *,
    progress: bool = True,
    total: int | None = None,
) -> PrecomputeReport:
    """Encode each image of ``source`` that ``cache`` does not hold yet; returns the counts.

    A failing image (unreadable, too large) is reported and skipped, never fatal: one bad file must
    not stop an overnight run.
    """
    from tqdm import tqdm

    from label_anything.engine import encode

    report = PrecomputeReport()
    bar = tqdm(total=total, unit="img", desc="precompute", disable=not progress)
    for name, loaded in loaded_ahead(source):
        bar.update()
        if isinstance(loaded, LabelAnythingError):
            log.warning("%s: skipped (%s)", name, loaded)
            report.failed.append(name)
            continue
        image, digest = loaded
        key = cache_key(model.info.model_id, digest)
        if cache.contains(key, share=True):
            report.cached += 1
            continue
        t0 = time.perf_counter()
        cache.put(key, encode(model, image, digest))
        report.seconds += time.perf_counter() - t0
        report.encoded += 1
        bar.set_postfix(encoded=report.encoded, cached=report.cached)
    bar.close()
    return report


def loaded_ahead(source: ImageSource) -> Iterator[tuple[str, tuple[np.ndarray, str] | LabelAnythingError]]:
    """``source``'s images loaded one ahead in a thread: the next file is read, decoded and hashed (or
    downloaded) while the encoder, which already uses every core, works on this one.

    Yields (name, (pixels, digest)) or (name, the LabelAnythingError that loading it raised).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    def load(fn: Callable[[], tuple[np.ndarray, str]]) -> tuple[np.ndarray, str] | LabelAnythingError:
        try:
            return fn()
        except LabelAnythingError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="precompute-load") as pool:
        pending: tuple[str, Future] | None = None
        source_error: BaseException | None = None
        try:
            for name, fn in source:
                submitted = (name, pool.submit(load, fn))
                if pending is not None:
                    yield pending[0], pending[1].result()
                pending = submitted
        except GeneratorExit:
            raise
        except BaseException as exc:
            # the source failed (a Label Studio page, an interrupt): the image already loaded is still
            # encoded and cached before the error goes on
            source_error = exc
        if pending is not None:
            yield pending[0], pending[1].result()
        if source_error is not None:
            raise source_error


def add_precompute_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything precompute`` to the CLI's sub-commands."""
    import os

    from label_anything.cli import add_model_arguments

    p = subparsers.add_parser(
        "precompute",
        help="encode the images of a folder or a Label Studio project into the embedding cache",
        description="Encode every image not yet cached, so clicks in Label Studio skip the encoder. "
        "Resumable: run it again after an interruption and it continues where it stopped.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", type=Path, metavar="DIR", help="a folder of images (searched recursively)")
    what.add_argument("--project", type=int, metavar="ID", help="a Label Studio project id")
    p.add_argument("--label-studio-url", default=os.environ.get("LABEL_STUDIO_URL"),
                   help="Label Studio's URL, for --project [env LABEL_STUDIO_URL]")
    p.add_argument("--label-studio-api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                   help="access token, for --project [env LABEL_STUDIO_API_KEY]")
    p.add_argument("--local-files-root", type=Path, default=os.environ.get("LOCAL_FILES_DOCUMENT_ROOT"),
                   help="read /data/local-files/ images from this folder [env LOCAL_FILES_DOCUMENT_ROOT]")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_model_arguments(p)
    from label_anything.distributed import add_ray_arguments

    add_ray_arguments(p)
    from label_anything.engine.redis_cache import add_cache_url_arguments

    add_cache_url_arguments(p.add_argument_group("shared cache"))
    p.set_defaults(func=cmd_precompute)
    return p


def cmd_precompute(args: argparse.Namespace) -> int:
    from label_anything.cli import load_model_from_args
    from label_anything.engine.redis_cache import shared_level_from_args
    from label_anything.engine.weights import default_cache_dir

    shared = shared_level_from_args(args)  # before the model loads: a malformed --cache-url fails at once
    model = None if args.ray_address else load_model_from_args(args)  # with Ray, each worker loads its own
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    # Small memory level (64 MiB): every embedding goes to disk (and Redis), the levels ``serve`` reads.
    cache = EmbeddingCache(max_memory_bytes=64 * 2**20, disk_dir=cache_dir / "embeddings", shared=shared)
    if cache.disk_dir is None and shared is None:
        raise LabelAnythingError(f"{cache_dir / 'embeddings'} is not writable; precompute needs a disk cache "
                                 "or --cache-url")
    fetcher = None
    if args.images is not None:
        names = list(folder_images(args.images))
        source: ImageSource = iter(names)
        total: int | None = len(names)
    else:
        from label_anything.labelstudio.images import ImageFetcher

        fetcher = ImageFetcher(args.label_studio_url, args.label_studio_api_key, args.local_files_root)
        source, total = project_images(args.project, fetcher), None
    try:
        if model is None:
            from label_anything.distributed import precompute_on_ray

            report, model_id = precompute_on_ray(args, source, cache, total=total)
        else:
            report = precompute(model, source, cache, progress=args.progress, total=total)
            model_id = model.info.model_id
    finally:
        if fetcher is not None:
            fetcher.close()
    print(json.dumps({
        "model": model_id,
        "encoded": report.encoded,
        "already_cached": report.cached,
        "failed": report.failed,
        "images_per_s": round(report.images_per_s, 3),
        "cache": str(cache.disk_dir),
        "shared_cache": shared.display_url if shared is not None else None,
    }))
    return 1 if report.failed and not (report.encoded or report.cached) else 0
