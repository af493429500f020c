"""``label-anything precompute``: encode every image of a folder or a Label Studio project ahead of time.

The embeddings land in the same disk cache ``serve`` reads (``<cache>/embeddings``), keyed by (model id,
image content digest), so a later click on any of these images skips the encoder. Each embedding is
written atomically as soon as it is computed, and an image already cached is skipped: an interrupted run
(Ctrl-C, crash, reboot) resumes where it stopped, losing at most the image it was encoding.

The disk cache is bounded (``--cache-disk-gb``) and evicts the least recently used entries, so a project
larger than it would evict its own first embeddings: as soon as the first embedding's size tells, a warning
says so (with the size to give), and the run goes on (the last images stay cached, which still helps).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from label_anything.engine.cache import EmbeddingCache, cache_key
from label_anything.engine.types import SegmentationModel
from label_anything.errors import LabelAnythingError

if TYPE_CHECKING:
    from label_anything.engine.redis_cache import RedisLevel
    from label_anything.imaging.fetch import ImageFetcher

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

ImageSource = Iterator[tuple[str, Callable[[], tuple[np.ndarray, str]]]]
"""(name shown to the user, a function that loads the image → ((H, W, 3) uint8 RGB pixels, EXIF applied, and
their content digest ``imaging.decode.image_digest``)); loading raises ``LabelAnythingError`` for a bad image."""


@dataclass
class PrecomputeReport:
    """What one run did. ``seconds`` counts encoding only, so ``images_per_s`` is the encoder's rate."""

    encoded: int = 0
    cached: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    disk_cache_short: bool = False  # the images will not all fit the disk cache (see ``DiskBudget``)

    @property
    def images_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


@dataclass
class DiskBudget:
    """Says once, as soon as it can tell, that a run's embeddings will not all fit the disk cache.

    The size of an embedding is known from the first one encoded; with ``total`` (the images expected) the
    warning comes then, else when the images seen so far already overflow the cache.
    """

    cap_bytes: int | None  # None: no disk level, nothing to fit
    total: int | None = None
    short: bool = False

    @classmethod
    def of(cls, cache: EmbeddingCache, total: int | None) -> DiskBudget:
        return cls(cache.max_disk_bytes if cache.disk_dir is not None else None, total)

    def note(self, entry_bytes: int, seen: int) -> None:
        """One more embedding of ``entry_bytes`` stored; ``seen`` images (encoded or cached) so far."""
        if self.short or self.cap_bytes is None:
            return
        count = self.total if self.total is not None else seen
        if count * entry_bytes <= self.cap_bytes:
            return
        self.short = True
        need, cap = count * entry_bytes / 2**30, self.cap_bytes / 2**30
        images = f"{count} images" if self.total is not None else f"more than {count - 1} images"
        log.warning("precompute: %s x %.1f MiB = %.2f GiB will not fit the %.2f GiB disk cache: the least recently "
                    "used embeddings, this run's first ones too, will be evicted; give --cache-disk-gb %.1f or more "
                    "(env LABEL_ANYTHING_CACHE_DISK_GB)", images, entry_bytes / 2**20, need, cap,
                    max(need * 1.1, need + 0.1))


def folder_images(folder: Path, max_pixels: int | None = None) -> ImageSource:
    """Every image file under ``folder`` (recursively, sorted: a resumed run walks the same order);
    images above ``max_pixels`` fail as they do in ``serve``."""
    from label_anything.imaging.decode import DEFAULT_MAX_PIXELS, image_digest, read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise LabelAnythingError(f"--images {folder}: not a folder")
    limit = max_pixels or DEFAULT_MAX_PIXELS
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):

        def load(path: Path = path) -> tuple[np.ndarray, str]:
            image = read_image(path, max_pixels=limit)
            return image, image_digest(image)

        yield str(path.relative_to(folder)), load


def project_task_count(project_id: int, fetcher: ImageFetcher) -> int | None:
    """How many tasks the project has, as Label Studio's task list says (None when it does not say)."""
    body = _task_page(fetcher, project_id, page=1, page_size=1)
    total = body.get("total") if isinstance(body, dict) else None
    return total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None


def _task_page(fetcher: ImageFetcher, project_id: int, page: int, page_size: int) -> Any:
    """The JSON body of one page of ``GET /api/tasks``; None past the last page (Label Studio answers 404)."""
    import httpx

    if fetcher.label_studio_url is None or fetcher.auth is None:
        raise LabelAnythingError("--project needs --label-studio-url and --label-studio-api-key")
    url = f"{fetcher.label_studio_url}/api/tasks?project={project_id}&page={page}&page_size={page_size}"
    try:
        response = fetcher.client.get(url, headers={"Authorization": fetcher.auth.header()})
    except httpx.HTTPError as exc:
        raise LabelAnythingError(f"cannot reach Label Studio at {fetcher.label_studio_url} "
                                 f"({type(exc).__name__}: {exc})") from None
    if response.status_code == 404 and page > 1:
        return None
    if response.status_code != 200:
        raise LabelAnythingError(f"GET {url} answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        body = None
    tasks = body.get("tasks") if isinstance(body, dict) else body
    if not isinstance(tasks, list):
        raise LabelAnythingError(f"GET {url} answered something that is not a task list "
                                 f"({response.headers.get('content-type', 'no content type')}): is "
                                 f"{fetcher.label_studio_url} Label Studio?")
    return body


def project_images(project_id: int, fetcher: ImageFetcher, page_size: int = 100) -> ImageSource:
    """Every image referenced by the tasks of a Label Studio project (all ``data`` values that are
    image references), fetched the way ``serve`` fetches them (``fetcher``: an ``ImageFetcher`` with
    Label Studio's URL and API key, allowed hosts and pixel limit)."""
    for task_id, _, ref in project_image_refs(project_id, fetcher, page_size):

        def load(ref: str = ref, tid: object = task_id) -> tuple[np.ndarray, str]:
            return fetcher.fetch(ref, tid)

        yield f"task {task_id}: {ref}", load


def project_image_refs(project_id: int, fetcher: ImageFetcher, page_size: int = 100) -> Iterator[
    tuple[Any, str, str]
]:
    """(task id, data key, image reference) of every image the project's tasks name, page after page, in
    Label Studio's task order; nothing is fetched (``fetcher.fetch(ref, task_id)`` reads one)."""
    page = 1
    while True:
        body = _task_page(fetcher, project_id, page, page_size)
        if body is None:
            return  # past the last page
        tasks = body.get("tasks") if isinstance(body, dict) else body
        if not tasks:
            return
        for task in tasks:
            data = task.get("data") if isinstance(task, dict) else None
            if not isinstance(data, dict):
                continue
            for key, value in data.items():
                if isinstance(value, str) and _looks_like_image(value):
                    yield task.get("id"), str(key), value
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
    budget = DiskBudget.of(cache, total)
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
        stored = cache.put(key, encode(model, image, digest))
        report.seconds += time.perf_counter() - t0
        report.encoded += 1
        budget.note(stored.nbytes, report.encoded + report.cached)
        bar.set_postfix(encoded=report.encoded, cached=report.cached)
    bar.close()
    report.disk_cache_short = budget.short
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


def embedding_disk_cache(cache_dir: Path | None, disk_gb: float | None, shared: RedisLevel | None) -> EmbeddingCache:
    """The cache ``serve`` reads, for precompute: a small memory level (64 MiB) so that every embedding goes to
    disk (``<cache_dir>/embeddings``, at most ``disk_gb`` GiB; 0: no disk level) and to ``shared`` (Redis).

    Args:
        cache_dir: the cache folder (``--cache-dir``); None: ``~/.cache/label-anything``.
        disk_gb: ``--cache-disk-gb``; None: the cache's default size.
        shared: the Redis level (``--cache-url``), or None.

    Raises:
        LabelAnythingError: neither a writable disk level nor Redis: precompute would keep nothing.
    """
    from label_anything.engine.weights import default_cache_dir

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    sized = {} if disk_gb is None else {"max_disk_bytes": int(float(disk_gb) * 2**30)}
    disk_dir = cache_dir / "embeddings" if disk_gb is None or float(disk_gb) > 0 else None
    cache = EmbeddingCache(max_memory_bytes=64 * 2**20, disk_dir=disk_dir, shared=shared, **sized)
    if cache.disk_dir is None and shared is None:
        why = "--cache-disk-gb is 0" if disk_dir is None else f"{cache_dir / 'embeddings'} is not writable"
        raise LabelAnythingError(f"{why}; precompute needs a disk cache or --cache-url")
    return cache


def precompute_summary(report: PrecomputeReport, model_id: str, cache: EmbeddingCache) -> dict[str, Any]:
    """The one JSON line ``precompute`` prints."""
    shared = cache.shared
    return {
        "model": model_id,
        "encoded": report.encoded,
        "already_cached": report.cached,
        "failed": report.failed,
        "images_per_s": round(report.images_per_s, 3),
        "cache": str(cache.disk_dir) if cache.disk_dir is not None else None,
        "disk_cache_gb": round(cache.max_disk_bytes / 2**30, 3) if cache.disk_dir is not None else None,
        "disk_cache_short": report.disk_cache_short,
        "shared_cache": shared.display_url if shared is not None else None,
    }
