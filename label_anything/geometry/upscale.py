"""Low-res mask logits → full-size boolean masks, computing only the pixels whose answer is not known.

SAM's ``postprocess_masks`` upsamples the decoder's (256, 256) logits bilinearly to the image size and
the mask is ``logits > 0``: on a 4000×3000 photo, 12 M interpolated values per click. Yet a bilinear
value is a combination of the 2×2 source values at its taps with non-negative weights: when all four
are positive the pixel is painted, when none is it is not, whatever the weights. So only output pixels
on a source block of mixed signs (a thin band along the mask's edge) need interpolating, and only the
window whose taps touch a positive source value needs looking at. Those pixels get the same source
indices and weights as PyTorch's CPU kernel (``interpolate(..., mode="bilinear", align_corners=False)``,
the weight rounded once, as its fused multiply-add does); the final sum may differ from the kernel's in
the last bit, so a pixel can differ from ``postprocess_masks`` only where its logit is within a few
1e-6 of 0. Tests compare both on random logits at many sizes, up and down.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

MAX_BAND_FRACTION = 0.1
"""Above this share of the image in mixed-sign pixels, interpolating them one by one (several gathers each)
costs more than PyTorch's vectorised kernel over every pixel, which then runs instead."""


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two source indices and their weights, as PyTorch's bilinear kernel has them.

    Returns:
        i0, i1: (out_size,) int64 source indices (equal at the last source index);
        w0, w1: (out_size,) float32 weights, ``w0 + w1 == 1``.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float64)
    # scale * (dst + 0.5) - 0.5 rounded once: exact in float64 (a 24-bit by 24-bit product), then to float32
    src = np.maximum((np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    w0 = (np.float32(1) - w1).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, w0, w1


def _window(i0: np.ndarray, i1: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Output range [start, stop) whose source taps touch source indices [lo, hi] (both taps monotone)."""
    touching = np.flatnonzero((i1 >= lo) & (i0 <= hi))
    return int(touching[0]), int(touching[-1]) + 1


def _block_states(positive: np.ndarray) -> np.ndarray:
    """Per source cell (i, j): 2 when the 2×2 block from it (clamped at the far edges) is all positive,
    0 when none of it is, 1 when mixed. (h, w) bool → (h, w) uint8."""
    down = np.concatenate([positive[1:], positive[-1:]], axis=0)
    rows_all, rows_any = positive & down, positive | down
    block_all = rows_all & np.concatenate([rows_all[:, 1:], rows_all[:, -1:]], axis=1)
    block_any = rows_any | np.concatenate([rows_any[:, 1:], rows_any[:, -1:]], axis=1)
    return block_all.astype(np.uint8) + block_any.astype(np.uint8)


def upscale_to_mask(
    logits: torch.Tensor | np.ndarray, out_size: tuple[int, int], out: np.ndarray | None = None
) -> np.ndarray:
    """``functional.interpolate(logits, out_size, mode="bilinear", align_corners=False) > 0``, computing few values.

    An output pixel's value mixes the 2×2 source block at its taps with non-negative weights: all four
    positive → painted, none positive → not painted, exactly as the kernel decides. Only pixels on a
    block of mixed signs (the thin band along the mask's edge) are interpolated, and only the window
    whose taps touch a positive source value is looked at.

    Args:
        logits: (h, w) float32 (CPU tensor or array).
        out_size: (H, W) of the mask to return.
        out: an all-False (H, W) bool array to paint into (saves allocating one), or None.

    Returns:
        (H, W) bool (``out`` when given).

    >>> x = torch.full((4, 4), -1.0)
    >>> x[1, 2] = 3.0
    >>> upscale_to_mask(x, (8, 8)).astype(int).sum(axis=0).tolist()
    [0, 0, 0, 0, 3, 3, 0, 0]
    """
    values = logits.numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    values = values.astype(np.float32, copy=False)
    h, w = values.shape
    out_h, out_w = out_size
    positive = values > 0
    if (h, w) == (out_h, out_w):  # weights 1 and 0: the kernel copies the values
        if out is None:
            return positive
        out[:] = positive
        return out
    mask = np.zeros((out_h, out_w), dtype=bool) if out is None else out
    rows = np.flatnonzero(positive.any(axis=1))
    if rows.size == 0:
        return mask
    cols = np.flatnonzero(positive.any(axis=0))
    yi0, yi1, wy0, wy1 = _taps(h, out_h)
    xi0, xi1, wx0, wx1 = _taps(w, out_w)
    block_states = _block_states(positive)
    band_estimate = np.count_nonzero(block_states == 1) * (out_h / h) * (out_w / w)
    if band_estimate > MAX_BAND_FRACTION * out_h * out_w:
        # a fragmented mask (e.g. random weights): one vectorised pass over the image is cheaper
        full = functional.interpolate(torch.from_numpy(values)[None, None], (out_h, out_w), mode="bilinear",
                                      align_corners=False)
        mask[:] = (full[0, 0] > 0).numpy()
        return mask
    y0, y1 = _window(yi0, yi1, int(rows[0]), int(rows[-1]))
    x0, x1 = _window(xi0, xi1, int(cols[0]), int(cols[-1]))
    states = np.take(block_states[yi0[y0:y1]], xi0[x0:x1], axis=1)
    window = states == 2
    by, bx = np.nonzero(states == 1)
    if by.size:
        ty0, ty1, tx0, tx1 = yi0[y0 + by], yi1[y0 + by], xi0[x0 + bx], xi1[x0 + bx]
        a0, a1, b0, b1 = wx0[x0 + bx], wx1[x0 + bx], wy0[y0 + by], wy1[y0 + by]
        # along the width within each source row, then along the height: the kernel's indices and weights,
        # a sum that may differ from the kernel's in the last bit (see the module docstring)
        top = values[ty0, tx0] * a0 + values[ty0, tx1] * a1
        bottom = values[ty1, tx0] * a0 + values[ty1, tx1] * a1
        window[by, bx] = (top * b0 + bottom * b1) > 0
    mask[y0:y1, x0:x1] = window
    return mask


def sam_logits_to_masks(
    low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int], img_size: int = 1024
) -> np.ndarray:
    """SAM's ``postprocess_masks(...) > mask_threshold (0)`` for CPU logits, upscaling only the painted window.

    The first step (256 → ``img_size`` square, crop the padding) is the official one, unchanged; the
    second (→ ``original_size``), the expensive one on a large photo, runs on the window only.

    Args:
        low_res: (C, 256, 256) float32 CPU logits.
        input_size: (h, w) of the resized image inside the ``img_size`` square.
        original_size: (H, W) of the image.

    Returns:
        (C, H, W) bool.
    """
    square = functional.interpolate(low_res[None].float(), (img_size, img_size), mode="bilinear", align_corners=False)
    cropped = square[0, :, : input_size[0], : input_size[1]]
    masks = np.zeros((len(cropped), *original_size), dtype=bool)
    for channel, mask in zip(cropped, masks, strict=True):
        upscale_to_mask(channel, original_size, out=mask)
    return masks
