"""Rectangles of the working image: the crop GrabCut sees (``Crop``), boxes of masks and points."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from label_anything.engine.classical.cleanup import resize_mask
from label_anything.engine.classical.params import MARGIN_FRACTION, MIN_MARGIN


@dataclass(frozen=True)
class Crop:
    """A rectangle of the working image, and the scale GrabCut sees it at.

    ``x0, y0, x1, y1`` are integer working-image pixels (x1, y1 exclusive); a working-image point p
    is at ``(p - (x0, y0)) * scale`` in the crop frame.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    scale: float

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the scaled crop, at least 1 x 1."""
        return (
            max(1, round((self.y1 - self.y0) * self.scale)),
            max(1, round((self.x1 - self.x0) * self.scale)),
        )

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) working-image x, y → (N, 2) float64 crop-frame x, y."""
        return (np.asarray(xy, np.float64).reshape(-1, 2) - (self.x0, self.y0)) * self.scale


def crop_bounds(rect: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The rectangle plus the background margin, clipped to an (h, w) image: integer x0, y0, x1, y1."""
    h, w = size
    x0, y0, x1, y1 = (float(v) for v in rect)
    margin = max(MIN_MARGIN, MARGIN_FRACTION * max(x1 - x0, y1 - y0))
    cx0, cy0 = max(0, int(np.floor(x0 - margin))), max(0, int(np.floor(y0 - margin)))
    cx1, cy1 = min(w, int(np.ceil(x1 + margin))), min(h, int(np.ceil(y1 + margin)))
    return cx0, cy0, max(cx1, cx0 + 1), max(cy1, cy0 + 1)


def crop_patch(image: np.ndarray, crop: Crop) -> np.ndarray:
    """(fh, fw, 3) uint8: the crop of the working image, scaled to the crop frame."""
    frame_h, frame_w = crop.frame_size
    patch = image[crop.y0 : crop.y1, crop.x0 : crop.x1]
    if patch.shape[:2] != (frame_h, frame_w):
        patch = cv2.resize(patch, (frame_w, frame_h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(patch)


def paste(frame_mask: np.ndarray, crop: Crop, size: tuple[int, int]) -> np.ndarray:
    """Crop-frame mask → (h, w) bool working-image mask."""
    out = np.zeros(size, bool)
    out[crop.y0 : crop.y1, crop.x0 : crop.x1] = resize_mask(frame_mask, (crop.y1 - crop.y0, crop.x1 - crop.x0))
    return out


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float64 x0, y0, x1, y1 (exclusive) of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def union_box(box: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Smallest (4,) box holding ``box`` and the (N, 2) points."""
    if len(points) == 0:
        return box
    return np.concatenate([np.minimum(box[:2], points.min(axis=0)), np.maximum(box[2:], points.max(axis=0) + 1)])


def grow_box(box: np.ndarray, fraction: float, size: tuple[int, int]) -> np.ndarray:
    """The box grown by ``fraction`` of its size (at least MIN_MARGIN) on each side, clipped to (h, w)."""
    h, w = size
    pad = np.maximum(fraction * (box[2:] - box[:2]), MIN_MARGIN)
    return np.clip(np.concatenate([box[:2] - pad, box[2:] + pad]), 0, [w, h, w, h])
