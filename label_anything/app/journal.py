"""The progress journal of the batch commands (``OUT.partial.jsonl``) and the atomic write of their output.

``boxes-to-masks`` and ``concepts-to-masks`` append one JSON line per finished image, written whole (newline
last) and fsync'ed; a rerun reads the file and skips the images it lists. The first line is the run's
fingerprint (model, options, input): the caller decides what a file of another run means (start over, or
refuse). A kill can tear the last line at any byte: ``open_journal`` cuts the file back to the end of its
last complete record before appending, so any number of interruptions lose at most the image in flight
each time. The output itself is written once, at the end, to a temporary file renamed over OUT.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

R = TypeVar("R")

RecordParser = Callable[[Any], "tuple[str, R] | None"]
"""A journal line's JSON value → (image key, record), or None when it is not a well-formed record."""


def partial_path(out: Path) -> Path:
    """The sidecar progress file of ``out``: ``OUT.partial.jsonl`` next to it."""
    return out.with_name(out.name + ".partial.jsonl")


@dataclass
class Journal(Generic[R]):
    """What a progress file holds for this run."""

    done: dict[str, R]  # image key → its record (the last one, when an image has several)
    end: int  # byte offset just past the last complete record (or the header); 0: no usable header
    other: dict[str, Any] | None = None  # the fingerprint of another run, when the file holds one


def read_journal(path: Path, fingerprint: dict[str, Any], parse: RecordParser) -> Journal:
    """The finished images of earlier runs, and where the file's trustworthy part ends.

    A file whose header is torn (or missing) holds nothing; a file of another run holds nothing for this one
    (``other`` says whose it is). A line counts only once its newline is written; lines that do not parse as
    records are skipped, wherever they are, so damage never hides the records after it.
    """
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return Journal({}, 0)
    with f:
        header = f.readline()
        found = _header_fingerprint(header) if header.endswith(b"\n") else None
        if found is None:
            return Journal({}, 0)
        if found != fingerprint:
            return Journal({}, 0, other=found)
        done: dict[str, Any] = {}
        offset = end = len(header)
        for line in f:
            offset += len(line)
            parsed = _parse_line(line, parse) if line.endswith(b"\n") else None
            if parsed is not None:
                done[parsed[0]] = parsed[1]
                end = offset
    return Journal(done, end)


def _header_fingerprint(line: bytes) -> dict[str, Any] | None:
    try:
        header = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return None
    fingerprint = header.get("fingerprint") if isinstance(header, dict) else None
    return fingerprint if isinstance(fingerprint, dict) else None


def _parse_line(line: bytes, parse: RecordParser) -> tuple[str, Any] | None:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return parse(value)


def open_journal(path: Path, fingerprint: dict[str, Any], end: int) -> IO[bytes]:
    """The progress file open for appending after its last complete record (``Journal.end``); with ``end`` 0,
    a new file holding only the header.

    A torn tail is cut off first: appending after it would glue the next record to it, and both be lost.
    """
    if end == 0:
        f = path.open("wb")
        f.write((json.dumps({"fingerprint": fingerprint}) + "\n").encode("utf-8"))
        sync(f)
        return f
    f = path.open("r+b")
    f.truncate(end)
    f.seek(end)
    sync(f)
    return f


def append_record(f: IO[bytes], record: dict[str, Any]) -> None:
    """One record as one line, written whole and fsync'ed: a crash loses at most the image in flight."""
    f.write((json.dumps(record) + "\n").encode("utf-8"))
    sync(f)


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fingerprint fields that differ between two runs, for the message that says why they cannot mix."""
    return [key for key in dict.fromkeys([*new, *old]) if old.get(key) != new.get(key)]


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
