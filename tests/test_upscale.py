"""The windowed upscale equals SAM's ``postprocess_masks(...) > 0`` (and plain bilinear upsampling for SAM 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional

from label_anything.geometry.upscale import sam_logits_to_masks, upscale_to_mask


def reference(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    return (functional.interpolate(logits[None, None], size, mode="bilinear", align_corners=False)[0, 0] > 0).numpy()


def smooth_logits(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    """Blob-like logits (what a decoder gives): a smoothed noise field shifted so that some part is positive."""
    coarse = rng.standard_normal((max(2, h // 16), max(2, w // 16))).astype(np.float32)
    field = functional.interpolate(torch.from_numpy(coarse)[None, None], (h, w), mode="bicubic", align_corners=False)
    return (field[0, 0] * 6 - float(rng.uniform(0, 6))).contiguous()


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    out_h=st.integers(1, 1500),
    out_w=st.integers(1, 1500),
    seed=st.integers(0, 2**31),
    smooth=st.booleans(),
)
def test_equals_bilinear_upsampling_then_threshold(h, w, out_h, out_w, seed, smooth):
    rng = np.random.default_rng(seed)
    if smooth and h >= 2 and w >= 2:
        logits = smooth_logits(rng, h, w)
    else:
        logits = torch.from_numpy(rng.standard_normal((h, w)).astype(np.float32) * 4 - 2)
    ours = upscale_to_mask(logits, (out_h, out_w))
    expected = reference(logits, (out_h, out_w))
    assert ours.shape == (out_h, out_w) and ours.dtype == bool
    assert np.array_equal(ours, expected)


@pytest.mark.parametrize(
    ("input_size", "original_size"),
    [((768, 1024), (3000, 4000)), ((1024, 683), (4000, 2667)), ((768, 1024), (480, 640)), ((768, 1024), (768, 1024))],
)
def test_sam_masks_equal_postprocess_masks(input_size, original_size):
    from segment_anything.modeling import Sam
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    rng = np.random.default_rng(sum(original_size))
    low_res = torch.stack([smooth_logits(rng, 256, 256) for _ in range(3)])
    low_res[2] = -1.0  # an empty candidate
    # postprocess_masks only reads image_encoder.img_size: a bare Sam with a tiny encoder runs the official code
    encoder = ImageEncoderViT(img_size=1024, patch_size=16, embed_dim=16, depth=1, num_heads=1, out_chans=8)
    sam = Sam(image_encoder=encoder, prompt_encoder=None, mask_decoder=None)  # type: ignore[arg-type]
    expected = (sam.postprocess_masks(low_res[None], input_size, original_size)[0] > sam.mask_threshold).numpy()
    ours = sam_logits_to_masks(low_res, input_size, original_size)
    assert ours.shape == (3, *original_size)
    assert np.array_equal(ours, expected)
    assert ours[0].any() and not ours[2].any()


def test_nothing_positive_paints_nothing():
    assert not upscale_to_mask(torch.full((64, 64), -3.0), (500, 700)).any()
    assert not upscale_to_mask(torch.zeros((64, 64)), (500, 700)).any()  # 0 is not > 0


def test_paints_into_the_given_array():
    out = np.zeros((40, 40), dtype=bool)
    logits = torch.full((10, 10), -1.0)
    logits[4:6, 4:6] = 5.0
    result = upscale_to_mask(logits, (40, 40), out=out)
    assert result is out and out.any()
    assert np.array_equal(out, reference(logits, (40, 40)))
