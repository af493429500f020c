"""Property test of ``boxes-to-masks`` over hostile COCO files: whatever the file holds, the command either
writes a file in which every box is segmented or counted under a reason, or refuses with one line; never a
traceback, and never an RLE whose size disagrees with its image entry.

The real command line runs in this process (``cli.main``) with the classical engine: no weights, a few
milliseconds a box on these small images.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from PIL import Image

mask_utils = pytest.importorskip("pycocotools.mask")
pycocotools_coco = pytest.importorskip("pycocotools.coco")

# file name → (stored height, width, displayed height, width); None: not an image
FILES: dict[str, tuple[int, int, int, int] | None] = {
    "a.png": (30, 40, 30, 40),
    "sideways.jpg": (24, 36, 36, 24),  # EXIF orientation 6
    "broken.png": None,
    "missing.png": None,
    "sub": None,  # a folder
}


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-images")
    pixels = np.full((30, 40, 3), 40, np.uint8)
    pixels[8:22, 10:30] = 220
    Image.fromarray(pixels).save(folder / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(pixels[:24, :36])).save(folder / "sideways.jpg", quality=95, exif=exif)
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "sub").mkdir()
    return folder


JUNK: list[Any] = [None, -1, 0, 3, "", "x", "12", [], [1, 2], {}, {"a": 1}, True, 2.5]
ODD_IDS: list[Any] = ["1", "x", 2.0, None, [1], True]
ODD_NUMBERS: list[Any] = [0, -5.0, 1e300, -1e300, 1e-300, math.nan, math.inf, -math.inf, True, "3"]
SIZES = ["displayed"] * 6 + ["stored", "wrong", "missing", "one missing", "junk"]


def sometimes(r: random.Random, odds: float = 0.12) -> bool:
    """True now and then: mostly plausible files, with a fault here and there, so that faults meet work in
    progress rather than an empty file."""
    return r.random() < odds


def random_bbox(r: random.Random) -> Any:
    if sometimes(r, 0.15):
        return r.choice([*JUNK, [r.uniform(0, 20) for _ in range(r.randint(0, 5))], ["1", "2", "3", "4"]])
    box: list[Any] = [r.uniform(-15, 45), r.uniform(-15, 35), r.uniform(-3, 40), r.uniform(-3, 30)]
    if sometimes(r, 0.3):
        box = [round(v) for v in box]
    if sometimes(r, 0.2):
        box[r.randrange(4)] = r.choice(ODD_NUMBERS)
    return box


def random_image(r: random.Random, position: int) -> Any:
    if sometimes(r, 0.08):
        return r.choice(JUNK)
    entry: dict[str, Any] = {}
    if not sometimes(r, 0.08):  # unique ids, but now and then one repeated, or of an odd type
        entry["id"] = r.choice([r.randint(1, max(1, position)), *ODD_IDS]) if sometimes(r) else position + 1
    if not sometimes(r, 0.08):
        names = ["a.png", "a.png", "sideways.jpg", "sideways.jpg", *FILES]
        entry["file_name"] = r.choice(JUNK) if sometimes(r, 0.05) else r.choice(names)
    sizes = FILES.get(entry["file_name"]) if isinstance(entry.get("file_name"), str) else None
    how = r.choice(SIZES)
    if how == "junk":
        entry.update(height=r.choice(JUNK), width=r.choice(JUNK))
    elif how != "missing":
        stored_h, stored_w, shown_h, shown_w = sizes or (10, 10, 10, 10)
        h, w = {"stored": (stored_h, stored_w), "wrong": (7, 9)}.get(how, (shown_h, shown_w))
        entry.update(height=h, width=w)
        if how == "one missing":
            del entry[r.choice(["height", "width"])]
    return entry


def random_annotation(r: random.Random, images: int) -> Any:
    if sometimes(r, 0.08):
        return r.choice(JUNK)
    ann: dict[str, Any] = {"category_id": 1}
    if not sometimes(r, 0.15):
        ann["id"] = r.randint(1, 6)  # few: repeated ids are common
    if not sometimes(r, 0.05):
        ann["image_id"] = r.choice([images + 1, *ODD_IDS]) if sometimes(r, 0.1) else r.randint(1, images)
    if not sometimes(r, 0.05):
        ann["bbox"] = random_bbox(r)
    return ann


def random_coco(r: random.Random) -> Any:
    if sometimes(r, 0.05):  # not a COCO file at all
        return r.choice([*JUNK, {"images": []}, {"images": {}, "annotations": []}])
    count = r.randint(1, 4)
    return {"images": [random_image(r, position) for position in range(count)],
            "annotations": [random_annotation(r, count) for _ in range(r.randint(1, 7))],
            "categories": [{"id": 1, "name": "thing"}]}


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON (NaN included, which ``==`` never finds equal)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _run(argv: list[str]) -> tuple[int, str, str]:
    from label_anything.cli.parser import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def _loads_in_pycocotools(dataset: Any) -> Any:
    """A pycocotools COCO of ``dataset``, or None when pycocotools itself cannot index it."""
    api = pycocotools_coco.COCO()
    api.dataset = dataset
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api.createIndex()
    except Exception:  # pycocotools raises whatever the malformed entry makes it raise
        return None
    return api


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(r=st.randoms(use_true_random=True), fmt=st.sampled_from(["rle", "polygon"]))
def test_any_coco_file_is_segmented_counted_or_refused(images_dir, r, fmt):
    coco = random_coco(r)
    note(json.dumps(coco))
    with tempfile.TemporaryDirectory() as tmp:
        coco_path, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        coco_path.write_text(json.dumps(coco))
        code, stdout, stderr = _run(["--log-level", "ERROR", "boxes-to-masks", str(coco_path), "--images",
                                     str(images_dir), "--out", str(out), "--model-name", "classical",
                                     "--format", fmt, "--no-progress"])
        assert "Traceback" not in stderr and "internal error" not in stderr, stderr
        if code == 2:
            lines = [line for line in stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("label-anything"), stderr
            assert not out.exists()
            return
        assert code in (0, 1), (code, stderr)
        summary = json.loads(stdout.strip().splitlines()[-1])
        written = json.loads(out.read_text())
        _check_output(coco, written, summary, code, fmt)


def _check_output(coco: dict, written: dict, summary: dict, code: int, fmt: str) -> None:
    assert _same({k: v for k, v in written.items() if k != "annotations"},
                 {k: v for k, v in coco.items() if k != "annotations"})
    assert len(written["annotations"]) == len(coco["annotations"])
    ids = [img.get("id") for img in coco["images"] if isinstance(img, dict)]
    segmented = 0
    boxes = 0
    for before, after in zip(coco["annotations"], written["annotations"], strict=True):
        is_box = not isinstance(before, dict) or "bbox" in before
        boxes += is_box
        if _same(before, after):
            continue
        assert is_box and isinstance(before, dict), (before, after)  # only boxes ever change
        segmented += 1
        new_fields = ("segmentation", "area", "mask_score")
        assert _same({k: v for k, v in after.items() if k not in new_fields},
                     {k: v for k, v in before.items() if k not in new_fields})
        assert math.isfinite(after["mask_score"])
        # the annotation's image is the one entry of images[] with that id (compared as pycocotools does)
        assert ids.count(before["image_id"]) == 1
        image = next(img for img in coco["images"] if isinstance(img, dict) and "id" in img
                     and img["id"] == before["image_id"])
        shape = _mask_shape(after["segmentation"], image, fmt)
        for key, size in (("height", shape[0]), ("width", shape[1])):
            if key in image:
                assert image[key] == size, (image, after["segmentation"])
    assert segmented == summary["boxes"]
    assert segmented + sum(summary["skipped"].values()) == boxes, summary
    assert code == (1 if summary["skipped"] and not segmented else 0)
    api = _loads_in_pycocotools(coco)
    if api is not None:  # a file pycocotools reads stays one it reads, with masks it can rasterize
        api = _loads_in_pycocotools(written)
        assert api is not None
        for ann in written["annotations"]:
            image = api.imgs[ann["image_id"]] if "mask_score" in ann else {}
            if "height" in image and "width" in image:  # pycocotools needs both to rasterize anything
                assert api.annToMask(ann).shape == (image["height"], image["width"])


def _mask_shape(segmentation: Any, image: dict, fmt: str) -> tuple[int, int]:
    """(height, width) the segmentation is drawn at: the RLE's own size; for polygons, the image entry's size,
    after checking that every vertex lies on that image."""
    if fmt == "rle":
        assert isinstance(segmentation, dict) and segmentation["counts"]
        decoded = mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()})
        return decoded.shape
    assert isinstance(segmentation, list) and segmentation and all(len(p) >= 6 for p in segmentation)
    height, width = image.get("height", math.inf), image.get("width", math.inf)
    for polygon in segmentation:
        assert all(0 <= x <= width for x in polygon[0::2]) and all(0 <= y <= height for y in polygon[1::2])
    return height, width
