"""``boxes-to-masks`` killed (SIGKILL) again and again, its progress file also cut at random bytes between runs
(a kill in the middle of a write), still ends with the file an uninterrupted run writes, and never encodes
again an image whose record it had written.

Runs the real command in child processes, as a user does; classical engine (no weights).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from label_anything.app.boxes_to_masks import boxes_to_masks, partial_path
from label_anything.engine import load_model

IMAGES = 8
ENCODING = "boxes-to-masks: encoding image "  # the DEBUG line the command logs before each encode


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(COCO path, images folder): 8 textured 320x240 images with two boxes each."""
    root = tmp_path_factory.mktemp("kill")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    images, annotations = [], []
    for i in range(1, IMAGES + 1):
        pixels = rng.integers(0, 90, (240, 320, 3), dtype=np.uint8)
        pixels[40 + 5 * i:160, 60:200 + 5 * i] += 120
        Image.fromarray(pixels).save(folder / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 240, "width": 320})
        for bbox in ([50, 30 + 5 * i, 160 + 5 * i, 140], [10, 10, 80, 60]):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1, "bbox": bbox})
    path = root / "boxes.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path, folder


def _records(sidecar: Path) -> Counter[str]:
    """How many newline-ended records after the header each image id (as JSON text) has."""
    if not sidecar.exists():
        return Counter()
    lines = sidecar.read_bytes().split(b"\n")[1:-1]  # the header; the last piece has no newline
    done: Counter[str] = Counter()
    for line in lines:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # a damaged line holds no record
            done[json.dumps(json.loads(line)["image_id"])] += 1
    return done


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as f:
        return subprocess.Popen([sys.executable, "-m", "label_anything", "--log-level", "DEBUG", *argv],
                                stdout=subprocess.DEVNULL, stderr=f)


def _encoded(log: Path) -> list[str]:
    return [line.split(ENCODING, 1)[1].strip() for line in log.read_text(errors="replace").splitlines()
            if ENCODING in line]


def test_killed_runs_resume_to_the_uninterrupted_output(dataset, tmp_path):
    coco_path, folder = dataset
    reference = tmp_path / "reference.json"
    boxes_to_masks(load_model("classical"), coco_path, folder, reference, progress=False)

    out = tmp_path / "out.json"
    sidecar = partial_path(out)
    argv = ["boxes-to-masks", str(coco_path), "--images", str(folder), "--out", str(out), "--model-name",
            "classical", "--no-progress"]
    rng = random.Random(11)
    kept: set[str] = set()  # images whose record survived so far: never to be encoded again
    kills = 0
    for attempt in range(5):
        log = tmp_path / f"run{attempt}.log"
        before = _records(sidecar)
        process = _start(argv, log)
        goal = len(kept) + rng.randint(1, 2)  # kill once this many records are in the file
        deadline = time.monotonic() + 300
        while process.poll() is None and len(_records(sidecar)) < goal and time.monotonic() < deadline:
            time.sleep(0.002)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
        # Whether its log says so or its progress file: no image with a kept record was encoded again.
        assert not set(_encoded(log)) & kept
        if out.exists():
            break
        assert not set(_records(sidecar) - before) & kept, "an image with a written record was encoded again"
        if attempt % 2 == 1 and sidecar.exists():
            # as if the kill had come in the middle of writing the last record
            data = sidecar.read_bytes()
            header = data.index(b"\n") + 1
            sidecar.write_bytes(data[:rng.randint(header, len(data))])
        if attempt == 2:
            with sidecar.open("ab") as f:
                f.write(b'{"image_id": 99, "annotations": {"0": {"ar')
        kept = set(_records(sidecar))
    assert kills >= 3  # the runs really were interrupted, several times in a row

    log = tmp_path / "final.log"
    final = _start(argv, log)
    assert final.wait(timeout=300) == 0, log.read_text()[-3000:]
    encoded = _encoded(log)
    assert not set(encoded) & kept and len(encoded) == len(set(encoded))
    assert json.loads(out.read_text()) == json.loads(reference.read_text())
    assert not sidecar.exists()
