"""SAM 2.1 (issue 9): our encode/decode gives the official SAM2ImagePredictor's masks on the same weights.

Reference: Meta's SAM 2 code as packaged by Roboflow (``rf-sam-2``), the same code our model runs, with
its own stateful ``SAM2ImagePredictor``; weights are seeded random, saved in the official
``{"model": state_dict}`` format that ``load_model`` reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import warnings
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch

pytest.importorskip("sam2.build_sam", reason="SAM 2 needs rf-sam-2")

from label_anything.engine import Prompt, decode, encode, load_model
from label_anything.engine.cache import embedding_from_bytes, embedding_to_bytes, to_storage_dtype
from label_anything.engine.models import choose_model
from label_anything.engine.sam2 import SAM2_CONFIGS, build_sam2_network
from label_anything.engine.weights import CHECKPOINTS, find_spec
from label_anything.errors import CheckpointError


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def save_random_sam2(config: str, path: Path, seed: int = 0, version: str = "2.1") -> Path:
    torch.manual_seed(seed)
    torch.save({"model": build_sam2_network(config, version).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def sam2_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam2")
    built: dict[tuple[str, int, str], Path] = {}

    def make(config: str = "tiny", seed: int = 0, version: str = "2.1") -> Path:
        key = (config, seed, version)
        if key not in built:
            built[key] = save_random_sam2(config, folder / f"random-sam{version}-{config}-{seed}.pt", seed, version)
        return built[key]

    return make


def prompts_for(h: int, w: int) -> dict[str, Prompt]:
    cx, cy = w * 0.5, h * 0.45
    box = (w * 0.2, h * 0.15, w * 0.75, h * 0.8)
    return {
        "click": Prompt.from_lists([(cx, cy)]),
        "click+negative": Prompt.from_lists([(cx, cy), (w * 0.3, h * 0.3)], [1, 0]),
        "three points": Prompt.from_lists([(cx, cy), (w * 0.6, h * 0.6), (w * 0.1, h * 0.9)], [1, 1, 0]),
        "box": Prompt.from_lists(box=box),
        "box+points": Prompt.from_lists([(cx, cy), (w * 0.25, h * 0.2)], [1, 0], box=box),
    }


def official_predictor(path: Path, config: str):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from label_anything.engine.sam2 import config_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script deprecation inside SAM2Transforms
        return SAM2ImagePredictor(build_sam2(config_file(config), ckpt_path=str(path), device="cpu"))


@pytest.mark.parametrize(
    "config", [pytest.param("tiny", id="tiny"), pytest.param("small", id="small", marks=pytest.mark.slow)]
)
def test_masks_equal_official_predictor(config, sam2_checkpoints, chelsea):
    path = sam2_checkpoints(config)
    ours = load_model("sam2", config, path, device="cpu")
    predictor = official_predictor(path, config)
    # Non-square and portrait: the SAM 2 resize is to 1024 x 1024 without keeping the aspect ratio.
    for name, image in {"chelsea": chelsea, "portrait": np.ascontiguousarray(chelsea.transpose(1, 0, 2))}.items():
        h, w = image.shape[:2]
        embedding = encode(ours, image)
        assert embedding.original_size == (h, w)
        assert embedding.arrays["features"].shape == (1, 256, 64, 64)
        assert embedding.arrays["high_res_feats_0"].shape == (1, 32, 256, 256)
        assert embedding.arrays["high_res_feats_1"].shape == (1, 64, 128, 128)
        predictor.set_image(image)
        half = embedding_from_bytes(embedding_to_bytes(to_storage_dtype(embedding)))  # what the cache keeps
        nontrivial = 0
        for prompt_name, prompt in prompts_for(h, w).items():
            where = f"sam2 {config}, {name}, {prompt_name}"
            multimask = prompt.is_single_click
            got = decode(ours, embedding, prompt, keep="all")
            want_masks, want_scores, want_logits = predictor.predict(
                point_coords=prompt.points if len(prompt.points) else None,
                point_labels=prompt.point_labels if len(prompt.points) else None,
                box=prompt.box,
                multimask_output=multimask,
            )
            assert got.masks.shape == want_masks.shape == ((3 if multimask else 1), h, w), where
            for a, b in zip(got.masks, want_masks, strict=True):
                assert iou(a, b) >= 0.999, where
                nontrivial += 0.001 < a.mean() < 0.999
            np.testing.assert_allclose(got.scores, want_scores, atol=1e-3, err_msg=where)
            np.testing.assert_allclose(got.low_res_logits, want_logits, atol=1e-3, rtol=1e-3, err_msg=where)

            best = decode(ours, embedding, prompt)
            i = int(np.argmax(want_scores))
            assert best.masks.shape == (1, h, w), where
            assert iou(best.masks[0], want_masks[i]) >= 0.999, where

            refined = decode(
                ours, embedding, Prompt(prompt.points, prompt.point_labels, prompt.box, got.low_res_logits[i : i + 1])
            )
            want_r, want_rs, _ = predictor.predict(
                point_coords=prompt.points if len(prompt.points) else None,
                point_labels=prompt.point_labels if len(prompt.points) else None,
                box=prompt.box,
                mask_input=want_logits[i : i + 1],
                multimask_output=False,
            )
            assert iou(refined.masks[0], want_r[0]) >= 0.999, where + " refined"
            assert abs(float(refined.scores[0]) - float(want_rs[0])) <= 1e-3, where + " refined"

            for a, b in zip(decode(ours, half, prompt, keep="all").masks, want_masks, strict=True):
                assert iou(a, b) >= 0.999, where + " float16 cache"
        assert nontrivial >= 3, f"sam2 {config} {name}: random weights gave only empty/full masks"


def test_sam2_0_checkpoint_loads(sam2_checkpoints, chelsea):
    """A SAM 2.0 checkpoint (no 2.1-only tensors) builds the SAM 2.0 architecture."""
    model = load_model("sam2", "tiny", sam2_checkpoints("tiny", version="2"), device="cpu")
    assert model.arch.version == "2"
    seg = decode(model, encode(model, chelsea[:64, :96].copy()), Prompt.from_lists(box=(10, 10, 60, 50)))
    assert seg.masks.shape == (1, 64, 96)


def test_wrong_checkpoints_are_refused_clearly(sam2_checkpoints, random_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not fit sam2 small"):
        load_model("sam2", "small", sam2_checkpoints("tiny"), device="cpu")
    with pytest.raises(CheckpointError, match="does not fit sam2 tiny"):
        load_model("sam2", "tiny", random_checkpoint("mobile_sam", "vit_t"), device="cpu")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt"):  # shared SAM 1 loader message
        load_model("sam2", "tiny", bad, device="cpu")
    with pytest.raises(CheckpointError, match=r"label-anything download sam2\.1_hiera_base_plus"):
        choose_model("sam2", "base_plus", cache_dir=tmp_path)


def test_embedding_from_another_model_is_refused(sam2_checkpoints, mobile_sam_model, chelsea):
    model = load_model("sam2", "tiny", sam2_checkpoints("tiny"), device="cpu")
    small = chelsea[:64, :64].copy()
    with pytest.raises(ValueError, match="embedding from"):
        decode(model, encode(mobile_sam_model, small), Prompt.from_lists([(10, 10)]))


def test_registry_has_a_sam2_1_checkpoint_per_config():
    """One official SAM 2.1 file per config, all from the same Meta release folder, named as the URL names it."""
    specs = [spec for spec in CHECKPOINTS.values() if spec.model == "sam2"]
    assert sorted(spec.config for spec in specs) == sorted(SAM2_CONFIGS)
    folders = set()
    for spec in specs:
        assert find_spec("sam2", spec.config) is spec
        assert spec.name == f"sam2.1_hiera_{spec.config}" and spec.filename == spec.name + ".pt"
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256) and spec.size > 0, spec.name
        url = urlsplit(spec.url)
        assert url.scheme == "https" and PurePosixPath(url.path).name == spec.filename, spec.url
        folders.add((url.netloc, str(PurePosixPath(url.path).parent)))
    assert len(folders) == 1, folders  # one release: a URL from another would be a different checkpoint
    assert len({spec.sha256 for spec in specs}) == len(specs)
    # Bigger architectures are bigger files (catches sizes pasted to the wrong entry).
    sizes = [CHECKPOINTS[f"sam2.1_hiera_{config}"].size for config in SAM2_CONFIGS]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_auto_prefers_sam2_tiny_on_cpu_over_sam_vit_b(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("sam_vit_b", "sam2.1_hiera_tiny"):
        (folder / CHECKPOINTS[name].filename).write_bytes(b"x")
    assert choose_model("auto", cache_dir=tmp_path, device="cpu").name == "sam2"


def test_cli_download_verifies_sam2_checkpoints(http_stub, sam2_checkpoints, tmp_path, monkeypatch, capsys):
    """`label-anything download sam2.1_hiera_tiny --url`: a byte flipped → one-line error, nothing left; the
    right bytes (registry digest matching) → the file where `--model-name sam2` looks, and it loads."""
    from label_anything.cli.parser import main

    data = sam2_checkpoints("tiny").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    spec = dataclasses.replace(CHECKPOINTS["sam2.1_hiera_tiny"], size=len(data), sha256=digest)
    monkeypatch.setitem(CHECKPOINTS, spec.name, spec)
    server = http_stub()
    url = server.url + "/mirror/" + spec.filename
    folder = tmp_path / "checkpoints"
    argv = ["download", spec.name, "--cache-dir", str(tmp_path), "--url", url]

    i = len(data) // 3
    server.routes["/mirror/" + spec.filename] = (200, {}, data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1 :])
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "corrupt" in errors[0] and url in errors[0] and spec.filename in errors[0], errors
    assert not folder.exists() or list(folder.iterdir()) == []

    server.routes["/mirror/" + spec.filename] = (200, {}, data)
    assert main(argv) == 0
    assert f"{spec.name}: {folder / spec.filename}" in capsys.readouterr().out
    assert [p.name for p in folder.iterdir()] == [spec.filename]
    choice = choose_model("sam2", "tiny", cache_dir=tmp_path)
    assert choice.checkpoint == folder / spec.filename
    assert load_model("sam2", "tiny", choice.checkpoint, device="cpu").info.weights_digest == spec.sha256
    assert [hit[1] for hit in server.hits] == ["/mirror/" + spec.filename] * 2


def test_segment_and_serve_with_sam2_tiny(sam2_checkpoints, chelsea, chelsea_jpeg, original_label_config, tmp_path):
    """The two entry points a user has, with a random-weight SAM 2.1 tiny checkpoint."""
    import os
    import subprocess
    import sys
    from urllib.parse import quote

    from starlette.testclient import TestClient

    from label_anything.app.interactive import Backend, ServeOptions
    from label_anything.engine.cache import EmbeddingCache
    from label_anything.imaging.fetch import ImageFetcher
    from label_anything.labelstudio.rle import brush_rle_decode
    from label_anything.server.http import create_app

    ckpt = sam2_checkpoints("tiny")
    out = tmp_path / "mask.png"
    proc = subprocess.run(
        [sys.executable, "-m", "label_anything", "segment", str(chelsea_jpeg), "--model-name", "sam2",
         "--sam-config", "tiny", "--checkpoint", str(ckpt), "--point", "260,140", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "LABEL_ANYTHING_CACHE": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert '"model": "sam2-tiny-' in proc.stdout and out.is_file()

    model = load_model("sam2", "tiny", ckpt, device="cpu")
    backend = Backend(model, ImageFetcher(local_files_root=chelsea_jpeg.parent), EmbeddingCache(dtype=np.float32),
                      ServeOptions())
    h, w = chelsea.shape[:2]
    point = {"original_width": w, "original_height": h, "image_rotation": 0, "is_positive": True,
             "value": {"x": 260 * 100 / w, "y": 140 * 100 / h, "width": 0.5, "keypointlabels": ["cat"]},
             "from_name": "KeyPointLabels", "to_name": "image", "type": "keypointlabels"}
    request = {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=" + quote(chelsea_jpeg.name)}}],
               "label_config": original_label_config, "params": {"context": {"result": [point]}}}
    with TestClient(create_app(backend)) as client:
        assert client.post("/setup", json={"schema": original_label_config}).json()["model_version"].startswith(
            "sam2-tiny-")
        answer = client.post("/predict", json=request)
    assert answer.status_code == 200, answer.text
    (region,) = [r for r in answer.json()["results"][0]["result"] if r["type"] == "brushlabels"]
    from label_anything.imaging.decode import read_image

    served_image = read_image(chelsea_jpeg)  # the JPEG's pixels, as the backend reads them
    expected = decode(model, encode(model, served_image), Prompt.from_lists([(260, 140)])).best()[0]
    served = brush_rle_decode(region["value"]["rle"], h, w)
    assert np.count_nonzero(served != expected) <= max(10, expected.size // 10_000)
