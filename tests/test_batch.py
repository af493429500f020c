"""boxes-to-masks and import-coco on real photos (scikit-image) with MobileSAM random weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from label_anything.app import boxes_to_masks as batch
from label_anything.app.boxes_to_masks import SCORE_FIELD, boxes_to_masks, image_job, partial_path
from label_anything.engine import Prompt, decode, encode

skimage_data = pytest.importorskip("skimage.data")
pycocotools_coco = pytest.importorskip("pycocotools.coco")

# (file name, scikit-image photo, boxes [x, y, w, h]); a sub-folder and a space in one name on purpose.
PHOTOS = [
    ("coffee.png", "coffee", [[150.0, 40.0, 300.0, 260.0], [10.0, 10.0, 120.0, 90.0], [400.5, 250.25, 150.0, 120.0]]),
    ("cats/chelsea cat.png", "chelsea", [[140.0, 20.0, 180.0, 250.0], [0.0, 0.0, 451.0, 300.0]]),
    ("astronaut.png", "astronaut", [[140.0, 10.0, 200.0, 220.0], [300.0, 300.0, 200.0, 200.0], [20, 100, 80, 300]]),
]


class StopError(Exception):
    """Raised by the test hook to interrupt a run after one image."""


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """Images saved losslessly (PNG) and a COCO file with boxes, extra fields, a box-less annotation and an
    image without annotations. Returns (COCO path, images folder, the COCO dict)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("coco")
    images_dir = root / "images"
    images, annotations = [], []
    for image_id, (name, photo, boxes) in enumerate(PHOTOS, start=1):
        pixels = np.ascontiguousarray(getattr(skimage_data, photo)())
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "height": pixels.shape[0], "width": pixels.shape[1]})
        for bbox in boxes:
            annotations.append({"id": 100 + len(annotations), "image_id": image_id, "category_id": 1 + len(boxes) % 2,
                                "bbox": bbox, "iscrowd": 0, "area": bbox[2] * bbox[3], "note": {"who": "tester"}})
    # A keypoint-only annotation (no bbox) and an image with nothing on it: both must pass through untouched.
    annotations.append({"id": 999, "image_id": 1, "category_id": 1, "keypoints": [10, 10, 2], "num_keypoints": 1})
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(images_dir / "empty.png")
    images.append({"id": 4, "file_name": "empty.png", "height": 20, "width": 30})
    coco = {"info": {"description": "test"}, "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other thing"}]}
    path = root / "boxes.json"
    path.write_text(json.dumps(coco))
    return path, images_dir, coco


def interactive_mask(model, embedding, bbox: list[float]) -> tuple[np.ndarray, float]:
    """The mask the interactive path gives for a COCO box."""
    x, y, w, h = bbox
    return decode(model, embedding, Prompt.from_lists(box=[x, y, x + w, y + h])).best()[:2]


@pytest.fixture(scope="module")
def rle_run(coco_dataset, mobile_sam_model, tmp_path_factory) -> tuple[Path, batch.BoxesReport]:
    coco_path, images_dir, _ = coco_dataset
    out = tmp_path_factory.mktemp("out") / "masks.json"
    report = boxes_to_masks(mobile_sam_model, coco_path, images_dir, out, progress=False)
    return out, report


def test_masks_equal_the_interactive_path_and_load_in_pycocotools(coco_dataset, mobile_sam_model, rle_run):
    from label_anything.imaging.decode import read_image

    _, images_dir, original = coco_dataset
    out, report = rle_run
    assert report.images_done == 3 and report.boxes_done == 8 and not report.failed
    assert not partial_path(out).exists()  # the sidecar goes once OUT is written
    api = pycocotools_coco.COCO(str(out))
    written = json.loads(out.read_text())
    files = {img["id"]: img["file_name"] for img in original["images"]}
    embeddings: dict[int, object] = {}
    for before, after in zip(original["annotations"], written["annotations"], strict=True):
        # every original field is kept, with its value (area excepted: it now measures the mask)
        for key, value in before.items():
            if key != "area":
                assert after[key] == value, key
        if "bbox" not in before:
            assert after == before
            continue
        image_id = before["image_id"]
        if image_id not in embeddings:  # the interactive path too encodes each image once
            embeddings[image_id] = encode(mobile_sam_model, read_image(images_dir / files[image_id]))
        expected, score = interactive_mask(mobile_sam_model, embeddings[before["image_id"]], before["bbox"])
        got = api.annToMask(api.anns[before["id"]]).astype(bool)
        np.testing.assert_array_equal(got, expected)
        assert after["area"] == int(expected.sum())
        assert after[SCORE_FIELD] == pytest.approx(score, abs=1e-6)
    assert {k: v for k, v in written.items() if k != "annotations"} == {
        k: v for k, v in original.items() if k != "annotations"
    }


def test_polygon_format_min_score_and_bad_boxes(coco_dataset, mobile_sam_model, tmp_path):
    _, images_dir, original = coco_dataset
    coco = copy.deepcopy(original)
    coco["annotations"].append({"id": 500, "image_id": 3, "category_id": 1, "bbox": [10, 10, 0, 5]})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(coco))
    out = tmp_path / "poly.json"
    report = boxes_to_masks(mobile_sam_model, path, images_dir, out, fmt="polygon", min_score=2.0, progress=False)
    assert len(report.low_score) == 8  # a predicted IoU is never above 2: every mask is reported
    assert any("500" in f for f in report.failed)
    written = json.loads(out.read_text())
    assert written["annotations"][-1] == coco["annotations"][-1]  # the bad box is kept, untouched
    api = pycocotools_coco.COCO(str(out))
    for ann in written["annotations"]:
        if SCORE_FIELD in ann:
            assert isinstance(ann["segmentation"], list)
            assert api.annToMask(api.anns[ann["id"]]).sum() == ann["area"]  # area measures the polygons


def test_resume_survives_repeated_interruptions_and_torn_lines(coco_dataset, mobile_sam_model, rle_run, tmp_path,
                                                               monkeypatch):
    """Killed mid-write twice in a row: each rerun must keep every complete record, including those it appended
    after the previous run's torn line (the bug: records after a torn line were never read again)."""
    coco_path, images_dir, _ = coco_dataset
    out = tmp_path / "resumed.json"
    sidecar = partial_path(out)

    def stop_after_one(image_id) -> None:
        raise StopError(image_id)

    encoded: list[tuple[int, ...]] = []
    real_encode = image_job.encode

    def counting_encode(model, image, *args, **kwargs):
        encoded.append(image.shape)
        return real_encode(model, image, *args, **kwargs)

    monkeypatch.setattr(image_job, "encode", counting_encode)
    for run in range(2):  # two interrupted runs, each leaving a torn last line as a kill mid-write does
        with pytest.raises(StopError):
            boxes_to_masks(mobile_sam_model, coco_path, images_dir, out, progress=False, after_image=stop_after_one)
        assert len(encoded) == run + 1  # each run encoded exactly one new image
        assert not out.exists()
        with sidecar.open("a") as f:
            f.write('{"image_id": 3, "annotat')
    assert len(batch.read_progress(sidecar, _fingerprint_of(sidecar)).done) == 2

    report = boxes_to_masks(mobile_sam_model, coco_path, images_dir, out, progress=False)
    assert len(encoded) == 3  # the third image only: neither finished image was encoded again
    assert report.images_skipped == 2 and report.images_done == 1
    assert json.loads(out.read_text()) == json.loads(rle_run[0].read_text())
    assert not sidecar.exists()


def _fingerprint_of(sidecar: Path) -> dict:
    return json.loads(sidecar.read_text().splitlines()[0])["fingerprint"]


def _record(image_id, index: str = "0", area: int = 5) -> str:
    return json.dumps({"image_id": image_id, "annotations": {index: {"area": area}}}) + "\n"


def test_progress_of_another_run_is_not_mixed_in(tmp_path):
    from label_anything.app.boxes_to_masks import read_progress

    path = tmp_path / "o.json.partial.jsonl"
    path.write_text(json.dumps({"fingerprint": {"model": "a"}}) + "\n" + _record(1))
    assert {k: v.fields for k, v in read_progress(path, {"model": "a"}).done.items()} == {"1": {"0": {"area": 5}}}
    assert read_progress(path, {"model": "b"}).done == {}
    assert read_progress(tmp_path / "none.jsonl", {"model": "a"}).done == {}


def test_progress_reading_skips_damage_and_knows_where_the_last_record_ends(tmp_path):
    from label_anything.app.boxes_to_masks import read_progress

    header = json.dumps({"fingerprint": {"model": "a"}}) + "\n"
    path = tmp_path / "p.jsonl"
    good = header + _record(1) + "not json\n" + '{"image_id": 7}\n' + "[1, 2]\n" + _record("b", "2", 9)
    path.write_text(good + '{"image_id": 3, "annotations": {"4": {"area": 1}}}')  # no newline: torn
    progress = read_progress(path, {"model": "a"})
    assert sorted(progress.done) == ['"b"', "1"]  # records after the damaged lines are still read
    assert progress.end == len(good.encode())  # the torn tail starts here
    # A header cut short (killed while it was written) is no header: start over.
    path.write_text(header[:10])
    assert read_progress(path, {"model": "a"}).end == 0
    path.write_bytes(b"\xff\xfe" + header.encode())
    assert read_progress(path, {"model": "a"}).done == {}


def test_cli_boxes_to_masks_then_import_coco(coco_dataset, random_checkpoint, rle_run, tmp_path, capsys):
    from label_studio_sdk.converter.brush import decode_rle

    from label_anything.cli.parser import main

    coco_path, images_dir, _ = coco_dataset
    out = tmp_path / "cli.json"
    model_args = ["--model-name", "mobile_sam", "--checkpoint", str(random_checkpoint("mobile_sam", "vit_t")),
                  "--device", "cpu"]
    assert main(["boxes-to-masks", str(coco_path), "--images", str(images_dir), "--out", str(out),
                 "--no-progress", *model_args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["boxes"] == 8 and summary["images"] == 3
    assert json.loads(out.read_text()) == json.loads(rle_run[0].read_text())

    tasks_path = tmp_path / "tasks.json"
    config_path = tmp_path / "config.xml"
    assert main(["import-coco", str(out), "--images", str(images_dir), "--out", str(tasks_path),
                 "--local-files-root", str(images_dir.parent), "--label-config", str(config_path)]) == 0
    tasks = json.loads(tasks_path.read_text())
    assert len(tasks) == 4
    assert tasks[1]["data"]["image"] == "/data/local-files/?d=images/cats/chelsea%20cat.png"
    assert "predictions" not in tasks[3]  # the empty image: a task to label from scratch

    api = pycocotools_coco.COCO(str(out))
    for task in tasks[:3]:
        img = api.imgs[task["data"]["coco_image_id"]]
        anns = [a for a in api.imgToAnns[img["id"]] if "bbox" in a]
        result = task["predictions"][0]["result"]
        rects = [r for r in result if r["type"] == "rectanglelabels"]
        brushes = [r for r in result if r["type"] == "brushlabels"]
        assert len(rects) == len(anns)
        for rect, ann in zip(rects, anns, strict=True):
            v = rect["value"]
            assert rect["original_width"] == img["width"] and rect["original_height"] == img["height"]
            assert [v["x"] * img["width"] / 100, v["y"] * img["height"] / 100, v["width"] * img["width"] / 100,
                    v["height"] * img["height"] / 100] == pytest.approx(ann["bbox"])
            assert v["rectanglelabels"] == [api.cats[ann["category_id"]]["name"]]
        masks = [api.annToMask(a).astype(bool) for a in anns]
        assert len(brushes) == sum(m.any() for m in masks)
        for brush, mask in zip(brushes, [m for m in masks if m.any()], strict=True):
            decoded = np.asarray(decode_rle(brush["value"]["rle"])).reshape(img["height"], img["width"], 4)[:, :, 3]
            np.testing.assert_array_equal(decoded > 0, mask)
    config = config_path.read_text()
    assert '<RectangleLabels name="label" toName="image">' in config and '<Label value="other thing"/>' in config


def test_image_reference_with_a_url_prefix():
    from label_anything.app.import_coco import task_image_url

    assert task_image_url("a b.jpg", Path("x"), local_files_root=None, url_prefix="https://h/i/") == "https://h/i/a%20b.jpg"
    assert task_image_url("a.jpg", Path("x"), local_files_root=None, url_prefix="s3://bucket/") == "s3://bucket/a.jpg"


def test_unreadable_images_and_images_without_a_usable_box(tmp_path):
    """Both pass through untouched; only the unreadable file and the bad box are reported (classical engine:
    no weights, so this runs in a blink)."""
    from label_anything.engine import load_model

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    from PIL import Image

    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(images_dir / "ok.png")
    coco = {"images": [{"id": 1, "file_name": "ok.png"}, {"id": 2, "file_name": "missing.png"},
                       {"id": 3, "file_name": "ok.png"}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [5, 5, 20, 20]},
                            {"id": 2, "image_id": 2, "bbox": [5, 5, 20, 20]},
                            {"id": 3, "image_id": 3, "bbox": [5, 5, 0, 20]}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    out = tmp_path / "out.json"
    report = boxes_to_masks(load_model("classical"), path, images_dir, out, progress=False)
    assert report.images_done == 1 and report.boxes_done == 1
    assert report.failed == ["ok.png: annotation 3 has no usable bbox [5, 5, 0, 20]",
                             f"missing.png: cannot read image {images_dir / 'missing.png'}: No such file or directory"]
    assert report.skipped == {"no usable bbox": 1, "image unreadable": 1}
    written = json.loads(out.read_text())["annotations"]
    assert SCORE_FIELD in written[0] and written[1:] == coco["annotations"][1:]
