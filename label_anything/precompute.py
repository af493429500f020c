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
    bar = tqdm(source, total=total, unit="img", desc="precompute", disable=not progress)
    for name, load in bar:
        try:
            image, digest = load()
        except LabelAnythingError as exc:
            log.warning("%s: skipped (%s)", name, exc)
            report.failed.append(name)
            continue
        key = cache_key(model.info.model_id, digest)
        if cache.contains(key):
            report.cached += 1
            continue
        t0 = time.perf_counter()
        cache.put(key, encode(model, image, digest))
        report.seconds += time.perf_counter() - t0
        report.encoded += 1
        bar.set_postfix(encoded=report.encoded, cached=report.cached)
    return report


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
    p.set_defaults(func=cmd_precompute)
    return p


def cmd_precompute(args: argparse.Namespace) -> int:
    from label_anything.cli import load_model_from_args
    from label_anything.engine.weights import default_cache_dir

    model = load_model_from_args(args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    # Memory level off (64 MiB): every embedding goes to disk, the level ``serve`` reads at start.
    cache = EmbeddingCache(max_memory_bytes=64 * 2**20, disk_dir=cache_dir / "embeddings")
    if cache.disk_dir is None:
        raise LabelAnythingError(f"{cache_dir / 'embeddings'} is not writable; precompute needs a disk cache")
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
        report = precompute(model, source, cache, progress=args.progress, total=total)
    finally:
        if fetcher is not None:
            fetcher.close()
    print(json.dumps({
        "model": model.info.model_id,
        "encoded": report.encoded,
        "already_cached": report.cached,
        "failed": report.failed,
        "images_per_s": round(report.images_per_s, 3),
        "cache": str(cache.disk_dir),
    }))
    return 1 if report.failed and not (report.encoded or report.cached) else 0
