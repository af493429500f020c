"""Masks to and from SAM's low-res logits frame, so a classical answer can come back as a prompt."""

from __future__ import annotations

import cv2
import numpy as np

from label_anything.engine.classical.params import LOGIT_MAGNITUDE
from label_anything.engine.prompts import LOW_RES_SIZE


def low_res_logits(mask: np.ndarray) -> np.ndarray:
    """A mask as SAM-style low-res logits, so that it can come back as ``Prompt.mask_logits``.

    Args:
        mask: (H, W) bool at the original image size.

    Returns:
        (256, 256) float32: the image resized so its longest side is 256, padded right and bottom;
        +LOGIT_MAGNITUDE inside the mask, -LOGIT_MAGNITUDE outside and in the padding, linear across
        the edge (a low-res pixel half covered by the mask is 0).
    """
    valid_h, valid_w = _low_res_valid_size(mask.shape)
    coverage = cv2.resize(mask.astype(np.float32), (valid_w, valid_h), interpolation=cv2.INTER_AREA)
    out = np.full((LOW_RES_SIZE, LOW_RES_SIZE), -LOGIT_MAGNITUDE, np.float32)
    out[:valid_h, :valid_w] = (coverage - 0.5) * (2 * LOGIT_MAGNITUDE)
    return out


def prior_mask(logits: np.ndarray, original_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Read low-res logits (SAM's or ours) back as a mask.

    Args:
        logits: (256, 256) float; the image fills the top-left (H, W) * 256 / max(H, W), the rest is padding.
        original_size: (H, W) of the image the logits belong to.
        size: (h, w) of the wanted mask.

    Returns:
        (h, w) bool, True where the upscaled logits are > 0.
    """
    valid_h, valid_w = _low_res_valid_size(original_size)
    valid = np.ascontiguousarray(logits[:valid_h, :valid_w], dtype=np.float32)
    # Upscale the logits, not a thresholded mask: the 0 crossing stays smooth, as in SAM's postprocessing.
    return cv2.resize(valid, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) > 0


def _low_res_valid_size(original_size: tuple[int, ...]) -> tuple[int, int]:
    """(h, w) of the image inside the 256 x 256 low-res frame (longest side 256, rounded as SAM does)."""
    height, width = original_size[:2]
    scale = LOW_RES_SIZE / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
