"""Where the images of ``concepts-to-masks`` come from: a folder, a COCO file's ``images``, or a Label Studio
project; each as a series of ``ImageItem`` that know their journal key and load their pixels only when asked.

* folder: every image file under it, recursively, sorted (``precompute``'s walk), EXIF applied; the output's
  image ids are 1, 2, ... in that order.
* COCO: the entries of ``images`` with their ids and fields, each image read as ``boxes-to-masks`` reads it
  (its ``height``/``width`` decide between the displayed and the stored pixels); its categories are the
  default concepts.
* project: every image the project's tasks name (``precompute``'s reading of a project, fetched as ``serve``
  fetches them); the output's ``file_name`` is the task's image reference, ``ls_task_id`` its task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from label_anything.app.coco_images import (
    NO_FILE_NAME,
    REPEATED_IMAGE,
    SIZE_MISMATCH,
    UNREADABLE,
    ImageSizeError,
    decode_for_coco,
    read_coco,
    read_file_bytes,
    short,
)
from label_anything.app.journal import id_key
from label_anything.app.precompute import folder_images, project_image_refs, project_task_count
from label_anything.errors import ImageError, LabelAnythingError
from label_anything.imaging.decode import DEFAULT_MAX_PIXELS, ImageTooLargeError, image_digest

if TYPE_CHECKING:
    from label_anything.imaging.fetch import ImageFetcher

log = logging.getLogger(__name__)

# Why an image was not used, besides ``app.coco_images``' reasons (keys of the summary's ``skipped``).
TOO_LARGE = "image too large"
NOT_ALLOWED = "image not allowed"
NOT_AN_IMAGE_ENTRY = "images entry without an id"

Loader = Callable[[], tuple[np.ndarray, str]]
"""Loads one image: ((H, W, 3) uint8 RGB, its ``image_digest``); raises ``LabelAnythingError`` when it cannot."""


@dataclass
class ImageItem:
    """One image to query, not loaded yet."""

    key: str  # its key in the progress file (``id_key`` of the COCO id, relative path, or [task, data key])
    name: str  # how messages call it
    entry: dict[str, Any]  # its output ``images`` entry (numbered sources get their ``id`` when written)
    load: Loader
    stamp: list[int] | None = None  # [size, mtime_ns] of a local file: a record of another stamp is redone


@dataclass
class ImageSource:
    """A run's images, and what the output keeps of the input."""

    identity: dict[str, Any]  # what the progress file's fingerprint records of the input
    items: Callable[[], Iterator[ImageItem]]
    total: int | None  # images expected (tasks for a project), for the progress bar
    numbered: bool  # the output's image ids are 1, 2, ... in source order (folder, project)
    base: dict[str, Any] = field(default_factory=dict)  # top-level fields of the output (a COCO file's info...)
    categories: list[Any] = field(default_factory=list)  # the input's categories (COCO)
    skips: list[tuple[str, str]] = field(default_factory=list)  # (reason, message) found without reading images


def failure_reason(exc: LabelAnythingError) -> str:
    """The ``skipped`` reason of an image that failed to load."""
    from label_anything.imaging.fetch import AccessDeniedError

    if isinstance(exc, ImageSizeError):
        return SIZE_MISMATCH
    if isinstance(exc, ImageTooLargeError):
        return TOO_LARGE
    if isinstance(exc, AccessDeniedError):
        return NOT_ALLOWED
    return UNREADABLE


def file_stamp(path: Path) -> list[int] | None:
    """[size, mtime_ns] of a file (None when it cannot be read: its load will say why)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def folder_source(folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSource:
    """Every image file under ``folder``; a one-line error when it is not a folder or holds none."""
    folder = Path(folder)
    found = list(folder_images(folder, max_pixels))
    if not found:
        raise LabelAnythingError(f"--images {folder}: no image files in it (.jpg, .png, ... searched recursively)")

    def items() -> Iterator[ImageItem]:
        for name, load in found:
            yield ImageItem(id_key(name), name, {"file_name": name}, load, file_stamp(folder / name))

    return ImageSource({"images": str(folder.resolve())}, items, len(found), numbered=True,
                       base={"info": {"description": f"label-anything concepts-to-masks over {folder.name}"}})


def coco_source(coco_path: Path, images_dir: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSource:
    """The images of a COCO file (``annotations`` may be absent: an image-info file is enough)."""
    coco = read_coco(coco_path, lists=("images",))
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise LabelAnythingError(f"--images {images_dir}: not a folder")
    entries, skips = _usable_entries(coco["images"])
    stat = Path(coco_path).stat()

    def items() -> Iterator[ImageItem]:
        for entry in entries:
            name = entry["file_name"]
            path = images_dir / name
            size = (entry.get("height"), entry.get("width"))

            def load(path: Path = path, name: str = name, size: tuple[Any, Any] = size) -> tuple[np.ndarray, str]:
                data = read_file_bytes(path)
                if isinstance(data, str):
                    raise ImageError(data)
                image, note = decode_for_coco(data, name, size, max_pixels=max_pixels)
                if note:
                    log.warning("%s", note)
                return image, image_digest(image)

            yield ImageItem(id_key(entry["id"]), name, dict(entry), load, file_stamp(path))

    identity = {"coco": str(Path(coco_path).resolve()), "coco_size": stat.st_size, "coco_mtime_ns": stat.st_mtime_ns,
                "images": str(images_dir.resolve())}
    base = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    categories = coco.get("categories") if isinstance(coco.get("categories"), list) else []
    return ImageSource(identity, items, len(entries), numbered=False, base=base, categories=categories, skips=skips)


def _usable_entries(images: list[Any]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The image entries that name one image unambiguously, and why the others cannot be used."""
    counts: dict[str, int] = {}
    for img in images:
        if isinstance(img, dict) and "id" in img:
            counts[id_key(img["id"])] = counts.get(id_key(img["id"]), 0) + 1
    entries, skips = [], []
    for position, img in enumerate(images):
        if not isinstance(img, dict) or "id" not in img:
            skips.append((NOT_AN_IMAGE_ENTRY, f"images[{position}] is not an image entry with an id: {short(img)}"))
        elif counts[id_key(img["id"])] > 1:
            skips.append((REPEATED_IMAGE, f"images[{position}]: image id {short(img['id'])} is given to several "
                                          "images"))
        elif not isinstance(img.get("file_name"), str) or not img["file_name"].strip():
            skips.append((NO_FILE_NAME, f"image {short(img['id'])} has no file_name"))
        else:
            entries.append(img)
    return entries, skips


def project_source(project_id: int, fetcher: ImageFetcher) -> ImageSource:
    """Every image the tasks of a Label Studio project name (``fetcher``: Label Studio's URL and key, the
    allowed hosts, the local-files root and the pixel limit)."""

    def items() -> Iterator[ImageItem]:
        for task_id, data_key, ref in project_image_refs(project_id, fetcher):

            def load(ref: str = ref, task_id: Any = task_id) -> tuple[np.ndarray, str]:
                return fetcher.fetch(ref, task_id)

            entry = {"file_name": ref, "ls_task_id": task_id, "ls_data_key": data_key}
            yield ImageItem(id_key([task_id, data_key]), f"task {task_id}: {ref}", entry, load)

    identity = {"label_studio": fetcher.label_studio_url, "project": project_id}
    return ImageSource(identity, items, project_task_count(project_id, fetcher), numbered=True,
                       base={"info": {"description": f"label-anything concepts-to-masks over project {project_id}"}})
