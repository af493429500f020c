"""Our encode/decode must give the official predictor's masks on the same weights, image and prompts."""

from __future__ import annotations

import importlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from label_anything.engine import Prompt, decode, encode, load_model
from label_anything.engine.cache import to_storage_dtype
from label_anything.imaging.decode import decode_image

PACKAGES = {"sam": "segment_anything", "sam_hq": "segment_anything_hq", "mobile_sam": "mobile_sam"}

# (family, config): vit_b SAM is the slow one (~11 s per encode on 2 cores); HQ is checked on its tiny
# TinyViT variant, whose decoder is the same HQ decoder as vit_b/l/h.
FAMILIES = [
    pytest.param("mobile_sam", "vit_t", id="mobile_sam"),
    pytest.param("sam_hq", "vit_tiny", id="sam_hq-vit_tiny"),
    pytest.param("sam", "vit_b", id="sam-vit_b", marks=pytest.mark.slow),
]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def exif_rotated_photo() -> np.ndarray:
    """A non-square JPEG stored sideways with EXIF orientation 6, decoded the way the product decodes it."""
    import skimage.data

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(skimage.data.coffee()).save(buf, "JPEG", quality=95, exif=exif)
    return decode_image(buf.getvalue())


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


@pytest.fixture(scope="module")
def photos(chelsea):
    return {"chelsea": chelsea, "exif-rotated coffee": exif_rotated_photo()}


@pytest.mark.parametrize(("family", "config"), FAMILIES)
def test_masks_equal_official_predictor(family, config, random_checkpoint, photos):
    path = random_checkpoint(family, config)
    ours = load_model(family, config, path, device="cpu")
    pkg = importlib.import_module(PACKAGES[family])
    net = pkg.sam_model_registry[config]()
    net.load_state_dict(torch.load(path, weights_only=True))
    predictor = pkg.SamPredictor(net.eval())
    for photo_name, image in photos.items():
        h, w = image.shape[:2]
        embedding = encode(ours, image)
        predictor.set_image(image)
        assert embedding.original_size == (h, w)
        nontrivial = 0
        for prompt_name, prompt in prompts_for(h, w).items():
            multimask = prompt.is_single_click
            got = decode(ours, embedding, prompt, keep="all")
            want_masks, want_scores, want_logits = predictor.predict(
                point_coords=prompt.points if len(prompt.points) else None,
                point_labels=prompt.point_labels if len(prompt.points) else None,
                box=prompt.box,
                multimask_output=multimask,
            )
            where = f"{family} {config}, {photo_name}, {prompt_name}"
            assert got.masks.shape == want_masks.shape, where
            assert got.masks.shape[1:] == (h, w), where
            for a, b in zip(got.masks, want_masks, strict=True):
                assert iou(a, b) >= 0.999, where
                nontrivial += 0.001 < a.mean() < 0.999
            np.testing.assert_allclose(got.scores, want_scores, atol=1e-3, err_msg=where)
            np.testing.assert_allclose(got.low_res_logits, want_logits, atol=1e-3, rtol=1e-3, err_msg=where)

            best = decode(ours, embedding, prompt, keep="best")
            i = int(np.argmax(want_scores))
            assert best.masks.shape == (1, h, w), where
            assert iou(best.masks[0], want_masks[i]) >= 0.999, where

            # Refinement: the previous answer's logits as mask prompt, as the official predictor allows.
            refined = decode(ours, embedding, Prompt(prompt.points, prompt.point_labels, prompt.box,
                                                      got.low_res_logits[i : i + 1]))
            want_r, want_rs, _ = predictor.predict(
                point_coords=prompt.points if len(prompt.points) else None,
                point_labels=prompt.point_labels if len(prompt.points) else None,
                box=prompt.box, mask_input=want_logits[i : i + 1], multimask_output=False,
            )
            assert iou(refined.masks[0], want_r[0]) >= 0.999, where + " refined"
            assert abs(float(refined.scores[0]) - float(want_rs[0])) <= 1e-3, where + " refined"

            # What the cache stores (float16 features) must not change the masks measurably.
            half = decode(ours, to_storage_dtype(embedding), prompt, keep="all")
            for a, b in zip(half.masks, want_masks, strict=True):
                assert iou(a, b) >= 0.999, where + " float16"
        # Random weights must still give real masks, or the comparison above proves nothing.
        assert nontrivial >= 3, f"{family} {config} {photo_name}: random weights gave only empty/full masks"


def test_exif_orientation_is_applied():
    """Label Studio shows (and sends coordinates for) the EXIF-rotated image; we decode the same."""
    import skimage.data

    raw = skimage.data.coffee()
    rotated = exif_rotated_photo()
    assert rotated.shape == (raw.shape[1], raw.shape[0], 3)
    buf = io.BytesIO()
    Image.fromarray(raw).save(buf, "JPEG", quality=95)
    plain = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    # Orientation 6: the stored pixels are shown rotated 90° clockwise.
    np.testing.assert_array_equal(rotated, np.rot90(plain, k=-1))


@pytest.mark.parametrize(("family", "config"), FAMILIES[:2])
def test_single_click_keeps_best_of_three(family, config, random_checkpoint, chelsea):
    model = load_model(family, config, random_checkpoint(family, config), device="cpu")
    embedding = encode(model, chelsea)
    prompt = Prompt.from_lists([(260, 140)])
    everything = decode(model, embedding, prompt, keep="all")
    best = decode(model, embedding, prompt)
    i = int(np.argmax(everything.scores))
    np.testing.assert_array_equal(best.masks[0], everything.masks[i])
    assert best.scores[0] == pytest.approx(everything.scores.max())
    single = decode(model, embedding, prompt, multimask=False)
    assert single.masks.shape[0] == 1


def test_embedding_from_another_model_is_refused(random_checkpoint, chelsea, mobile_sam_model):
    other = load_model("mobile_sam", "vit_t", random_checkpoint("mobile_sam", "vit_t", seed=1), device="cpu")
    assert other.info.model_id != mobile_sam_model.info.model_id
    embedding = encode(other, chelsea[:64, :64].copy())
    with pytest.raises(ValueError, match="embedding from"):
        decode(mobile_sam_model, embedding, Prompt.from_lists([(10, 10)]))
