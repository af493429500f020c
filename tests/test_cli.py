"""The command line, run as a user runs it: a subprocess of the installed entry point."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXE = [sys.executable, "-m", "label_anything"]


def run(*args: str, env_cache: Path, check: bool = True) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "LABEL_ANYTHING_CACHE": str(env_cache)}
    proc = subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def photo(tmp_path_factory, chelsea) -> Path:
    path = tmp_path_factory.mktemp("photos") / "chelsea the cat.jpg"
    Image.fromarray(chelsea).save(path, quality=95)
    return path


def test_segment_with_random_mobile_sam(photo, random_checkpoint, tmp_path):
    ckpt = random_checkpoint("mobile_sam", "vit_t")
    out = tmp_path / "mask.png"
    proc = run("segment", str(photo), "--model", "mobile_sam", "--checkpoint", str(ckpt), "--point", "260,140",
               "--point", "100,50,0", "--out", str(out), "--json", env_cache=tmp_path)
    result = json.loads(proc.stdout)
    mask = np.asarray(Image.open(out))
    assert mask.shape == (300, 451) and set(np.unique(mask)) <= {0, 255}
    # the seeded random checkpoint paints a non-empty mask: an empty one would hide a wrong bbox
    assert result["area"] == int((mask == 255).sum()) > 0
    ys, xs = np.nonzero(mask)
    assert result["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert isinstance(result["score"], float) and math.isfinite(result["score"])
    assert result["model"].startswith("mobile_sam-vit_t-")


def test_segment_auto_falls_back_to_classical_with_a_warning(photo, tmp_path):
    out = tmp_path / "mask.png"
    proc = run("segment", str(photo), "--box", "120,20,420,290", "--out", str(out), "--json", env_cache=tmp_path)
    assert "classical" in proc.stderr and "label-anything download" in proc.stderr
    result = json.loads(proc.stdout)
    mask = np.asarray(Image.open(out)) > 0
    assert result["model"].startswith("classical") and result["area"] == int(mask.sum()) > 1000
    x, y, w, h = result["bbox"]
    assert x >= 120 - 1 and y >= 20 - 1 and x + w <= 420 + 1 and y + h <= 290 + 1


def test_errors_are_one_line_without_traceback(photo, tmp_path):
    proc = run("segment", str(photo), "--model", "sam", "--sam-config", "vit_h", "--point", "1,1",
               env_cache=tmp_path, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "sam_vit_h_4b8939.pth" in proc.stderr and "--checkpoint" in proc.stderr
    proc = run("segment", str(tmp_path / "missing.jpg"), "--point", "1,1", env_cache=tmp_path, check=False)
    assert proc.returncode == 2 and "cannot read image" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("segment", str(photo), "--point", "1;1", env_cache=tmp_path, check=False)
    assert proc.returncode == 2 and "a point is X,Y" in proc.stderr


def test_help_and_models(tmp_path):
    assert "segment" in run("--help", env_cache=tmp_path).stdout
    listing = run("models", env_cache=tmp_path).stdout
    assert "sam_vit_b" in listing and "mobile_sam" in listing and "classical" in listing


def test_segment_onnx_decoder_gives_the_torch_mask(photo, random_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    ckpt = random_checkpoint("mobile_sam", "vit_t")
    masks = {}
    for decoder in ("torch", "onnx"):
        out = tmp_path / f"{decoder}.png"
        run("segment", str(photo), "--model", "mobile_sam", "--checkpoint", str(ckpt), "--point", "260,140",
            "--decoder", decoder, "--out", str(out), env_cache=tmp_path)
        masks[decoder] = np.asarray(Image.open(out)) > 0
    assert list((tmp_path / "onnx").glob("*.onnx"))  # the exported decoder is cached
    a, b = masks["torch"], masks["onnx"]
    assert a.any() and (a & b).sum() / (a | b).sum() >= 0.999


def test_segment_concept_with_a_click_model_is_refused_before_the_encoder(photo, random_checkpoint, tmp_path,
                                                                          monkeypatch, capsys):
    """A refusal must not cost an encode (seconds for SAM, a minute for big models on a CPU)."""
    import label_anything.engine as engine
    from label_anything.cli import main

    def no_encode(*args, **kwargs):
        raise AssertionError("encoded before refusing")

    monkeypatch.setattr(engine, "encode", no_encode)
    code = main(["segment", str(photo), "--concept", "cat", "--model-name", "mobile_sam", "--checkpoint",
                 str(random_checkpoint("mobile_sam", "vit_t")), "--device", "cpu", "--cache-dir", str(tmp_path),
                 "--out", str(tmp_path / "m.png")])
    assert code == 2
    err = capsys.readouterr().err
    assert "need SAM 3" in err and err.count("\n") == 1
