"""Refinement memory: the previous answer's low-res logits, so the next click refines instead of restarting.

Label Studio re-sends every smart point of an object on each click. When a new context holds all the
points of the previous one (same task, image, label and box) plus at least one new point, the previous
answer's low-res logits ((1, 256, 256); (1, 288, 288) for SAM 3, as the model returned them) go in as
``mask_logits``, as in SAM's own interactive demo. Anything else
(a point moved or deleted, another image) starts fresh. Bounded (LRU) and thread-safe: requests are
served concurrently.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from label_anything.labelstudio.context import Click

RefineKey = tuple[str, str, str]
"""(task id, image object name, label)."""


@dataclass(frozen=True, eq=False)
class _Answer:
    image_digest: str
    points: frozenset[tuple[float, float, int]]
    box: tuple[float, ...] | None
    logits: np.ndarray  # (1, S, S) float32: S = 256, or 288 for SAM 3


def _box_key(click: Click) -> tuple[float, ...] | None:
    return None if click.box is None else tuple(round(float(v), 3) for v in click.box)


class RefineMemory:
    """LRU of the last answer per (task, image object, label).

    Args:
        max_entries: answers kept (each holds 256 KiB of logits, 324 KiB for SAM 3).
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._answers: OrderedDict[RefineKey, _Answer] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._answers)

    def previous_logits(self, key: RefineKey, click: Click, image_digest: str) -> np.ndarray | None:
        """(1, S, S) logits to refine with (the model's own size), or None when this click must start fresh."""
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
        if answer is None or answer.image_digest != image_digest or answer.box != _box_key(click):
            return None
        points = click.point_keys
        if not answer.points or not answer.points < points:  # strict superset: at least one new point
            return None
        return answer.logits

    def remember(self, key: RefineKey, click: Click, image_digest: str, logits: np.ndarray) -> None:
        """Keep this answer for the next click of the same object."""
        answer = _Answer(image_digest, click.point_keys, _box_key(click), np.array(logits, np.float32))
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self.max_entries:
                self._answers.popitem(last=False)
