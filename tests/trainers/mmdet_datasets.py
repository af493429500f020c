"""Load generated MMDetection configs and run every sample of their datasets through the pipelines; print a report.

Runs in the trainers' venv: ``python mmdet_datasets.py CONFIG...``. For each config: ``Config.fromfile``, the
train and val datasets built through mmdet's registry (``DATASETS.build``), then every sample's transforms
applied one by one. The report (the last line printed, JSON) gives, per sample, what ``LoadAnnotations``
produced (masks as COCO RLE, boxes, labels) and what the last transform packed (the model's ground truth).
The test compares them with our annotation files; this script only reports what MMDetection made of them.
"""

from __future__ import annotations

import copy
import json
import sys

import numpy as np


def rle(masks: np.ndarray) -> list[dict]:
    from pycocotools import mask as coco_mask

    out = []
    for m in masks:
        r = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        out.append({"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()})
    return out


def instances(masks, boxes, labels) -> dict:
    masks_array = np.asarray(masks.masks if hasattr(masks, "masks") else masks.to_ndarray())
    box_array = boxes.tensor.numpy() if hasattr(boxes, "tensor") else np.asarray(boxes)
    return {"masks": rle(masks_array), "mask_type": type(masks).__name__, "bboxes": box_array.tolist(),
            "labels": [int(v) for v in np.asarray(labels)]}


def run_sample(dataset, index: int) -> dict:
    info = copy.deepcopy(dataset.get_data_info(index))
    results = copy.deepcopy(info)
    loaded = None
    for transform in dataset.pipeline.transforms:
        results = transform(results)
        assert results is not None, f"{type(transform).__name__} dropped sample {index} ({info['img_path']})"
        if type(transform).__name__ == "LoadAnnotations":
            loaded = instances(results["gt_masks"], results["gt_bboxes"], results["gt_bboxes_labels"])
            loaded["ignore"] = [bool(v) for v in results["gt_ignore_flags"]]
    sample = results["data_samples"]
    gt = sample.gt_instances
    return {
        "img_path": info["img_path"],
        "img_id": int(info["img_id"]),
        "loaded": loaded,
        "packed": instances(gt.masks, gt.bboxes, gt.labels),
        "inputs_shape": list(results["inputs"].shape),
        "img_shape": [int(v) for v in sample.metainfo["img_shape"]],
        "ori_shape": [int(v) for v in sample.metainfo["ori_shape"]],
        "flip": bool(sample.metainfo.get("flip", False)),
        "flip_direction": sample.metainfo.get("flip_direction"),
        "transforms": [type(t).__name__ for t in dataset.pipeline.transforms],
    }


def main() -> None:
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    report: dict = {}
    for path in sys.argv[1:]:
        cfg = Config.fromfile(path)
        entry: dict = {"classes": list(cfg.classes), "num_classes": cfg.num_classes, "model": cfg.model.type,
                       "load_from": cfg.load_from}
        for split in ("train", "val"):
            dataset = DATASETS.build(cfg[f"{split}_dataloader"].dataset)
            entry[split] = {
                "type": type(dataset).__name__,
                "ann_file": dataset.ann_file,
                "classes": list(dataset.metainfo["classes"]),
                "cat_ids": [int(c) for c in dataset.cat_ids],
                "samples": [run_sample(dataset, i) for i in range(len(dataset))],
            }
        report[path] = entry
    print(json.dumps(report))


if __name__ == "__main__":
    main()
