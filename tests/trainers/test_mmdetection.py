"""MMDetection 3.3 reads our COCO output through the generated configs, and Mask R-CNN trains on it.

On a real four-photo export converted with ``--val-ratio 0.5 --mmdet-config ...`` (RLE masks for Mask R-CNN,
polygons for RTMDet-Ins):

- both configs load with ``Config.fromfile``; their train and val datasets build through mmdet's registry,
  and every sample goes through its pipeline: the masks ``LoadAnnotations`` makes are our masks pixel for
  pixel, the boxes our boxes, the labels our categories; what the pipeline packs for the model agrees (exactly
  at the original size for validation; resized and maybe flipped for Mask R-CNN's training);
- mmdet's own ``tools/train.py`` trains the Mask R-CNN config for two iterations with the README's offline
  options (``load_from=None model.backbone.init_cfg=None``): finite ``loss_mask``, and the COCO evaluation of
  the val split runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from photo_export import CLASSES, convert_export
from pycocotools import mask as coco_mask
from trainer_run import last_json, run_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # the first run builds the venv (~25 min)

OFFLINE = ["load_from=None", "model.backbone.init_cfg=None"]
"""What the README says to change for a run without downloads (no COCO checkpoint, no ImageNet backbone)."""

SHORT = ["train_cfg.max_epochs=1", "train_dataloader.batch_size=1", "default_hooks.logger.interval=1"]
"""Test only: one epoch of the two training images, one image per iteration: two iterations."""


@pytest.fixture(scope="module")
def datasets(photo_export, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model → its dataset folder (Mask R-CNN on coco-rle, RTMDet-Ins on coco-polygon)."""
    root = tmp_path_factory.mktemp("mmdet-datasets")
    out = {}
    for model, fmt in (("mask-rcnn_r50_fpn", "coco-rle"), ("rtmdet-ins_s", "coco-polygon")):
        summary = convert_export(photo_export, root / model, "--to", fmt, "--val-ratio", "0.5",
                                 "--mmdet-config", model)
        assert "split: train 2 images, val 2 images" in summary
        out[model] = root / model
    return out


def decode(rle: dict) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def our_annotations(dataset: Path, split: str) -> tuple[dict, dict[int, list[dict]]]:
    data = json.loads((dataset / "annotations" / f"{split}.json").read_text())
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return data, by_image


def our_mask(ann: dict, height: int, width: int) -> np.ndarray:
    seg = ann["segmentation"]
    rles = coco_mask.frPyObjects(seg, height, width) if isinstance(seg, list) else \
        [{"size": seg["size"], "counts": seg["counts"].encode()}]
    return coco_mask.decode(coco_mask.merge(rles) if isinstance(seg, list) else rles[0]).astype(bool)


def xyxy(ann: dict) -> list[float]:
    x, y, w, h = ann["bbox"]
    return [x, y, x + w, y + h]


def test_configs_load_and_every_sample_goes_through_the_pipelines(trainers_python: Path, datasets, tmp_path):
    configs = [str(folder / f"{model}_custom.py") for model, folder in datasets.items()]
    report = last_json(run_script(trainers_python, "mmdet_datasets.py", *configs, tmp=tmp_path))
    assert set(report) == set(configs)
    for (model, folder), config in zip(datasets.items(), configs, strict=True):
        entry = report[config]
        assert entry["classes"] == list(CLASSES) and entry["num_classes"] == len(CLASSES)
        assert entry["model"] == ("MaskRCNN" if model.startswith("mask") else "RTMDet")
        for split in ("train", "val"):
            data, by_image = our_annotations(folder, split)
            got = entry[split]
            assert got["type"] == "CocoDataset" and got["classes"] == list(CLASSES)
            assert got["cat_ids"] == [c["id"] for c in data["categories"]]
            assert sorted(s["img_id"] for s in got["samples"]) == sorted(by_image)  # no image filtered out
            for sample in got["samples"]:
                check_sample(model, split, sample, by_image[sample["img_id"]], data)


def check_sample(model: str, split: str, sample: dict, anns: list[dict], data: dict) -> None:
    where = (model, split, Path(sample["img_path"]).name)
    image = next(i for i in data["images"] if i["id"] == sample["img_id"])
    height, width = image["height"], image["width"]
    assert sample["ori_shape"] == [height, width], where
    loaded = sample["loaded"]
    assert loaded is not None and len(loaded["masks"]) == len(anns) >= 2, where
    assert loaded["mask_type"] == "BitmapMasks" and loaded["ignore"] == [False] * len(anns), where
    assert loaded["labels"] == [a["category_id"] - 1 for a in anns], where
    assert np.allclose(loaded["bboxes"], [xyxy(a) for a in anns], atol=1e-3), where
    for rle, ann in zip(loaded["masks"], anns, strict=True):
        assert np.array_equal(decode(rle), our_mask(ann, height, width)), (where, ann["id"])

    packed = sample["packed"]
    if split == "val":  # the test pipeline loads annotations at the original size and packs them as they are
        assert packed["masks"] == loaded["masks"] and packed["labels"] == loaded["labels"], where
        assert np.allclose(packed["bboxes"], loaded["bboxes"]), where
    elif model.startswith("mask"):  # Resize (1333, 800) keeping the ratio, then maybe a horizontal flip
        h, w = sample["img_shape"]
        assert max(h, w) <= 1333 and min(h, w) <= 800 and (max(h, w) == 1333 or min(h, w) == 800), where
        assert packed["labels"] == loaded["labels"], where
        sx, sy = w / width, h / height
        for rle, box, ann in zip(packed["masks"], packed["bboxes"], anns, strict=True):
            expect = cv2.resize(our_mask(ann, height, width).astype(np.uint8), (w, h),
                                interpolation=cv2.INTER_NEAREST).astype(bool)
            x1, y1, x2, y2 = xyxy(ann)
            box_expect = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
            if sample["flip"]:
                assert sample["flip_direction"] == "horizontal", where
                expect = expect[:, ::-1]
                box_expect = [w - box_expect[2], box_expect[1], w - box_expect[0], box_expect[3]]
            mask = decode(rle)
            iou = (mask & expect).sum() / (mask | expect).sum()
            assert iou > 0.97, (where, ann["id"], iou)
            assert np.allclose(box, box_expect, atol=1.0), (where, box, box_expect)
    else:  # RTMDet: mosaic, random resize and crop: whatever is left must be consistent
        assert sample["img_shape"] == [640, 640], where
        assert len(packed["masks"]) == len(packed["bboxes"]) == len(packed["labels"]), where
        # (MixUp and Mosaic paste objects of the other cached training images in.)
        assert set(packed["labels"]) <= {a["category_id"] - 1 for a in data["annotations"]}, where
        assert all(r["size"] == [640, 640] for r in packed["masks"]), where


def test_mask_rcnn_trains_with_mmdet_tools_train(trainers_python: Path, datasets, tmp_path: Path) -> None:
    config = datasets["mask-rcnn_r50_fpn"] / "mask-rcnn_r50_fpn_custom.py"
    locate = "import mmdet, os; print(os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'tools', 'train.py'))"
    script = tmp_path / "locate.py"
    script.write_text(locate)
    train_py = Path(run_script(trainers_python, script, tmp=tmp_path).strip())
    assert train_py.is_file()
    work = tmp_path / "work"
    run_script(trainers_python, train_py, str(config), "--work-dir", str(work), "--cfg-options", *OFFLINE, *SHORT,
               tmp=tmp_path, timeout=1800)

    (scalars_file,) = work.glob("*/vis_data/scalars.json")
    records = [json.loads(line) for line in scalars_file.read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss_mask" in r]
    assert [r["iter"] for r in train] == [1, 2]
    for r in train:
        for key in ("loss", "loss_mask", "loss_cls", "loss_bbox", "loss_rpn_cls", "loss_rpn_bbox"):
            assert math.isfinite(r[key]), (key, r)
        assert r["loss_mask"] > 0, r
    val = [r for r in records if "coco/segm_mAP" in r]
    assert len(val) == 1 and "coco/bbox_mAP" in val[0], records  # the COCO evaluation of the val split ran
    assert (work / "epoch_1.pth").is_file()
    for checkpoint in work.glob("*.pth"):  # ~350 MB each: do not keep them in pytest's temporary folders
        checkpoint.unlink()
