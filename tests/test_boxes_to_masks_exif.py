"""boxes-to-masks on a photo stored sideways (EXIF orientation 6): which pixels the boxes are applied to is
decided per image by the size the COCO file gives, and no RLE ever disagrees with its image entry.

Classical engine (no weights): the question is which pixels and which size, not the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from label_anything.app.boxes_to_masks import SCORE_FIELD, boxes_to_masks
from label_anything.engine import Prompt, decode, encode, load_model

pycocotools_coco = pytest.importorskip("pycocotools.coco")
mask_utils = pytest.importorskip("pycocotools.mask")

STORED_H, STORED_W = 300, 451  # chelsea as stored in the file; displayed upright it is 451 tall, 300 wide
BOX = [40.0, 20.0, 200.0, 150.0]  # x, y, w, h: inside both the stored and the displayed frame


@pytest.fixture(scope="module")
def rotated(chelsea, tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """(folder, stored pixels, displayed pixels) of ``sideways.jpg``, a JPEG with EXIF orientation 6."""
    from label_anything.imaging.decode import read_image

    folder = tmp_path_factory.mktemp("exif")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(chelsea).save(folder / "sideways.jpg", quality=95, exif=exif)
    with Image.open(folder / "sideways.jpg") as img:
        stored = np.asarray(img.convert("RGB"))  # the pixels as stored, no EXIF applied
    displayed = read_image(folder / "sideways.jpg")
    assert stored.shape[:2] == (STORED_H, STORED_W) and displayed.shape[:2] == (STORED_W, STORED_H)
    return folder, stored, displayed


def expected_mask(model, pixels: np.ndarray) -> np.ndarray:
    x, y, w, h = BOX
    return decode(model, encode(model, pixels), Prompt.from_lists(box=[x, y, x + w, y + h])).best()[0]


def test_the_coco_size_decides_which_pixels_the_boxes_are_on(rotated, tmp_path, capsys, caplog):
    from label_anything.cli.parser import main

    folder, stored, displayed = rotated
    images = [
        {"id": 1, "file_name": "sideways.jpg", "height": STORED_H, "width": STORED_W},  # a tool that ignores EXIF
        {"id": 2, "file_name": "sideways.jpg", "height": STORED_W, "width": STORED_H},  # as Label Studio shows it
        {"id": 3, "file_name": "sideways.jpg", "height": 200, "width": 100},  # neither: wrong file or wrong size
        {"id": 4, "file_name": "sideways.jpg"},  # no size: as displayed
    ]
    annotations = [{"id": 10 + i, "image_id": i, "category_id": 1, "bbox": BOX} for i in range(1, 5)]
    coco_path = tmp_path / "in.json"
    coco_path.write_text(json.dumps({"images": images, "annotations": annotations,
                                     "categories": [{"id": 1, "name": "cat"}]}))
    out = tmp_path / "out.json"
    code = main(["boxes-to-masks", str(coco_path), "--images", str(folder), "--out", str(out),
                 "--model-name", "classical", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["images"], summary["boxes"], summary["images_as_stored"]) == (3, 3, 1)
    assert summary["skipped"] == {"image size differs from the COCO size": 1}
    assert len(summary["failed"]) == 1 and "200" in summary["failed"][0] and "100" in summary["failed"][0]
    assert "EXIF orientation 6 ignored" in caplog.text and "sideways.jpg" in caplog.text

    written = json.loads(out.read_text())
    by_image = {ann["image_id"]: ann for ann in written["annotations"]}
    assert by_image[3] == annotations[2]  # the image that fits neither size: its annotation is untouched
    for image in written["images"]:
        ann = by_image[image["id"]]
        if "segmentation" in ann:
            assert ann["segmentation"]["size"] == [image.get("height", STORED_W), image.get("width", STORED_H)]
    model = load_model("classical")
    for image_id, pixels in ((1, stored), (2, displayed), (4, displayed)):
        rle = by_image[image_id]["segmentation"]
        got = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        np.testing.assert_array_equal(got, expected_mask(model, pixels))
    api = pycocotools_coco.COCO(str(out))  # the file loads, and its masks rasterize at their image's size
    for image_id in (1, 2):
        image = api.imgs[image_id]
        assert api.annToMask(api.anns[10 + image_id]).shape == (image["height"], image["width"])
    assert all(SCORE_FIELD in by_image[i] for i in (1, 2, 4))


def test_a_photo_without_exif_is_never_taken_as_stored(chelsea, tmp_path):
    """The stored-size rule is for rotated photos only: a plain image of the wrong size fails."""
    Image.fromarray(chelsea).save(tmp_path / "plain.png")
    coco = {"images": [{"id": 1, "file_name": "plain.png", "height": STORED_W, "width": STORED_H}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": BOX}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    report = boxes_to_masks(load_model("classical"), tmp_path / "c.json", tmp_path, tmp_path / "o.json",
                            progress=False)
    assert (report.boxes_done, report.as_stored, dict(report.skipped)) == (
        0, [], {"image size differs from the COCO size": 1})
    assert json.loads((tmp_path / "o.json").read_text())["annotations"] == coco["annotations"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_undoes_to_the_stored_pixels(orientation):
    """Orientations 5-8 swap width and height: their stored size means the stored pixels, exactly. The others
    keep the size, which then means the displayed pixels (what a viewer shows, and Label Studio)."""
    import io

    from label_anything.app.boxes_to_masks import decode_for_coco
    from label_anything.imaging.decode import decode_image

    stored = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "PNG", exif=exif)
    data = buf.getvalue()
    pixels, note = decode_for_coco(data, "x.png", (5, 7))
    if orientation >= 5:
        np.testing.assert_array_equal(pixels, stored)
        assert note is not None and f"orientation {orientation} ignored" in note
    else:
        np.testing.assert_array_equal(pixels, decode_image(data))
        assert note is None
    displayed, note = decode_for_coco(data, "x.png", (None, None))  # no size given: as displayed
    np.testing.assert_array_equal(displayed, decode_image(data))
    assert note is None
