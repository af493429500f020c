"""boxes-to-masks and precompute from the command line: the default ``--model-name auto`` never turns a
dataset over to GrabCut (the classical engine) behind the user's back; ``classical`` must be asked for."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture()
def small_dataset(tmp_path):
    """(COCO path, images folder) with one 40x60 image and one box."""
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[10:30, 15:45] = 220
    Image.fromarray(pixels).save(images / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [12, 8, 36, 24]}]}
    path = tmp_path / "in.json"
    path.write_text(json.dumps(coco))
    return path, images


@pytest.mark.parametrize("command", ["boxes-to-masks", "precompute"])
def test_auto_without_a_checkpoint_refuses_grabcut(command, small_dataset, tmp_path, capsys, monkeypatch):
    from label_anything.cli.parser import main

    monkeypatch.delenv("LABEL_ANYTHING_MODEL", raising=False)
    coco_path, images = small_dataset
    empty_cache = tmp_path / "no-checkpoints"
    if command == "boxes-to-masks":
        argv = ["boxes-to-masks", str(coco_path), "--images", str(images), "--out", str(tmp_path / "o.json")]
    else:
        argv = ["precompute", "--images", str(images)]
    assert main([*argv, "--cache-dir", str(empty_cache), "--no-progress"]) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("label-anything: error:")
    assert "label-anything download mobile_sam" in err[0] and "--model-name classical" in err[0]
    assert captured.out == ""  # nothing was done: no summary
    assert not (tmp_path / "o.json").exists() and not list(empty_cache.glob("embeddings/*/*.npz"))


def test_classical_when_asked_for(small_dataset, tmp_path, capsys, monkeypatch):
    from label_anything.cli.parser import main

    monkeypatch.delenv("LABEL_ANYTHING_MODEL", raising=False)
    coco_path, images = small_dataset
    out = tmp_path / "o.json"
    assert main(["boxes-to-masks", str(coco_path), "--images", str(images), "--out", str(out), "--model-name",
                 "classical", "--cache-dir", str(tmp_path / "c"), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"].startswith("classical") and summary["boxes"] == 1
    monkeypatch.setenv("LABEL_ANYTHING_MODEL", "classical")  # asked for through the environment: also explicit
    assert main(["precompute", "--images", str(images), "--cache-dir", str(tmp_path / "c"), "--no-progress"]) == 0


def test_auto_with_a_checkpoint_in_the_cache_is_allowed(small_dataset, tmp_path, capsys, monkeypatch,
                                                        random_checkpoint):
    """``auto`` is refused only when it would pick GrabCut: with MobileSAM's file in the cache it runs."""
    import shutil

    from label_anything.cli.parser import main
    from label_anything.engine.weights import CHECKPOINTS, checkpoint_dir

    monkeypatch.delenv("LABEL_ANYTHING_MODEL", raising=False)
    cache = tmp_path / "cache"
    folder = checkpoint_dir(cache)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(random_checkpoint("mobile_sam", "vit_t"), folder / CHECKPOINTS["mobile_sam"].filename)
    coco_path, images = small_dataset
    assert main(["boxes-to-masks", str(coco_path), "--images", str(images), "--out", str(tmp_path / "o.json"),
                 "--cache-dir", str(cache), "--device", "cpu", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"].startswith("mobile_sam")
