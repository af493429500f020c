"""Label Studio's ``BitmaskLabels`` (a mask as a PNG data URL): the value this backend writes, what the editor
writes, the backend's answer where a label config has the control, and ``convert`` into every format.

What the editor writes (``BitmaskRegion.jsx``): a PNG of the image's natural size, RGBA, black, the region
where alpha > 0 (anti-aliased brush edges included). ``ls_png`` below builds such PNGs.
"""

from __future__ import annotations

import base64
import contextlib
import doctest
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from pycocotools import mask as coco_mask

from label_anything.app.convert.dataset import StrictError, convert
from label_anything.app.convert.images import ImageLocator
from label_anything.labelstudio import bitmask, config, results
from label_anything.labelstudio.bitmask import DATA_URL_PREFIX, BitmaskError, bitmask_decode, bitmask_encode
from label_anything.labelstudio.config import parse_label_config
from label_anything.labelstudio.context import Click
from label_anything.labelstudio.results import OutputError, OutputOptions, answer_of, mask_results, output_controls
from label_anything.labelstudio.rle import brush_rle_decode, brush_rle_encode

skdata = pytest.importorskip("skimage.data")


def horse() -> np.ndarray:
    return ~skdata.horse().astype(bool)  # (328, 400)


def coins() -> np.ndarray:
    return skdata.coins()[::2, ::2] > 110  # (152, 192): many parts, holes


def donut(h: int = 120, w: int = 160) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    return (r < 50) & (r > 20)


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return DATA_URL_PREFIX + base64.b64encode(buffer.getvalue()).decode()


def ls_png(alpha: np.ndarray, rgb: tuple[int, int, int] = (0, 0, 0)) -> str:
    """A PNG as the editor's ``canvas.toDataURL("image/png")`` writes it: RGBA, one colour, the given alpha."""
    h, w = alpha.shape
    pixels = np.zeros((h, w, 4), np.uint8)
    pixels[..., :3] = rgb
    pixels[..., 3] = alpha
    return png_url(Image.fromarray(pixels, "RGBA"))


def click(w: int, h: int, label: str = "cat") -> Click:
    return Click(to_name="image", from_name="kp", label=label, width=w, height=h, rotation=0.0,
                 points=np.zeros((0, 2), np.float32), point_labels=np.zeros(0, np.int32), box=None)


def test_doctests() -> None:
    for module in (bitmask, config, results):
        assert doctest.testmod(module).failed == 0, module.__name__


# -- the value ---------------------------------------------------------------------------------------------
def test_encoded_png_is_the_image_size_and_only_alpha_marks_the_mask() -> None:
    mask = horse()
    url = bitmask_encode(mask)
    assert url.startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(url[len(DATA_URL_PREFIX):])))
    assert png.format == "PNG" and png.size == (400, 328)
    rgba = np.asarray(png.convert("RGBA"))
    np.testing.assert_array_equal(rgba[..., 3], np.where(mask, 255, 0))  # opaque on the object, clear elsewhere
    assert not rgba[..., :3].any()  # black, like the editor's own PNGs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.booleans()))
def test_round_trip_is_exact_and_equals_the_brush(mask: np.ndarray) -> None:
    h, w = mask.shape
    decoded = bitmask_decode(bitmask_encode(mask), h, w)
    assert decoded.dtype == bool and decoded.shape == (h, w)
    np.testing.assert_array_equal(decoded, mask)
    np.testing.assert_array_equal(decoded, brush_rle_decode(brush_rle_encode(mask), h, w))


def test_reads_what_the_editor_writes() -> None:
    """Alpha > 0 is the region (how the editor finds its box and outline); the colour does not matter."""
    mask = donut()
    h, w = mask.shape
    soft = np.where(mask, 255, 0).astype(np.uint8)
    edge = mask ^ np.roll(mask, 1, axis=1)
    soft[edge & ~mask] = 1  # anti-aliased edge: faint, still painted
    soft[edge & mask] = 128
    np.testing.assert_array_equal(bitmask_decode(ls_png(soft), h, w), soft > 0)
    np.testing.assert_array_equal(bitmask_decode(ls_png(soft, rgb=(255, 80, 0)), h, w), soft > 0)
    gray_alpha = np.stack([np.full((h, w), 200, np.uint8), np.where(mask, 255, 0).astype(np.uint8)], axis=-1)
    np.testing.assert_array_equal(bitmask_decode(png_url(Image.fromarray(gray_alpha, "LA")), h, w), mask)
    # No transparency at all: the browser draws it opaque, so all of it is the region.
    opaque = png_url(Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L"))
    assert bitmask_decode(opaque, h, w).all()
    # A whitespace-wrapped payload and an upper-case media type read as browsers read them.
    url = bitmask_encode(mask)
    payload = url[len(DATA_URL_PREFIX):]
    wrapped = "DATA:image/PNG;base64," + "\n".join(payload[i:i + 60] for i in range(0, len(payload), 60))
    np.testing.assert_array_equal(bitmask_decode(wrapped, h, w), mask)


def _truncated() -> str:
    raw = base64.b64decode(bitmask_encode(donut())[len(DATA_URL_PREFIX):])
    return DATA_URL_PREFIX + base64.b64encode(raw[: len(raw) // 2]).decode()


def _jpeg() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (160, 120)).save(buffer, "JPEG")
    return DATA_URL_PREFIX + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("value", "reason"), [
    (None, "bitmask imageDataURL that is not a PNG data URL"),
    (["data:image/png;base64,"], "bitmask imageDataURL that is not a PNG data URL"),
    ("iVBORw0KGgo=", "bitmask imageDataURL that is not a PNG data URL"),
    ("data:image/jpeg;base64,/9j/", "bitmask imageDataURL that is not a PNG data URL"),
    ("data:image/png;base64,not base64!", "bitmask imageDataURL whose base64 does not decode"),
    ("data:image/png;base64,abc", "bitmask imageDataURL whose base64 does not decode"),
    (DATA_URL_PREFIX + base64.b64encode(b"hello, not a png").decode(), "bitmask imageDataURL that holds no PNG"),
    (_jpeg(), "bitmask imageDataURL that holds no PNG"),
    (_truncated(), "bitmask PNG that does not decode"),
    (bitmask_encode(np.ones((120, 161), bool)), "bitmask PNG of another size than its image"),
    (bitmask_encode(np.ones((160, 120), bool)), "bitmask PNG of another size than its image"),
])
def test_malformed_values_are_refused_with_a_reason(value: Any, reason: str) -> None:
    with pytest.raises(BitmaskError) as info:
        bitmask_decode(value, 120, 160)
    assert info.value.reason == reason


def test_declared_size_is_checked_before_decoding() -> None:
    """A PNG declaring 30000 x 30000 pixels is refused from its header (it would decode to 900 MB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 6, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(BitmaskError) as info:
        bitmask_decode(DATA_URL_PREFIX + base64.b64encode(png).decode(), 120, 160)
    assert info.value.reason == "bitmask PNG of another size than its image"


# -- the backend's answer ------------------------------------------------------------------------------------
BITMASK_CONFIG = """<View><Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image"><Label value="cat" smart="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image"><Label value="cat"/></RectangleLabels>
  <BitmaskLabels name="mask" toName="image"><Label value="cat"/><Label value="dog"/></BitmaskLabels>
</View>"""


def test_output_controls_pick_bitmask_where_there_is_no_brush() -> None:
    options = OutputOptions(mask=True, bbox=True)
    cfg = parse_label_config(BITMASK_CONFIG)
    assert output_controls(cfg, click(8, 6), options) == {"bitmasklabels": "mask", "rectanglelabels": "rect"}
    both = parse_label_config(BITMASK_CONFIG.replace(
        "</View>", '<BrushLabels name="brush" toName="image"><Label value="cat"/></BrushLabels></View>'))
    assert output_controls(both, click(8, 6), options) == {"brushlabels": "brush", "rectanglelabels": "rect"}
    assert output_controls(cfg, click(8, 6), OutputOptions(mask=False, bbox=True)) == {"rectanglelabels": "rect"}
    with pytest.raises(OutputError, match="label 'bird' is not in <bitmasklabels> control 'mask'"):
        output_controls(cfg, click(8, 6, label="bird"), OutputOptions(mask=True))
    no_mask = parse_label_config(BITMASK_CONFIG.replace("BitmaskLabels", "EllipseLabels"))
    with pytest.raises(OutputError, match="no control of type brushlabels, bitmasklabels with toName='image'"):
        output_controls(no_mask, click(8, 6), OutputOptions(mask=True))


def test_bitmask_region_has_the_same_pixels_as_the_brush() -> None:
    mask = coins()
    h, w = mask.shape
    options = OutputOptions(mask=True, bbox=True, poly=True)
    controls = {"bitmasklabels": "mask", "rectanglelabels": "rect", "polygonlabels": "poly"}
    answer = mask_results(mask, 0.87654321, click(w, h), controls, options)
    (region,) = [r for r in answer if r["type"] == "bitmasklabels"]
    assert answer[0] is region  # the mask first, as with the brush
    assert region["from_name"] == "mask" and region["to_name"] == "image"
    assert (region["original_width"], region["original_height"], region["score"]) == (w, h, 0.876543)
    assert region["value"].keys() == {"imageDataURL", "bitmasklabels"} and region["value"]["bitmasklabels"] == ["cat"]
    assert region["id"].endswith("-bitmask") and answer_of(region["id"]) is not None
    assert len({answer_of(r["id"]) for r in answer}) == 1
    brush = mask_results(mask, 0.5, click(w, h), {"brushlabels": "b"}, options)[0]
    np.testing.assert_array_equal(bitmask_decode(region["value"]["imageDataURL"], h, w), mask)
    np.testing.assert_array_equal(brush_rle_decode(brush["value"]["rle"], h, w), mask)


def test_server_answers_bitmask_for_a_bitmask_config(backend_client, chelsea_jpeg, original_label_config) -> None:
    """Over HTTP: the label config of the request decides; the bitmask's pixels are the brush's for that click."""
    from label_anything.app.interactive import ServeOptions
    from label_anything.imaging.fetch import ImageFetcher

    task = {"id": 7, "data": {"image": "/data/local-files/?d=" + quote(chelsea_jpeg.name)}}
    kp = {"original_width": 451, "original_height": 300, "image_rotation": 0, "id": "k1", "from_name": "kp",
          "to_name": "image", "type": "keypointlabels", "is_positive": True,
          "value": {"x": 200 * 100 / 451, "y": 120 * 100 / 300, "width": 0.5, "keypointlabels": ["cat"]}}
    answers = {}
    for name, cfg in (("bitmask", BITMASK_CONFIG), ("brush", original_label_config)):
        client = backend_client(ImageFetcher(local_files_root=chelsea_jpeg.parent),
                                ServeOptions(outputs=OutputOptions(mask=True, bbox=True)))
        body = {"tasks": [task], "project": "1.1", "label_config": cfg, "params": {"context": {"result": [kp]}}}
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        answers[name] = response.json()["results"][0]["result"]
    by_type = {r["type"]: r for r in answers["bitmask"]}
    assert by_type.keys() == {"bitmasklabels", "rectanglelabels"}
    bits = bitmask_decode(by_type["bitmasklabels"]["value"]["imageDataURL"], 300, 451)
    (brush,) = [r for r in answers["brush"] if r["type"] == "brushlabels"]
    assert bits.any()
    np.testing.assert_array_equal(bits, brush_rle_decode(brush["value"]["rle"], 300, 451))
    box = by_type["rectanglelabels"]["value"]
    xs = np.nonzero(bits.any(axis=0))[0]
    assert box["x"] * 451 / 100 == pytest.approx(xs[0]) and box["width"] * 451 / 100 == pytest.approx(
        xs[-1] + 1 - xs[0])


# -- convert ---------------------------------------------------------------------------------------------------
def region(mask: np.ndarray, label: str, kind: str, rid: str) -> dict[str, Any]:
    h, w = mask.shape
    if kind == "brush":
        value = {"format": "rle", "rle": brush_rle_encode(mask), "brushlabels": [label]}
    else:
        value = {"imageDataURL": bitmask_encode(mask), "bitmasklabels": [label]}
    return {"id": rid, "type": f"{kind}labels", "from_name": "tag", "to_name": "image", "original_width": w,
            "original_height": h, "image_rotation": 0, "value": value}


def export(kind: str, shapes: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"id": i, "data": {"image": f"/data/upload/1/{name}.png"}, "predictions": [],
             "annotations": [{"id": i, "result": [region(mask, name, kind, f"r{i}")]}]}
            for i, (name, mask) in enumerate(shapes.items(), start=1)]


def run(tmp: Path, tasks: list[dict], name: str, **kwargs: Any) -> Any:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(tasks))
    locator = ImageLocator(tmp / "imgs", upload_dir=tmp / "none", download=False)
    return convert(path, tmp / name, locator=locator, progress=False, **kwargs)


@pytest.fixture
def shapes(tmp_path: Path) -> dict[str, np.ndarray]:
    found = {"horse": horse(), "coins": coins(), "donut": donut()}
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for name, mask in found.items():
        Image.fromarray(rng.integers(0, 255, (*mask.shape, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{name}.png")
    return found


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["coco-rle", "coco-polygon", "yolo-seg"])
def test_convert_reads_bitmasks_exactly_as_brushes(tmp_path: Path, shapes: dict[str, np.ndarray], fmt: str) -> None:
    """Every file written from a bitmask export equals the one written from the brush export of the same masks
    (annotations, labels, MMDetection config, previews); the COCO RLE masks are the masks, pixel for pixel."""
    import shutil

    from label_anything.app.convert.preview import preview

    extra = {"mmdet_config": "mask-rcnn_r50_fpn"} if fmt != "yolo-seg" else {}
    outputs = {}
    for kind in ("brush", "bitmask"):  # into the same folder, one after the other: configs name their paths
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        shutil.rmtree(tmp_path / "preview", ignore_errors=True)
        result = run(tmp_path, export(kind, shapes), "out", fmt=fmt, **extra)
        assert not result.tally.dropped and not result.tally.skipped, result.tally
        preview(tmp_path / "out", tmp_path / "preview")
        outputs[kind] = _files(tmp_path / "out"), _files(tmp_path / "preview")
    written, drawn = outputs["bitmask"]
    assert len(drawn) == 4  # 3 images and a contact sheet
    assert any(k.endswith(".py") for k in written) == (fmt != "yolo-seg")
    assert written == outputs["brush"][0]
    assert drawn == outputs["brush"][1]
    if fmt == "coco-rle":
        coco = json.loads(written["annotations/ann.json"])
        names = {c["id"]: c["name"] for c in coco["categories"]}
        for ann in coco["annotations"]:
            seg = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
            mask = shapes[names[ann["category_id"]]]
            np.testing.assert_array_equal(coco_mask.decode(seg).astype(bool), mask)
            assert ann["area"] == int(mask.sum())


def test_smart_click_answer_with_a_bitmask_is_one_object(tmp_path: Path, shapes: dict[str, np.ndarray]) -> None:
    mask = shapes["donut"]
    h, w = mask.shape
    controls = {"bitmasklabels": "mask", "rectanglelabels": "rect", "polygonlabels": "poly"}
    answer = mask_results(mask, 0.9, click(w, h, "ring"), controls, OutputOptions(bbox=True, poly=True))
    n_polys = sum(r["type"] == "polygonlabels" for r in answer)
    tasks = [{"id": 1, "data": {"image": "/x/donut.png"}, "annotations": [{"id": 1, "result": answer}]}]
    result = run(tmp_path, tasks, "out")
    coco = json.loads((tmp_path / "out/annotations/ann.json").read_text())
    (ann,) = coco["annotations"]
    seg = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    np.testing.assert_array_equal(coco_mask.decode(seg).astype(bool), mask)
    assert result.tally.skipped["box of a smart-click answer that has a mask (one object)"] == 1
    assert result.tally.skipped["polygon of a smart-click answer that has a bitmask mask (one object)"] == n_polys
    assert not result.tally.dropped


def test_editor_png_with_soft_edges_converts_to_its_painted_pixels(tmp_path: Path,
                                                                   shapes: dict[str, np.ndarray]) -> None:
    mask = shapes["donut"]
    alpha = np.where(mask, 255, 0).astype(np.uint8)
    alpha[mask ^ np.roll(mask, 1, axis=0)] = 3
    entry = region(mask, "ring", "bitmask", "drawn-by-hand")
    entry["value"]["imageDataURL"] = ls_png(alpha)
    tasks = [{"id": 1, "data": {"image": "/x/donut.png"}, "annotations": [{"id": 1, "result": [entry]}]}]
    run(tmp_path, tasks, "out")
    (ann,) = json.loads((tmp_path / "out/annotations/ann.json").read_text())["annotations"]
    seg = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    np.testing.assert_array_equal(coco_mask.decode(seg).astype(bool), alpha > 0)


def test_malformed_bitmasks_are_counted_by_reason(tmp_path: Path, shapes: dict[str, np.ndarray]) -> None:
    """Through the real command: exit 0, one count per reason, no traceback; --strict refuses."""
    from label_anything.cli.parser import main

    mask = shapes["donut"]
    good = region(mask, "ring", "bitmask", "good")
    broken = {"bad-base64": "data:image/png;base64,@@@", "not-png": DATA_URL_PREFIX + "aGVsbG8=",
              "wrong-size": bitmask_encode(np.ones((10, 10), bool)), "no-url": 7,
              "empty": bitmask_encode(np.zeros_like(mask))}
    results_ = [good]
    for rid, url in broken.items():
        bad = region(mask, "ring", "bitmask", rid)
        bad["value"]["imageDataURL"] = url
        results_.append(bad)
    no_key = region(mask, "ring", "bitmask", "no-key")
    del no_key["value"]["imageDataURL"]
    results_.append(no_key)
    tasks = [{"id": 1, "data": {"image": "/x/donut.png"}, "annotations": [{"id": 1, "result": results_}]}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["convert", str(path), "--out", str(tmp_path / "out"), "--images-root", str(tmp_path / "imgs"),
                   "--no-download", "--no-progress"])
    text = stdout.getvalue() + stderr.getvalue()
    assert rc == 0 and "Traceback" not in text, text
    assert len(json.loads((tmp_path / "out/annotations/ann.json").read_text())["annotations"]) == 1
    for reason in ("bitmask imageDataURL whose base64 does not decode", "bitmask imageDataURL that holds no PNG",
                   "bitmask PNG of another size than its image", "bitmask imageDataURL that is not a PNG data URL",
                   "empty bitmask mask", "bitmask region without an imageDataURL"):
        assert f"not converted: 1 × {reason}" in text, (reason, text)
    with pytest.raises(StrictError):
        run(tmp_path, tasks, "strict", strict=True)


def test_label_config_classes_include_bitmask_labels(tmp_path: Path, shapes: dict[str, np.ndarray]) -> None:
    """``convert --label-config``: a BitmaskLabels control's labels are classes, in config order."""
    from label_anything.cli.parser import main

    path = tmp_path / "export.json"
    path.write_text(json.dumps(export("bitmask", {"donut": shapes["donut"]})))
    cfg = tmp_path / "config.xml"
    cfg.write_text(BITMASK_CONFIG.replace('<Label value="dog"/>', '<Label value="donut"/><Label value="dog"/>'))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["convert", str(path), "--out", str(tmp_path / "out"), "--images-root", str(tmp_path / "imgs"),
                   "--no-download", "--no-progress", "--label-config", str(cfg)])
    assert rc == 0
    coco = json.loads((tmp_path / "out/annotations/ann.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "donut", "dog"]
    assert len(coco["annotations"]) == 1
