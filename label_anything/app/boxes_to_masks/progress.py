"""The progress file of ``boxes-to-masks`` (``OUT.partial.jsonl``) and the final, atomic write of OUT.

After each image its results are appended as one JSON line; a rerun reads the file and skips the images it
lists. The first line is the run's fingerprint (model, format, input file, image folder): a file of another
run is started over. A kill can tear the last line at any byte: the rerun cuts the file back to the end of
its last complete record before appending, so any number of interruptions lose at most the image in flight
each time. The file handling itself is ``app.journal``'s, shared with ``concepts-to-masks``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from label_anything.app.journal import id_key, open_journal, partial_path, read_journal, sync, write_json_atomic

__all__ = [
    "PROGRESS_VERSION",
    "ImageRecord",
    "Progress",
    "id_key",
    "open_progress",
    "partial_path",
    "read_progress",
    "run_fingerprint",
    "sync",
    "write_json_atomic",
]

log = logging.getLogger(__name__)

PROGRESS_VERSION = 2
"""Version of the progress file's records; a file of another version is started over."""


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
    journal = read_journal(path, fingerprint, _parse_record)
    if journal.other is not None:
        log.warning("%s belongs to another run (model, format, input or image folder changed): starting over",
                    path)
    return Progress(journal.done, journal.end)


def _parse_record(record: Any) -> tuple[str, ImageRecord] | None:
    """(image id key, record) of one progress line's JSON value, or None when it is not a well-formed record."""
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
    return progress.done, open_journal(path, fingerprint, progress.end)
