"""Label Studio's JSON export → tasks → regions (masks, polygons, boxes in pixels). Pure: no files written.

An export is a JSON array of tasks::

    {"id": 7, "data": {"image": "/data/upload/3/abc123-my%20cat.jpg"},
     "annotations": [{"id": 1, "result": [...], "was_cancelled": false, "created_at": "...", ...}],
     "predictions": [...]}

This module reads the tasks (``iter_tasks``), chooses the annotations to convert and names the image of a
task. The results of an annotation become ``Region`` values in ``labelstudio.regions``; what is not
converted is counted in a ``labelstudio.tally.Tally``.

Exports of many tasks are streamed with ``ijson`` (its C backend parses a 10,000-task export at tens of MB/s
and holds one task at a time); without ``ijson`` the whole array is loaded with ``json.load``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

from label_anything.errors import LabelAnythingError
from label_anything.labelstudio.regions import (
    count_regions,
)
from label_anything.labelstudio.tally import Tally

try:  # streaming keeps memory bounded on exports of many thousands of tasks
    import ijson
except ImportError:  # pragma: no cover - ijson is a dependency of the dev environment
    ijson = None
_JSON_ERRORS: tuple[type[Exception], ...] = (ValueError, ijson.JSONError) if ijson else (ValueError,)


# -- reading the export ---------------------------------------------------------------------------------
class _ProgressReader:
    """A binary file wrapper that reports how many bytes were read (for a progress bar by bytes)."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int], None] | None) -> None:
        self.raw = raw
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self.on_read is not None and data:
            self.on_read(len(data))
        return data


def iter_tasks(path: str | Path, *, on_read: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the tasks of a Label Studio JSON export, one at a time.

    Args:
        path: the export file (a JSON array of task objects; a single task object is accepted too).
        on_read: called with the number of bytes read after each read (progress).

    Raises:
        LabelAnythingError: the file is missing or is not a JSON export of tasks.
    """
    p = Path(path)
    try:
        raw = p.open("rb")
    except OSError as exc:
        raise LabelAnythingError(f"cannot read the export {p}: {exc.strerror or exc}") from None
    with raw:
        head = raw.read(4096).lstrip()
        raw.seek(0)
        if head[:1] not in (b"{", b"["):
            raise LabelAnythingError(f"{p} is not a Label Studio JSON export (it does not start with '[')")
        reader = _ProgressReader(raw, on_read)
        try:
            if head[:1] == b"{":  # one task, as Label Studio exports a single task
                yield _checked_task(json.loads(reader.read()), p, 0)
                return
            items: Iterator[Any] = iter(json.loads(reader.read())) if ijson is None else _stream(raw, reader)
            for i, task in enumerate(items):
                yield _checked_task(task, p, i)
        except (*_JSON_ERRORS, RecursionError) as exc:
            detail = " ".join(str(exc).split())[:200]  # yajl's messages span lines: the error is one line
            raise LabelAnythingError(f"{p} is not valid JSON ({detail}); export the project again as JSON") from None


def _stream(raw: IO[bytes], reader: _ProgressReader) -> Iterator[Any]:
    """The items of the top-level array, with ijson's C backend; from where it stops on an integer beyond 64
    bits (valid JSON, e.g. a task id), with its pure-Python one, which reads any integer."""
    done = 0
    try:
        # use_float: plain floats instead of Decimal, which numpy and json cannot take as is
        for item in ijson.items(reader, "item", use_float=True):
            yield item
            done += 1
        return
    except ijson.JSONError as exc:
        if "integer overflow" not in str(exc) or ijson.backend == "python":
            raise
    raw.seek(0)
    reader.on_read = None  # the bytes are read a second time: the progress bar has counted them already
    python = ijson.get_backend("python")
    for i, item in enumerate(python.items(reader, "item", use_float=True)):
        if i >= done:
            yield item


def _checked_task(task: Any, path: Path, index: int) -> dict[str, Any]:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise LabelAnythingError(
            f"item {index} of {path} is not a Label Studio task (an object with 'data'); "
            "export the project as JSON (not JSON-MIN or COCO)"
        )
    return task


# -- annotations and image references ------------------------------------------------------------------
def _when(annotation: dict[str, Any]) -> tuple[float, float, float]:
    def stamp(key: str) -> float:
        text = annotation.get(key)
        if not isinstance(text, str):
            return -math.inf
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError):
            return -math.inf

    ident = annotation.get("id")
    number = -math.inf
    if isinstance(ident, int | float) and not isinstance(ident, bool):
        try:
            number = float(ident)
        except OverflowError:  # an int beyond float's range
            number = math.inf
    return stamp("updated_at"), stamp("created_at"), number if not math.isnan(number) else -math.inf


def _entries(task: dict[str, Any], key: str, *, lost: Callable[[str, int], None]) -> list[dict[str, Any]]:
    """The annotations (or predictions) of a task that are objects; ``lost(reason, n)`` counts the rest."""
    entries = task.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        lost(f"task whose {key} are not a list", 1)
        return []
    for entry in entries:
        if not isinstance(entry, dict):
            lost(f"item of {key} that is not an object", 1)
    return [e for e in entries if isinstance(e, dict)]


def choose_annotations(task: dict[str, Any], *, all_annotations: bool, tally: Tally) -> list[dict[str, Any]]:
    """The annotations of a task to convert: the newest non-cancelled one, or all non-cancelled ones.

    "Newest" is the latest ``updated_at``, then ``created_at``, then the highest id. The regions of
    cancelled ("skipped" in the UI) and of older annotations are counted as skipped.
    """
    annotations = _entries(task, "annotations", lost=lambda reason, n: tally.drop(reason, n=n))
    kept = []
    for a in annotations:
        if a.get("was_cancelled") in (True, 1):
            tally.skip("region of a cancelled annotation", n=count_regions(a.get("result")))
        else:
            kept.append(a)
    if all_annotations or len(kept) <= 1:
        return kept
    newest = max(kept, key=_when)
    for a in kept:
        if a is not newest:
            tally.skip("region of an older annotation of the same task (use --all-annotations)",
                       n=count_regions(a.get("result")))
    return [newest]


def count_predictions(task: dict[str, Any], tally: Tally) -> None:
    """Count the regions of a task's predictions as skipped: only annotations are exported."""
    reason = "region of a prediction (only annotations are exported)"
    predictions = _entries(task, "predictions", lost=lambda _, n: tally.skip(reason, n=n))
    tally.skip(reason, n=sum(count_regions(p.get("result")) for p in predictions))


def image_reference(task: dict[str, Any], image_key: str | None) -> str | None:
    """The image URL or path of a task: ``data[image_key]``, else ``data["image"]``, else the first string."""
    data = task["data"]
    for key in (image_key, "image", "img"):
        if key and isinstance(data.get(key), str):
            return data[key]
    if image_key:
        return None
    for value in data.values():
        if isinstance(value, str) and ("/" in value or "." in value):
            return value
    return None


def reference_file_name(ref: str) -> str:
    """The file name a reference stands for, URL-decoded (spaces and non-ASCII characters survive).

    >>> reference_file_name("/data/upload/3/abc123-my%20cat.jpg")
    'abc123-my cat.jpg'
    >>> reference_file_name("/data/local-files/?d=folder/k%C3%B6nig.jpg")
    'könig.jpg'
    >>> reference_file_name("https://example.com/a/b.png?X-Amz-Signature=1")
    'b.png'
    """
    return Path(reference_relative_path(ref)).name or "image"


def reference_relative_path(ref: str) -> str:
    """The path part that names the file: ``d=`` of a local-files URL, else the URL path, URL-decoded.

    >>> reference_relative_path("/data/local-files/?d=folder/x%201.jpg")
    'folder/x 1.jpg'
    >>> reference_relative_path("/data/upload/3/abc-x.jpg")
    '3/abc-x.jpg'
    """
    try:
        parts = urlsplit(ref)
    except ValueError:  # e.g. "http://[": not a URL, and no file name in it either
        return ""
    if parts.path.rstrip("/").endswith("/data/local-files"):
        d = parse_qs(parts.query).get("d")
        if d:
            return d[0]  # parse_qs already URL-decodes
    path = unquote(parts.path)
    for prefix in ("/data/upload/", "data/upload/"):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path.lstrip("/")
