"""The JSON body of a request from Label Studio, parsed without what the backend never reads.

With every click Label Studio sends the whole task: every annotation, draft and prediction it holds, each
brush region with its RLE, a list of up to hundreds of thousands of small integers. A task of 50 brush
regions on a 3000 x 2000 photo, once in an annotation and once in a draft, is ~4 MB of JSON; ``json.loads``
turns it into millions of Python ints in ~60 ms before the click can start (orjson: ~30 ms). The backend
reads none of them (a click's prompt is in ``params.context``, boxes to masks read rectangles), so the RLE
lists are emptied in the raw bytes first, found with ``bytes.find`` (memchr speed): ~1 ms for those 4 MB.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_request_body", "without_brush_rle"]

_KEY = b'"rle"'
_SPACE = b" \t\r\n"
# What a brush RLE list holds between its brackets: integers, commas, whitespace.
_RLE_BYTES = b"0123456789," + _SPACE


def _skip_space(raw: bytes, at: int) -> int:
    while at < len(raw) and raw[at] in _SPACE:
        at += 1
    return at


def _is_key(raw: bytes, at: int) -> bool:
    # A key follows "{" or "," (and whitespace): a '"rle"' inside a string has its quotes escaped.
    at -= 1
    while at >= 0 and raw[at] in _SPACE:
        at -= 1
    return at >= 0 and raw[at] in b"{,"


def without_brush_rle(raw: bytes) -> bytes:
    """``raw`` JSON with the value of every ``"rle"`` key that is a list of integers replaced by ``[]``.

    Anything else is left as it is: an ``"rle"`` inside a string, an ``"rle"`` that is not a list of
    integers, malformed JSON (which ``json.loads`` then refuses as before).

    >>> without_brush_rle(b'{"value": {"format": "rle", "rle": [0, 4, 66, 8], "brushlabels": ["cat"]}}')
    b'{"value": {"format": "rle", "rle": [], "brushlabels": ["cat"]}}'
    >>> without_brush_rle(b'{"text": "\\\\"rle\\\\": [1, 2]"}')
    b'{"text": "\\\\"rle\\\\": [1, 2]"}'
    """
    pieces: list[bytes] = []
    kept = 0
    # Every byte is looked at a bounded number of times, whatever the body (nested or malformed "rle" keys):
    # the first "]" after a list is found once and reused by the keys before it, and a list is checked for
    # anything but integers only up to its first quote, which ends the part that no other key shares.
    closing = -1
    at = raw.find(_KEY)
    while at != -1:
        after = at + len(_KEY)
        colon = _skip_space(raw, after)
        if colon < len(raw) and raw[colon] == ord(":") and _is_key(raw, at):
            start = _skip_space(raw, colon + 1)
            if start < len(raw) and raw[start] == ord("["):
                if start >= closing:
                    found = raw.find(b"]", start)
                    closing = found if found != -1 else len(raw)
                if (
                    closing < len(raw)
                    and raw.find(b'"', start, closing) == -1
                    and not raw[start + 1 : closing].translate(None, _RLE_BYTES)
                ):
                    pieces.append(raw[kept : start + 1])
                    kept = closing
                    after = closing
        at = raw.find(_KEY, after)
    if not pieces:
        return raw
    pieces.append(raw[kept:])
    return b"".join(pieces)


def parse_request_body(raw: bytes) -> Any:
    """``raw`` parsed as JSON, brush RLE lists emptied (see the module docstring).

    Raises:
        ValueError: ``raw`` is not JSON or not UTF-8, or nests deeper than the parser's recursion limit.
    """
    # The standard parser, not orjson: orjson reads an integer beyond 64 bits (a task id is whatever the
    # client sent) as a float, silently. With the RLE gone the body is small: ~1 ms either way.
    try:
        return json.loads(without_brush_rle(raw))
    except RecursionError:
        raise ValueError("the JSON nests too deep") from None
