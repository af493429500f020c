"""The progress file of ``boxes-to-masks`` (``OUT.partial.jsonl``) and the final, atomic write of OUT.

After each image its results are appended as one JSON line; a rerun reads the file and skips the images it
lists. The first line is the run's fingerprint (model, format, input file, image folder): a file of another
run is started over. A kill can tear the last line at any byte: the rerun cuts the file back to the end of
its last complete record before appending, so any number of interruptions lose at most the image in flight
each time.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

PROGRESS_VERSION = 2
"""Version of the progress file's records; a file of another version is started over."""


def partial_path(out: Path) -> Path:
    """The sidecar progress file of ``out``: ``OUT.partial.jsonl`` next to it."""
    return out.with_name(out.name + ".partial.jsonl")


def run_fingerprint(model_id: str, fmt: str, coco_path: Path, images_dir: Path) -> dict[str, Any]:
    """What identifies a run: a progress file written by another model, format, input or image folder must not
    be mixed into this output."""
    stat = coco_path.stat()
    return {"version": PROGRESS_VERSION, "model": model_id, "format": fmt, "input": str(coco_path.resolve()),
            "input_size": stat.st_size, "input_mtime_ns": stat.st_mtime_ns, "images": str(images_dir.resolve())}


@dataclass
class ImageRecord:
    """One finished image, as its progress line holds it."""

    fields: dict[str, dict[str, Any]]  # annotation index (str) → new fields
    skipped: dict[str, str] = field(default_factory=dict)  # annotation index (str) → why it was not segmented
    as_stored: bool = False  # EXIF orientation ignored (the COCO size is the stored size)

    def to_line(self, image_id: Any) -> bytes:
        record: dict[str, Any] = {"image_id": image_id, "annotations": self.fields}
        if self.skipped:
            record["skipped"] = self.skipped
        if self.as_stored:
            record["as_stored"] = True
        return (json.dumps(record) + "\n").encode("utf-8")


@dataclass
class Progress:
    """What a progress file holds for this run."""

    done: dict[str, ImageRecord]  # image id key (``id_key``) → its record
    end: int  # byte offset just past the last complete record (or the header); 0: no usable header


def read_progress(path: Path, fingerprint: dict[str, Any]) -> Progress:
    """The finished images of earlier runs, and where the file's trustworthy part ends.

    The first line is the run's fingerprint; a file of another run, or whose header is torn, holds nothing.
    A line counts only once its newline is written (the record is written in one piece, newline last); lines
    that do not parse as records are skipped, wherever they are, so damage never hides the records after it.
    """
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return Progress({}, 0)
    with f:
        header = f.readline()
        if not header.endswith(b"\n") or _header_fingerprint(header) is None:
            return Progress({}, 0)
        if _header_fingerprint(header) != fingerprint:
            log.warning("%s belongs to another run (model, format, input or image folder changed): starting over",
                        path)
            return Progress({}, 0)
        done: dict[str, ImageRecord] = {}
        offset = end = len(header)
        for line in f:
            offset += len(line)
            parsed = _parse_record(line) if line.endswith(b"\n") else None
            if parsed is not None:
                done[parsed[0]] = parsed[1]
                end = offset
    return Progress(done, end)


def _header_fingerprint(line: bytes) -> dict[str, Any] | None:
    try:
        header = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return None
    fingerprint = header.get("fingerprint") if isinstance(header, dict) else None
    return fingerprint if isinstance(fingerprint, dict) else None


def _parse_record(line: bytes) -> tuple[str, ImageRecord] | None:
    """(image id key, record) of one progress line, or None when it is not a well-formed record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or "image_id" not in record:
        return None
    fields, skipped = record.get("annotations"), record.get("skipped", {})
    if not isinstance(fields, dict) or not all(_is_index(k) and isinstance(v, dict) for k, v in fields.items()):
        return None
    if not isinstance(skipped, dict) or not all(_is_index(k) and isinstance(v, str) for k, v in skipped.items()):
        return None
    return id_key(record["image_id"]), ImageRecord(fields, skipped, record.get("as_stored") is True)


def _is_index(key: str) -> bool:
    return key.isascii() and key.isdigit()


def open_progress(path: Path, fingerprint: dict[str, Any]) -> tuple[dict[str, ImageRecord], IO[bytes]]:
    """The finished images, and the progress file open for appending after its last complete record.

    A torn tail is cut off first: appending after it would glue the next record to it, and both be lost.
    """
    progress = read_progress(path, fingerprint)
    if progress.end == 0:
        f = path.open("wb")
        f.write((json.dumps({"fingerprint": fingerprint}) + "\n").encode("utf-8"))
        sync(f)
        return {}, f
    f = path.open("r+b")
    f.truncate(progress.end)
    f.seek(progress.end)
    sync(f)
    return progress.done, f


def sync(f: IO[bytes]) -> None:
    """Flush ``f`` and fsync it: what is written survives a crash."""
    f.flush()
    os.fsync(f.fileno())


def id_key(image_id: Any) -> str:
    """A hashable key for an id of any JSON type, that survives the progress file unchanged.

    Numbers are keyed by value, as pycocotools (a Python dict) matches them: 2, 2.0 and true-as-1 are one id.
    """
    if isinstance(image_id, bool | float) and float(image_id).is_integer():
        image_id = int(image_id)
    return json.dumps(image_id, sort_keys=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path`` (never a half file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
