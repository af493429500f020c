"""Mask clean-up (components the user meant, small holes) and smooth mask resizing."""

from __future__ import annotations

import cv2
import numpy as np

from label_anything.engine.classical.params import HOLE_FRACTION


def postprocess(mask: np.ndarray, positive: np.ndarray, has_box: bool) -> np.ndarray:
    """Keep the components the user meant and fill small holes.

    Keeping only components that hold a positive point (or the largest, for a box) raised click IoU
    on the bench from 0.695 to 0.707 and box IoU by 0.001; filling holes changed nothing there (the
    bench's objects have no holes) and stays for GrabCut's speckle on real photos.

    Args:
        mask: (fh, fw) bool GrabCut output in the crop frame.
        positive: (P, 2) crop-frame x, y of positive points.
        has_box: a box was given: its largest component is kept too.

    Returns:
        (fh, fw) bool.
    """
    if not mask.any():
        return mask
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    frame_h, frame_w = mask.shape
    for x, y in positive:
        keep[components[min(frame_h - 1, max(0, int(y))), min(frame_w - 1, max(0, int(x)))]] = True
    keep[0] = False  # label 0 is the background
    if has_box or not keep.any():
        keep[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))] = True
    mask = keep[components]
    return _fill_small_holes(mask, HOLE_FRACTION * int(mask.sum()))


def _fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill the background components of an (fh, fw) bool mask that do not touch the frame's border
    and are at most ``max_area`` pixels."""
    count, components, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    if count <= 1:
        return mask
    frame_h, frame_w = mask.shape
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    enclosed = (left > 0) & (top > 0) & (left + stats[:, cv2.CC_STAT_WIDTH] < frame_w)
    enclosed &= top + stats[:, cv2.CC_STAT_HEIGHT] < frame_h
    fill = enclosed & (stats[:, cv2.CC_STAT_AREA] <= max_area)
    fill[0] = False  # label 0 is the mask itself
    return mask | fill[components]


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask to (h, w) with smooth edges (bilinear, then threshold at one half)."""
    if mask.shape == tuple(size):
        return mask
    resized = cv2.resize(mask.astype(np.uint8) * 255, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return resized >= 128
