"""pycocotools' COCOeval accepts our COCO files: the annotations scored against themselves give AP 1.0.

A perfect detector's results are the ground truth itself; if ``bbox``, ``area``, ``iscrowd``, the masks or
the ids were inconsistent, COCOeval would match fewer detections (or none) and the AP would fall below 1.
A result with one object left out must score below 1, so the evaluation is really counting our objects.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

pytest.importorskip("skimage.data")

from trainers.photo_export import CLASSES, build_photo_export, convert_export


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory):
    return build_photo_export(tmp_path_factory.mktemp("photo-export"))


def results_from(gt: COCO, skip: int | None = None) -> list[dict]:
    """The ground truth as detections (RLE masks, score 1), less the annotation with id ``skip``."""
    out = []
    for ann in gt.loadAnns(gt.getAnnIds()):
        if ann["id"] == skip:
            continue
        rle = gt.annToRLE(ann)
        rle = {"size": rle["size"], "counts": rle["counts"].decode() if isinstance(rle["counts"], bytes)
               else rle["counts"]}
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"],
                    "segmentation": rle, "score": 1.0})
    return out


def evaluate(gt: COCO, results: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("fmt", ["coco-rle", "coco-polygon"])
def test_annotations_against_themselves_give_ap_1(tmp_path: Path, export, fmt: str) -> None:
    convert_export(export, tmp_path / "ds", "--to", fmt)
    ann_file = tmp_path / "ds" / "annotations" / "ann.json"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    data = json.loads(ann_file.read_text())
    assert len(data["annotations"]) == export.regions == 10
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    # Consistent with the mask (COCOeval's area ranges use ``area``). Polygons are traced from the mask and
    # simplified (--polygon-tolerance 1 px), while area and bbox are the drawn mask's: close, not equal.
    exact = fmt == "coco-rle"
    for ann in data["annotations"]:
        mask = gt.annToMask(ann)
        assert ann["iscrowd"] == 0 and mask.sum() > 0
        assert ann["area"] == int(mask.sum()) if exact else abs(ann["area"] - int(mask.sum())) <= 0.02 * ann["area"]
        box = coco_mask.toBbox(coco_mask.encode(np.asfortranarray(mask)))
        assert np.allclose(ann["bbox"], box, atol=1e-6 if exact else 1.5), (ann["bbox"], box)

    for iou_type in ("bbox", "segm"):
        stats = evaluate(gt, results_from(gt), iou_type)
        # AP@[.5:.95], AP50, AP75, and AR@100: all exactly 1 for a perfect detector.
        assert stats[0] == stats[1] == stats[2] == stats[8] == 1.0, (iou_type, stats)
        missing = evaluate(gt, results_from(gt, skip=data["annotations"][0]["id"]), iou_type)
        assert missing[8] < 1.0, (iou_type, missing)  # one object not found: recall (and AP) drop
