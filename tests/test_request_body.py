"""label_anything.labelstudio.request_body: brush RLE lists emptied in the raw bytes, nothing else changed."""

from __future__ import annotations

import doctest
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from label_anything.labelstudio import request_body
from label_anything.labelstudio.request_body import parse_request_body, without_brush_rle
from label_anything.labelstudio.rle import brush_rle_encode


def emptied(value: Any) -> Any:
    """What the backend must see: ``value`` with every ``"rle"`` that is a list of ints made ``[]``."""
    if isinstance(value, dict):
        return {
            k: [] if k == "rle" and isinstance(v, list) and all(type(i) is int and i >= 0 for i in v) else emptied(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [emptied(v) for v in value]
    return value


def brush(mask: np.ndarray, rid: str) -> dict:
    h, w = mask.shape
    return {"id": rid, "type": "brushlabels", "from_name": "brush", "to_name": "image", "original_width": w,
            "original_height": h, "value": {"format": "rle", "rle": brush_rle_encode(mask), "brushlabels": ["cat"]}}


def click_body() -> dict:
    """A /predict body as Label Studio sends it for a click on a task that already holds brush regions."""
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:40, 20:70] = True
    stored = [brush(np.roll(mask, k, axis=1), f"r{k}") for k in range(5)]
    text = {"id": "t1", "type": "textarea", "from_name": "notes", "to_name": "image",
            "value": {"text": ['see "rle": [1, 2, 3] and {"rle":[4]}']}}
    task = {"id": 3, "data": {"image": "/data/upload/1/cat.jpg", "rle": [9, 9]},
            "annotations": [{"id": 1, "result": [*stored, text]}], "drafts": [{"id": 2, "result": stored}],
            "predictions": [{"result": [{"value": {"rle": "not a list"}}, {"value": {"rle": [1, -2]}}]}]}
    keypoint = {"id": "k1", "type": "keypointlabels", "from_name": "kp", "to_name": "image",
                "original_width": 80, "original_height": 60,
                "value": {"x": 50.0, "y": 40.0, "width": 0.5, "keypointlabels": ["cat"]}, "is_positive": True}
    return {"tasks": [task], "project": "1.17", "label_config": "<View/>",
            "params": {"login": None, "password": None, "context": {"result": [keypoint]}}}


@pytest.mark.parametrize("dumps", [
    lambda b: json.dumps(b),
    lambda b: json.dumps(b, separators=(",", ":")),
    lambda b: json.dumps(b, indent=2),
], ids=["default", "compact", "indented"])
def test_a_click_body_parses_with_only_its_rle_lists_emptied(dumps) -> None:
    body = click_body()
    raw = dumps(body).encode()
    parsed = parse_request_body(raw)
    assert parsed == emptied(body)
    assert parsed["tasks"][0]["annotations"][0]["result"][0]["value"]["rle"] == []
    # left alone: the text that mentions "rle", the string value, the list with a negative number, the context
    assert parsed["tasks"][0]["annotations"][0]["result"][-1] == body["tasks"][0]["annotations"][0]["result"][-1]
    assert parsed["tasks"][0]["predictions"] == body["tasks"][0]["predictions"]
    assert parsed["params"] == body["params"]
    assert len(without_brush_rle(raw)) < len(raw) / 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.text(alphabet='"rle:[]{},\\ 0123', max_size=12),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["rle", "value", "x", '"rle"', "rle "]), inner, max_size=4)
    | st.fixed_dictionaries({"rle": st.lists(st.integers(0, 10**6), max_size=6)}),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(json_values, st.sampled_from([None, 2]), st.booleans())
def test_any_json_parses_as_json_loads_then_emptied(value, indent, compact) -> None:
    raw = json.dumps(value, indent=indent, separators=(",", ":") if compact else None).encode()
    assert parse_request_body(raw) == emptied(value)


def test_malformed_json_is_still_refused() -> None:
    for raw in (b'{"rle": [1, 2', b'{"rle": [1, 2]', b"not json", b'{"rle" [1]}', "é".encode("latin-1")):
        with pytest.raises(ValueError):
            parse_request_body(raw)


def test_docstring_examples_run() -> None:
    assert doctest.testmod(request_body).failed == 0


def test_integers_beyond_64_bits_still_parse() -> None:
    # orjson would read it as a float; a task id is whatever the client sent.
    assert parse_request_body(b'{"tasks": [{"id": 18446744073709551617}]}') == {"tasks": [{"id": 2**64 + 1}]}


class CountingBytes(bytes):
    """Bytes that count how many bytes ``find`` scans and slicing copies (the work of ``without_brush_rle``)."""

    work = 0

    def find(self, sub, start=None, end=None):
        start = 0 if start is None else start
        found = super().find(sub, start, end)
        CountingBytes.work += (found if found != -1 else (len(self) if end is None else end)) - start
        return found

    def __getitem__(self, key):
        part = super().__getitem__(key)
        CountingBytes.work += len(part) if isinstance(part, bytes) else 1
        return part


@pytest.mark.parametrize("body", [
    b'{"a": ' + b'{"rle": [' * 20_000 + b"1" + b"]}" * 20_000 + b"}",  # nested: each key's first "]" is far
    b'{"rle": [1, ' * 20_000,  # malformed: lists never closed
    b'[' + b'{"rle": [1, 2, "x"]}, ' * 20_000 + b"1]",  # lists that are not lists of integers
    b'{"rle": [' + b"1, " * 100_000 + b'"rle": [' * 10_000,  # a long integer run, then keys, no "]"
], ids=["nested", "unclosed", "not-integers", "long-run-unclosed"])
def test_work_is_linear_in_the_body_whatever_its_keys(body) -> None:
    CountingBytes.work = 0
    out = without_brush_rle(CountingBytes(body))
    assert CountingBytes.work <= 6 * len(body) + 1000, (CountingBytes.work, len(body))
    assert len(out) <= len(body)


def test_nesting_too_deep_is_refused_as_not_json() -> None:
    with pytest.raises(ValueError, match="nests too deep"):
        parse_request_body(b"[" * 200_000 + b"]" * 200_000)
