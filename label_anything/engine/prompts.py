"""The prompt: what the user told us about the object, in pixel coordinates of the original image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from label_anything.errors import PromptError

LOW_RES_SIZE = 256
"""Side of SAM's low-resolution mask logits (the decoder's native output, and its mask prompt)."""

LOW_RES_SIZES = (LOW_RES_SIZE, 288)
"""Sides of the low-res logits a ``Prompt`` may carry: 256 (SAM, HQ-SAM, MobileSAM, SAM 2.1, classical) and 288
(SAM 3, whose 1008-pixel input gives 4 x 72). Each model checks that the logits are its own size."""


def _empty_points() -> np.ndarray:
    return np.zeros((0, 2), dtype=np.float32)


def _empty_labels() -> np.ndarray:
    return np.zeros((0,), dtype=np.int32)


@dataclass(frozen=True, eq=False)
class Prompt:
    """Points and/or a box, and optionally the low-res logits of a previous answer to refine.

    Attributes:
        points: (N, 2) float32, x then y, in pixels of the original (EXIF-rotated) image.
        point_labels: (N,) int32; 1 = on the object (positive), 0 = not on it (negative).
        box: (4,) float32 ``x0, y0, x1, y1`` in pixels, or None.
        mask_logits: (1, S, S) float32 low-res logits from a previous decode of the same model, or None;
            S is 256, or 288 for SAM 3 (``LOW_RES_SIZES``).

    Example:
        >>> p = Prompt.from_lists(points=[(10, 20), (30, 40)], labels=[1, 0])
        >>> p.points.shape, p.point_labels.tolist(), p.is_single_click
        ((2, 2), [1, 0], False)
        >>> Prompt.from_lists(points=[(5, 5)]).is_single_click
        True
    """

    points: np.ndarray = field(default_factory=_empty_points)
    point_labels: np.ndarray = field(default_factory=_empty_labels)
    box: np.ndarray | None = None
    mask_logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
        labels = np.asarray(self.point_labels, dtype=np.int32).reshape(-1)
        if len(points) != len(labels):
            raise PromptError(f"{len(points)} points but {len(labels)} point labels")
        if not np.all(np.isfinite(points)):
            raise PromptError("point coordinates must be finite numbers")
        if not np.all(np.isin(labels, (0, 1))):
            raise PromptError("point labels must be 1 (positive) or 0 (negative)")
        box = self.box
        if box is not None:
            box = np.asarray(box, dtype=np.float32).reshape(-1)
            if box.shape != (4,) or not np.all(np.isfinite(box)):
                raise PromptError("a box is four finite numbers x0, y0, x1, y1")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise PromptError(f"a box needs x1 > x0 and y1 > y0, got {box.tolist()}")
        if len(points) == 0 and box is None:
            raise PromptError("a prompt needs at least one point or a box")
        mask_logits = self.mask_logits
        if mask_logits is not None:
            mask_logits = np.asarray(mask_logits, dtype=np.float32)
            if mask_logits.ndim == 2:
                mask_logits = mask_logits[None]
            side = mask_logits.shape[-1]
            if mask_logits.shape != (1, side, side) or side not in LOW_RES_SIZES:
                raise PromptError(
                    f"mask_logits must be (1, S, S) with S one of {', '.join(map(str, LOW_RES_SIZES))}, "
                    f"got {mask_logits.shape}"
                )
        # frozen: write the normalised arrays through object.__setattr__
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "point_labels", labels)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "mask_logits", mask_logits)

    @classmethod
    def from_lists(
        cls,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        mask_logits: np.ndarray | None = None,
    ) -> Prompt:
        """Build a prompt from plain Python lists; labels default to all positive."""
        pts = np.asarray(list(points), dtype=np.float32).reshape(-1, 2)
        lbl = np.ones(len(pts), np.int32) if labels is None else np.asarray(list(labels), np.int32)
        return cls(points=pts, point_labels=lbl, box=None if box is None else np.asarray(box), mask_logits=mask_logits)

    @property
    def is_single_click(self) -> bool:
        """One point and nothing else: SAM's ambiguous case, where three candidates help."""
        return len(self.points) == 1 and self.box is None and self.mask_logits is None

    @property
    def positive_points(self) -> np.ndarray:
        """(P, 2) float32: the points labelled 1."""
        return self.points[self.point_labels == 1]

    @property
    def negative_points(self) -> np.ndarray:
        """(Q, 2) float32: the points labelled 0."""
        return self.points[self.point_labels == 0]
