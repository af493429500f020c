"""One GrabCut in a rectangle of the working image: starting labels, the cut, the mask."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from label_anything.engine.classical.cleanup import postprocess
from label_anything.engine.classical.crop import Crop, crop_bounds, crop_patch, paste
from label_anything.engine.classical.params import (
    BOX_SURE_BORDER,
    CROP_SIDE,
    MIN_SAMPLES,
    NEGATIVE_TOLERANCE,
    POINT_RADIUS,
)
from label_anything.engine.classical.seeds import Seeds


@dataclass(frozen=True)
class Cut:
    """One GrabCut answer, with what the score needs.

    Attributes:
        mask: (h, w) bool in the working image.
        frame_mask: (fh, fw) bool in the crop frame.
        patch: (fh, fw, 3) uint8 RGB crop GrabCut saw.
        labels: (fh, fw) uint8 cv2.GC_* labels GrabCut started from.
        models: (background, foreground) (1, 65) float64 colour models, or None if GrabCut was skipped.
    """

    mask: np.ndarray
    frame_mask: np.ndarray
    patch: np.ndarray
    labels: np.ndarray
    models: tuple[np.ndarray, np.ndarray] | None


def grabcut_in_rect(image: np.ndarray, seeds: Seeds, rect: np.ndarray, iterations: int) -> Cut:
    """GrabCut with the object expected inside ``rect`` ((4,) working-image x0, y0, x1, y1)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = crop_bounds(rect, (h, w))
    crop = Crop(x0, y0, x1, y1, min(1.0, CROP_SIDE / max(x1 - x0, y1 - y0)))
    patch = crop_patch(image, crop)
    labels = initial_labels(seeds, crop, rect, patch)
    mask, models = run_grabcut(patch, labels, iterations)
    mask = postprocess(mask, crop.to_frame(seeds.positive), has_box=seeds.box is not None)
    return Cut(paste(mask, crop, (h, w)), mask, patch, labels, models)


def initial_labels(seeds: Seeds, crop: Crop, rect: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """GrabCut's starting labels in the crop frame: (fh, fw) uint8 of cv2.GC_*.

    Outside ``rect`` is background (the user's box says so; for a window it is where the
    background colours are learnt): sure, or probable but for the crop's border (box prompts,
    see BOX_SURE_BORDER). Inside is probable foreground, or the previous mask split into
    probable foreground / background. Points are sure-label disks; a negative point also marks the
    region of similar colour around it (``_similar_region``).

    Args:
        patch: (fh, fw, 3) uint8 RGB, the crop as GrabCut sees it.
    """
    frame_h, frame_w = crop.frame_size
    labels = np.full((frame_h, frame_w), cv2.GC_BGD, np.uint8)
    if seeds.box is not None:
        # A box drawn a little inside the object puts object pixels in the margin: as sure background
        # they forbid the object (a cut through uniform colour is dear), as probable background they
        # only teach colours. The mask is clipped to the box afterwards.
        border = BOX_SURE_BORDER
        labels[border : frame_h - border, border : frame_w - border] = cv2.GC_PR_BGD
    (rx0, ry0), (rx1, ry1) = crop.to_frame(rect.reshape(2, 2))
    ix0, iy0 = max(0, int(np.floor(rx0))), max(0, int(np.floor(ry0)))
    ix1, iy1 = min(frame_w, int(np.ceil(rx1))), min(frame_h, int(np.ceil(ry1)))
    inner = labels[iy0:iy1, ix0:ix1]
    if seeds.prior is not None:
        prior = seeds.prior[crop.y0 : crop.y1, crop.x0 : crop.x1].astype(np.uint8)
        prior = cv2.resize(prior, (frame_w, frame_h), interpolation=cv2.INTER_NEAREST)[iy0:iy1, ix0:ix1]
        inner[:] = np.where(prior > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD)
    else:
        inner[:] = cv2.GC_PR_FGD
    if np.count_nonzero((labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD)) < MIN_SAMPLES:
        # The rectangle is the whole image: no background to learn from, but for the image's edge.
        edge = np.ones_like(labels, bool)
        edge[1:-1, 1:-1] = False
        labels[edge & (labels == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
    negative, positive = crop.to_frame(seeds.negative), crop.to_frame(seeds.positive)
    if len(negative):
        labels[_similar_region(patch, negative, positive)] = cv2.GC_BGD
    # Disks: enough pixels to teach the colour models, small enough to stay on thin parts.
    radius = max(1, round(POINT_RADIUS * max(frame_h, frame_w)))
    for points, value in ((negative, cv2.GC_BGD), (positive, cv2.GC_FGD)):
        for x, y in points:
            cv2.circle(labels, (int(x), int(y)), radius, int(value), thickness=-1)
    return labels


def _similar_region(patch: np.ndarray, points: np.ndarray, avoid: np.ndarray) -> np.ndarray:
    """The pixels a negative click speaks for: connected to it through colours close to its own.

    A sure-background disk teaches GrabCut only a few colours, and a leak (the whole table next to
    the cup) survives it. Flood-filling from the click, within NEGATIVE_TOLERANCE of its colour,
    marks the leaked region. Click + negative IoU on the bench (seed 1 / seed 0): disk only
    0.78 / 0.64; tolerance 16: 0.82 / 0.68; 24: 0.81 / 0.63 (it floods into objects).

    Args:
        patch: (fh, fw, 3) uint8 RGB crop.
        points: (Q, 2) crop-frame x, y of negative points.
        avoid: (P, 2) crop-frame x, y of positive points: a flood reaching one is dropped.

    Returns:
        (fh, fw) bool. A flood covering half the crop or more is dropped too: it is a leak of its own.
    """
    fh, fw = patch.shape[:2]
    smooth = cv2.GaussianBlur(patch, (5, 5), 0)  # texture would stop the flood after a few pixels
    flags = 4 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (1 << 8)
    tolerance = (NEGATIVE_TOLERANCE,) * 3
    region = np.zeros((fh, fw), bool)
    for x, y in points:
        fill = np.zeros((fh + 2, fw + 2), np.uint8)
        seed = (min(fw - 1, max(0, int(x))), min(fh - 1, max(0, int(y))))
        cv2.floodFill(smooth, fill, seed, 0, tolerance, tolerance, flags)
        flood = fill[1:-1, 1:-1] > 0
        reaches_positive = any(flood[min(fh - 1, max(0, int(py))), min(fw - 1, max(0, int(px)))] for px, py in avoid)
        if not reaches_positive and flood.mean() < 0.5:
            region |= flood
    return region


def run_grabcut(
    patch: np.ndarray, labels: np.ndarray, iterations: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Run GrabCut on a (fh, fw, 3) uint8 RGB patch from (fh, fw) uint8 cv2.GC_* labels.

    Returns:
        ((fh, fw) bool foreground, (background, foreground) (1, 65) float64 colour models). When a
        side has too few pixels for the colour models (tiny images, a box over the whole image),
        GrabCut cannot run: the starting foreground comes back, with None for the models.
    """
    foreground = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    n_fg = int(foreground.sum())
    if n_fg < MIN_SAMPLES or labels.size - n_fg < MIN_SAMPLES:
        return foreground, None
    labels = labels.copy()
    bgd_model, fgd_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    # GrabCut is documented for BGR; the channel order does not matter to it, but keep to the contract.
    bgr = np.ascontiguousarray(patch[:, :, ::-1])
    cv2.grabCut(bgr, labels, None, bgd_model, fgd_model, iterations, cv2.GC_INIT_WITH_MASK)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), (bgd_model, fgd_model)
