"""The prompt moved from original-image pixels to working-image pixels (``Seeds``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from label_anything.engine.classical.logits import prior_mask
from label_anything.engine.prompts import Prompt


@dataclass(frozen=True)
class Seeds:
    """The prompt in working-image pixels (the frame of ``Embedding.arrays["image"]``).

    Attributes:
        positive: (P, 2) float64 x, y of positive points inside the image.
        negative: (Q, 2) float64 x, y of negative points inside the image.
        box: (4,) float64 x0, y0, x1, y1 clipped to the image, or None (none given, or none left).
        prior: (h, w) bool previous mask from ``Prompt.mask_logits``, or None (none given, or empty).
    """

    positive: np.ndarray
    negative: np.ndarray
    box: np.ndarray | None
    prior: np.ndarray | None


def prompt_to_seeds(prompt: Prompt, original_size: tuple[int, int], work_size: tuple[int, int]) -> Seeds:
    """Move the prompt from original-image pixels to working-image pixels; drop what lies outside."""
    height, width = original_size
    h, w = work_size
    factor = np.array([w / width, h / height])

    def inside(points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        # Within a pixel of the edge is a click on the edge (percent rounding); farther is not on the image.
        near = (pts[:, 0] > -1) & (pts[:, 0] < width + 1) & (pts[:, 1] > -1) & (pts[:, 1] < height + 1)
        pts = np.clip(pts[near], 0, [width - 0.5, height - 0.5])
        return pts * factor

    box = None
    if prompt.box is not None:
        # A box dragged past the image edge means "up to the edge": clip it; drop it if nothing is left.
        clipped = np.clip(np.asarray(prompt.box, np.float64), 0, [width, height, width, height])
        if clipped[2] - clipped[0] >= 1 and clipped[3] - clipped[1] >= 1:
            box = clipped * np.tile(factor, 2)
    prior = None
    if prompt.mask_logits is not None:
        prior = prior_mask(prompt.mask_logits[0], original_size, work_size)
        if not prior.any():
            prior = None  # an empty previous answer says nothing about where the object is
    return Seeds(inside(prompt.positive_points), inside(prompt.negative_points), box, prior)
