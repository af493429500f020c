"""Ultralytics trains YOLO11n-seg on ``label-anything convert --to yolo-seg`` output, reading every label.

On a real four-photo export: ``yolo11n-seg.yaml`` (no pretrained weights), offline, CPU, ``imgsz=128``, one
epoch, ``plots=False``. Through the Python API (``yolo_train.py``), Ultralytics' own loader must give, for every
image, exactly the classes and polygons of our label files, and every batch's losses must be finite; the
README's ``yolo segment train`` command line must train too (finite losses in its ``results.csv``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from photo_export import CLASSES, convert_export
from trainer_run import last_json, run_command, run_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # the first run builds the venv (~25 min)


def our_labels(dataset: Path) -> dict[str, dict]:
    """Our label files, parsed: image file name → classes and flat normalized polygons."""
    out = {}
    for image in sorted((dataset / "images").iterdir()):
        lines = (dataset / "labels" / f"{image.stem}.txt").read_text().split("\n")
        rows = [[float(v) for v in line.split()] for line in lines if line.strip()]
        out[image.name] = {"cls": [int(r[0]) for r in rows], "segments": [r[1:] for r in rows]}
    return out


def test_yolo_seg_trains_and_every_label_is_read(trainers_python: Path, photo_export, tmp_path: Path) -> None:
    dataset = tmp_path / "yolo"
    summary = convert_export(photo_export, dataset, "--to", "yolo-seg")
    assert "every region was converted" in summary
    ours = our_labels(dataset)
    assert sum(len(v["cls"]) for v in ours.values()) == photo_export.regions == 10
    assert set(ours) == {"chelsea.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"}

    report = last_json(run_script(trainers_python, "yolo_train.py", str(dataset / "data.yaml"),
                                  str(tmp_path / "runs"), tmp=tmp_path))

    for split in ("train_labels", "val_labels"):  # no --val-ratio: both are every image
        read = report[split]
        assert set(read) == set(ours), split
        for name, labels in ours.items():
            got = read[name]
            assert got["cls"] == labels["cls"], (split, name)
            assert len(got["segments"]) == len(labels["segments"]), (split, name)
            for theirs, mine in zip(got["segments"], labels["segments"], strict=True):
                assert len(theirs) == len(mine) >= 6, (split, name)
                assert max(abs(a - b) for a, b in zip(theirs, mine, strict=True)) < 1e-6, (split, name)
    assert max(c for v in ours.values() for c in v["cls"]) < len(CLASSES)

    batches = report["batches"]
    assert len(batches) == 2  # 4 images, batch 2, one epoch
    for losses in batches:
        assert {"box_loss", "seg_loss", "cls_loss", "dfl_loss"} <= set(losses)
        assert all(math.isfinite(v) for v in losses.values()), losses
        assert all(losses[k] > 0 for k in ("box_loss", "seg_loss", "cls_loss", "dfl_loss")), losses
    # Validation ran on the masks (M) and boxes (B), and the epoch's weights were written.
    assert {"metrics/mAP50-95(B)", "metrics/mAP50-95(M)"} <= set(report["metrics"])
    assert all(math.isfinite(v) for v in report["metrics"].values()), report["metrics"]
    assert "last.pt" in report["weights"]


def test_readme_yolo_command_trains(trainers_python: Path, photo_export, tmp_path: Path) -> None:
    dataset = tmp_path / "yolo-set"
    convert_export(photo_export, dataset, "--to", "yolo-seg", "--val-ratio", "0.5")
    assert len((dataset / "train.txt").read_text().split()) == len((dataset / "val.txt").read_text().split()) == 2
    yolo = trainers_python.parent / "yolo"
    run_command([str(yolo), "segment", "train", "model=yolo11n-seg.yaml", f"data={dataset / 'data.yaml'}",
                 "imgsz=128", "epochs=1", "batch=2", "device=cpu", "workers=0", "plots=False",
                 f"project={tmp_path / 'runs'}", "name=cli", "exist_ok=True"], tmp=tmp_path)
    run = tmp_path / "runs" / "cli"
    (row,) = list(csv.DictReader((run / "results.csv").open()))
    row = {k.strip(): float(v) for k, v in row.items()}
    for key in ("train/box_loss", "train/seg_loss", "train/cls_loss", "val/box_loss", "val/seg_loss"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert (run / "weights" / "last.pt").is_file()
