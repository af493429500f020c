"""``label-anything convert`` on random, often broken, Label Studio exports, through the real CLI entry.

Whatever the export holds (degenerate or huge polygons, NaN / inf / negative coordinates, brush RLE of
another size or truncated, bitmask PNGs of another size, cut, not PNG or not base64, unknown types, missing
fields, values of the wrong JSON type, several annotations, images of the wrong size, unreadable or
EXIF-rotated), the command either

- exits 0, and every region of the export is an annotation written or a count in the summary
  (regions in = annotations + "not converted" + "skipped"), and every annotation loads in pycocotools
  (``annToMask``) or is a valid YOLO-seg line; or
- exits 2 with one line on stderr (an export that is not an export at all);

and never prints a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from label_anything.cli.parser import main
from label_anything.labelstudio.bitmask import DATA_URL_PREFIX, bitmask_encode
from label_anything.labelstudio.rle import brush_rle_encode

pytest.importorskip("pycocotools")

ANSWER = "0123abcdef"  # a smart-click answer's id prefix (see labelstudio.results.answer_of)
IDS = ["a", "b", f"{ANSWER}-mask", f"{ANSWER}-bitmask", f"{ANSWER}-box", f"{ANSWER}-poly-0", f"{ANSWER}-poly-1",
       None, "", 7]
# Numbers that JSON can carry and Python reads as NaN or inf ("nan", "-1e400"), or that are no number at all.
WEIRD = [None, True, "x", "nan", "inf", "-1e400", [], {}, [[1, 2]], -5, 0, 1e308]
LABELS = ["cat", "dog", "könig"]


def weird() -> st.SearchStrategy[Any]:
    return st.sampled_from([*WEIRD, 1e6, -1e6, 1e300, "12.5", -0.0])


@st.composite
def good_value(draw: st.DrawFn, kind: str, w: int, h: int) -> dict[str, Any]:
    """A value as Label Studio writes it (what mutations then break)."""
    labels = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=2))
    if kind == "brushlabels":
        mask = np.array(draw(st.lists(st.booleans(), min_size=w * h, max_size=w * h)), dtype=bool).reshape(h, w)
        return {"format": "rle", "rle": brush_rle_encode(mask), "brushlabels": labels}
    if kind == "bitmasklabels":
        mask = np.array(draw(st.lists(st.booleans(), min_size=w * h, max_size=w * h)), dtype=bool).reshape(h, w)
        return {"imageDataURL": bitmask_encode(mask), "bitmasklabels": labels}
    if kind == "polygonlabels":
        points = draw(st.one_of(
            st.lists(st.lists(st.floats(-5, 105), min_size=2, max_size=2), min_size=3, max_size=7),
            st.just([[10, 10], [20, 20], [30, 30]]),  # collinear
            st.just([[5.01, 5.01], [5.02, 5.01], [5.015, 5.02]]),  # sub-pixel
            st.just([[-1e300, 50], [1e300, 50], [50, 1e300]]),  # huge
        ))
        return {"points": points, "closed": True, "polygonlabels": labels}
    box = {k: draw(st.floats(-10, 110)) for k in ("x", "y", "width", "height")}
    return {**box, "rotation": draw(st.sampled_from([0, 0, 30, -90, 400])), "rectanglelabels": labels}


@st.composite
def mutated(draw: st.DrawFn, region: dict[str, Any], w: int, h: int) -> Any:
    """The region with one thing broken, as an export edited by hand or by another tool could be."""
    value = region.get("value")
    how = draw(st.sampled_from(["type", "size", "value", "field", "region"] if not isinstance(value, dict) else
                               ["type", "size", "value", "labels", "field", "number", "rle", "points", "png",
                                "region"]))
    if how == "type":
        region["type"] = draw(st.sampled_from(["labels", "choices", "keypointlabels", None, ["brushlabels"], 3]))
    elif how == "size":
        key = draw(st.sampled_from(["original_width", "original_height"]))
        region[key] = draw(st.sampled_from([w + 1, h + 1, "x", None, 0, -3, 10**9, "1e400", True, 2.5]))
    elif how == "value":
        region["value"] = draw(st.sampled_from([None, [value], "value", 5]))
    elif how == "labels":
        key = next((k for k in value if k.endswith("labels")), "labels")
        value[key] = draw(st.sampled_from([[], None, "cat", [["nested"]], [3], [{"a": 1}]]))
    elif how == "field":
        target = value if isinstance(value, dict) and draw(st.booleans()) else region
        if target:
            target.pop(draw(st.sampled_from(sorted(target))))
    elif how == "number" and "x" in value:
        value[draw(st.sampled_from(["x", "y", "width", "height", "rotation"]))] = draw(weird())
    elif how == "rle" and "rle" in value:
        rle = value["rle"]
        other = brush_rle_encode(np.ones((h + 1, w), dtype=bool))
        value["rle"] = draw(st.sampled_from([rle[: len(rle) // 2], rle[:3], other, [300, -1], [1.5, 2], "abc"]))
        value["format"] = draw(st.sampled_from(["rle", "rle", "png", None]))
    elif how == "png" and "imageDataURL" in value:
        value["imageDataURL"] = draw(broken_png(value["imageDataURL"], w, h))
    elif how == "points" and "points" in value:
        points = value["points"]
        nan = [[10, "nan"], [20, 30], [40, 50]]
        value["points"] = draw(st.sampled_from([points[:2], nan, [[1e308, 1e308], *points], [[1, 2, 3]], "points",
                                                3, []]))
    elif how == "region":
        return draw(st.sampled_from([None, "result", 5, []]))
    return region


@st.composite
def broken_png(draw: st.DrawFn, url: str, w: int, h: int) -> Any:
    """A bitmask's imageDataURL broken as a hand edit or another tool could: cut, another size, not a PNG..."""
    if not isinstance(url, str):  # broken before
        url = bitmask_encode(np.ones((h, w), dtype=bool))
    try:
        raw = base64.b64decode(url[len(DATA_URL_PREFIX):])
    except ValueError:  # cut before
        raw = b"\x89PNG\r\n\x1a\n"
    opaque = io.BytesIO()
    Image.new("RGB", (w, h)).save(opaque, "PNG")  # no alpha: all of it is the region, as the browser shows it
    jpeg = io.BytesIO()
    Image.new("RGB", (w, h)).save(jpeg, "JPEG")
    cut = draw(st.integers(0, len(raw)))
    return draw(st.sampled_from([
        url[: len(DATA_URL_PREFIX) + (len(url) - len(DATA_URL_PREFIX)) // 2],  # cut inside the base64
        DATA_URL_PREFIX + base64.b64encode(raw[:cut]).decode(),  # cut PNG
        DATA_URL_PREFIX + base64.b64encode(raw[:40] + b"\0" * 20 + raw[60:]).decode(),  # damaged PNG
        bitmask_encode(np.ones((h + 1, w), dtype=bool)),
        DATA_URL_PREFIX + base64.b64encode(opaque.getvalue()).decode(),
        DATA_URL_PREFIX + base64.b64encode(jpeg.getvalue()).decode(),
        url[len(DATA_URL_PREFIX):], "data:image/png;base64,%%%", "", None, 5, [url], {"png": url},
    ]))


@st.composite
def result(draw: st.DrawFn, w: int, h: int) -> Any:
    kind = draw(st.sampled_from(["brushlabels", "bitmasklabels", "polygonlabels", "rectanglelabels"]))
    region: dict[str, Any] = {"id": draw(st.sampled_from(IDS)), "type": kind, "from_name": "tag",
                              "to_name": "image", "original_width": w, "original_height": h,
                              "value": draw(good_value(kind, w, h))}
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        region = draw(mutated(region, w, h))
        if not isinstance(region, dict):
            break
    return region


@st.composite
def annotation(draw: st.DrawFn, w: int, h: int) -> Any:
    results = draw(st.one_of(*[st.lists(result(w, h), min_size=1, max_size=5)] * 6,
                             st.sampled_from([None, [], {}, "r", 3])))
    cancelled = draw(st.sampled_from([False] * 5 + [True]))
    entry = {"id": draw(st.integers(1, 5)), "result": results, "was_cancelled": cancelled,
             "created_at": draw(st.sampled_from(["2024-01-01T10:00:00Z", "2025-02-03T00:00:00Z", "garbage", None]))}
    return draw(st.sampled_from([entry] * 10 + [None, "annotation"]))


@st.composite
def image_file(draw: st.DrawFn, w: int, h: int) -> tuple[str, bytes] | None:
    """What lies in --images-root for a task: nothing, the right size, another size, garbage, EXIF-rotated."""
    what = draw(st.sampled_from(["none", "good", "good", "small", "garbage", "rotated"]))
    if what == "none":
        return None
    if what == "garbage":
        return "png", b"not an image"
    out = io.BytesIO()
    if what == "rotated":  # stored h x w, shown w x h
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.new("RGB", (h, w), (200, 30, 30)).save(out, format="JPEG", exif=exif)
        return "jpg", out.getvalue()
    size = (w, h) if what == "good" else (w + 2, h)
    Image.new("RGB", size, (10, 200, 10)).save(out, format="PNG")
    return "png", out.getvalue()


@st.composite
def task_case(draw: st.DrawFn, index: int) -> tuple[Any, tuple[str, bytes] | None]:
    w, h = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    picture = draw(image_file(w, h))
    suffix = picture[0] if picture else "png"
    ref = draw(st.sampled_from([f"/data/upload/1/img{index}.{suffix}"] * 6 + [
        "http://[", "/x/..", "", 42, "a\x00b.png", "/x/" + "n" * 300 + ".png", None]))
    annotations = draw(st.one_of(*[st.lists(annotation(w, h), min_size=1, max_size=3)] * 8,
                                 st.sampled_from([None, [], {}, "a"])))
    predictions = draw(st.sampled_from([[], None, [{"result": [{"id": "p", "type": "brushlabels"}]}], ["p"]]))
    task: Any = {"id": draw(st.sampled_from([index + 1, index + 1, 1, -1, "t", None, 2**70])), "data": {"image": ref},
                 "annotations": annotations, "predictions": predictions}
    return task, picture if isinstance(ref, str) and ref.startswith("/data/upload/1/img") else None


@st.composite
def export_case(draw: st.DrawFn) -> dict[str, Any]:
    cases = [draw(task_case(i)) for i in range(draw(st.integers(1, 4)))]
    if draw(st.integers(0, 19)) == 0:
        cases.append((draw(st.sampled_from([[], "task", {"no": "data"}, {"data": []}])), None))
    args = draw(st.sampled_from([[], ["--to", "coco-polygon"], ["--to", "yolo-seg"], ["--all-annotations"],
                                 ["--keep-duplicates"], ["--boxes-as-masks"], ["--skip-boxes"],
                                 ["--classes", "cat"], ["--val-ratio", "0.5"]]))
    return {"tasks": [t for t, _ in cases], "images": [p for _, p in cases], "args": args}


# -- the reference count of regions ---------------------------------------------------------------------------
def regions_in(entries: Any) -> int:
    """Regions of a list of annotations (or predictions), as the export defines them: results sharing an id are
    one region; a value of the wrong JSON type where a list or an object belongs counts as one region."""
    if entries is None:
        return 0
    if not isinstance(entries, list):
        return 1
    total = 0
    for entry in entries:
        if not isinstance(entry, dict):
            total += 1
            continue
        results = entry.get("result")
        if results is None:
            continue
        if not isinstance(results, list):
            total += 1
            continue
        keys = set()
        for i, r in enumerate(results):
            ident = r.get("id") if isinstance(r, dict) else None
            named = (isinstance(ident, str) and ident) or (isinstance(ident, int) and not isinstance(ident, bool)
                                                           and ident)
            keys.add(f"id:{ident}" if named else f"#{i}")
        total += len(keys)
    return total


def counted(stdout: str, prefix: str) -> int:
    return sum(int(n) for n in re.findall(rf"^  {re.escape(prefix)}: (\d+) × ", stdout, flags=re.MULTILINE))


def check_coco(out: Path) -> None:
    from pycocotools.coco import COCO

    for path in sorted((out / "annotations").glob("*.json")):
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while it loads
            coco = COCO(str(path))
        images = coco.imgs
        for ann in coco.loadAnns(coco.getAnnIds()):
            image = images[ann["image_id"]]
            x, y, bw, bh = ann["bbox"]
            assert x >= 0 and y >= 0 and bw > 0 and bh > 0, ann
            assert x + bw <= image["width"] + 1e-6 and y + bh <= image["height"] + 1e-6, (ann, image)
            if path.name == "boxes.json":
                assert "segmentation" not in ann
                continue
            mask = coco.annToMask(ann)
            assert mask.shape == (image["height"], image["width"]) and mask.any(), ann
            if isinstance(ann["segmentation"], dict):
                assert ann["area"] == int(mask.sum())


def check_yolo(out: Path) -> None:
    n_classes = int(re.search(r"^nc: (\d+)$", (out / "data.yaml").read_text(), flags=re.MULTILINE)[1])
    for label in (out / "labels").glob("*.txt"):
        for line in label.read_text().splitlines():
            parts = line.split()
            assert 0 <= int(parts[0]) < n_classes
            coords = np.array(parts[1:], dtype=float)
            assert len(coords) >= 6 and len(coords) % 2 == 0 and ((coords >= 0) & (coords <= 1)).all(), line


def convert_cli(case: dict[str, Any], tmp: Path) -> tuple[int, str, str]:
    export = tmp / "export.json"
    export.write_text(json.dumps(case["tasks"]), encoding="utf-8")
    images = tmp / "images-in" / "1"
    images.mkdir(parents=True)
    for i, picture in enumerate(case["images"]):
        if picture is not None:
            (images / f"img{i}.{picture[0]}").write_bytes(picture[1])
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            rc = main(["convert", str(export), "--out", str(tmp / "out"), "--images-root", str(tmp / "images-in"),
                       "--no-download", "--no-progress", *case["args"]])
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, stdout.getvalue(), stderr.getvalue()


def is_export(tasks: list[Any]) -> bool:
    """Whether the file is a Label Studio export at all: valid JSON (no NaN), and every item a task."""
    try:
        json.dumps(tasks, allow_nan=False)
    except ValueError:
        return False
    return all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks)


def check_case(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rc, stdout, stderr = convert_cli(case, tmp)
        assert "Traceback" not in stdout + stderr
        event(f"exit {rc}")
        if rc == 2:
            assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("label-anything"), stderr
            assert not is_export(case["tasks"]), stderr
            return
        assert rc == 0, stderr
        written = int(re.search(r"images \(\d+ copied to .*\), (\d+) annotations", stdout)[1])
        boxes = tmp / "out" / "annotations" / "boxes.json"
        regions = sum(regions_in(t.get(k)) for t in case["tasks"] for k in ("annotations", "predictions"))
        assert regions == written + counted(stdout, "not converted") + counted(stdout, "skipped"), stdout
        event("annotations written" if written else "no annotation written")
        event("an image copied" if re.search(r"images \([1-9]", stdout) else "no image copied")
        if "--to" in case["args"] and "yolo-seg" in case["args"]:
            check_yolo(tmp / "out")
        else:
            check_coco(tmp / "out")
            if boxes.exists():
                assert "written to annotations/boxes.json" in stdout


def _task(results: list[Any]) -> dict[str, Any]:
    return {"id": 1, "data": {"image": "/data/upload/1/img0.png"}, "annotations": [{"id": 1, "result": results}]}


def _poly(points: Any, rid: str = "p", w: int = 8, h: int = 6) -> dict[str, Any]:
    return {"id": rid, "type": "polygonlabels", "original_width": w, "original_height": h,
            "value": {"points": points, "polygonlabels": ["cat"]}}


def _rect(rid: str = "r", w: int = 8, h: int = 6, **value: Any) -> dict[str, Any]:
    return {"id": rid, "type": "rectanglelabels", "original_width": w, "original_height": h,
            "value": {"x": 10, "y": 10, "width": 50, "height": 50, "rectanglelabels": ["cat"], **value}}


def _case(tasks: list[Any], args: list[str] | None = None) -> dict[str, Any]:
    return {"tasks": tasks, "images": [None] * len(tasks), "args": args or []}


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(export_case())
# What the code before this test did with each (found by it, or by reading the code it pointed at):
@example(_case([_task([_poly([["nan", 1], [2, 3], [4, 5]])])]))  # NaN point: killed for memory (pycocotools)
@example(_case([_task([_poly([[1e300, 5], [-1e300, 5], [20, 1e300]])])]))  # huge polygon: killed for memory
@example(_case([_task([_poly([[10, 10], [50, 10], [50, 50]]) | {"original_width": 10**6,
                                                              "original_height": 10**6}])]))  # segfault
@example(_case([_task([_rect(x="nan")])]))  # NaN bbox written: ann.json was not valid JSON
@example(_case([_task([{"id": "v", "type": "polygonlabels", "value": ["not", "a", "dict"],
                        "original_width": 8, "original_height": 6}])]))  # traceback (labels of a list value)
@example(_case([_task([_poly([[10, 10], [20, 20], [30, 30]], rid="l"), _rect()])]))  # traceback: empty mask
@example(_case([{"id": 1, "data": {"image": "http://["}, "annotations": [{"result": [_rect()]}]}]))  # traceback
@example(_case([{"id": 1, "data": {"image": "/x/a.png"}, "annotations": [{"result": 5}]}]))  # traceback
@example(_case([{"id": 1, "data": {"image": "/x/a.png"}, "annotations": 3}]))  # traceback
@example(_case([{"id": 2**70, "data": {"image": "/x/a.png"}, "annotations": []}]))  # valid JSON refused, 3 lines
@example(_case([_task([_rect(x="abc")])]))  # already counted; kept as the non-number case
@example(_case([_task([{"id": f"{ANSWER}-bitmask", "type": "bitmasklabels", "original_width": 8, "original_height": 6,
                        "value": {"imageDataURL": bitmask_encode(np.ones((7, 8), bool)), "bitmasklabels": ["cat"]}},
                       _rect(rid=f"{ANSWER}-box")])]))  # a bitmask of another size, with its answer's box
@example(_case([_task([_rect(rotation="inf")])]))
@example(_case([_task([_poly([[10, 10], [50, 10], [50, 50]]) | {"original_width": "1e400"}])]))
@example(_case([{"id": 1, "data": {"image": "/x/a.png"}, "annotations": [{"result": [{"id": [1], "type": ["x"]}]}]}]))
def test_convert_never_crashes_and_counts_every_region(case: dict[str, Any]) -> None:
    check_case(case)


def test_invalid_json_is_one_line(tmp_path: Path) -> None:
    """yajl's error messages span lines; the command's error is one."""
    export = tmp_path / "e.json"
    export.write_text('[{"data": {"image": "a.png"}, "annotations": [{"result": [NaN]}]}]')
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["convert", str(export), "--out", str(tmp_path / "o"), "--no-download", "--no-progress"])
    assert rc == 2 and len(stderr.getvalue().strip().splitlines()) == 1 and "not valid JSON" in stderr.getvalue()
