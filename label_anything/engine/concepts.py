"""Concept prompts: name a thing (and/or box a few examples of it), get every instance in the image.

SAM 3 answers these; the other models answer only clicks and boxes (``Prompt``). Like ``Prompt``, every
coordinate here is in pixels of the original (EXIF-rotated) image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from label_anything.engine.types import Embedding
from label_anything.errors import PromptError

DEFAULT_CONCEPT_THRESHOLD = 0.5
"""The official SAM 3 processor's confidence threshold: instances scoring above it are kept."""

MAX_CONCEPT_CHARS = 200
"""Longest phrase accepted. SAM 3's text encoder reads 32 tokens; a longer text is a mistake, not a concept."""


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


def _no_labels() -> np.ndarray:
    return np.zeros((0,), dtype=bool)


@dataclass(frozen=True, eq=False)
class ConceptPrompt:
    """A phrase and/or exemplar boxes: "find every instance of this".

    Attributes:
        text: a short noun phrase ("cat", "red car"), or None when only exemplar boxes are given.
        boxes: (B, 4) float32 exemplar boxes ``x0, y0, x1, y1`` in pixels.
        box_labels: (B,) bool; True = an example of the concept, False = something that is not
            (empty: all True).
        threshold: keep instances whose score (class probability × presence) is above it, in [0, 1].

    Example:
        >>> p = ConceptPrompt.from_lists(text="cat", boxes=[(10, 20, 50, 60)])
        >>> p.text, p.boxes.shape, p.box_labels.tolist(), p.threshold
        ('cat', (1, 4), [True], 0.5)
    """

    text: str | None = None
    boxes: np.ndarray = field(default_factory=_no_boxes)
    box_labels: np.ndarray = field(default_factory=_no_labels)
    threshold: float = DEFAULT_CONCEPT_THRESHOLD

    def __post_init__(self) -> None:
        text = self.text
        if text is not None:
            if not isinstance(text, str):
                raise PromptError("a concept is a text phrase")
            text = " ".join(text.split())
            if not text:
                text = None
            elif len(text) > MAX_CONCEPT_CHARS:
                raise PromptError(f"a concept is a short phrase (at most {MAX_CONCEPT_CHARS} characters)")
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(self.box_labels).reshape(-1).astype(bool)
        if len(labels) == 0:
            labels = np.ones(len(boxes), dtype=bool)  # boxes without labels: all examples of the concept
        if len(boxes) != len(labels):
            raise PromptError(f"{len(boxes)} exemplar boxes but {len(labels)} box labels")
        if not np.all(np.isfinite(boxes)):
            raise PromptError("exemplar box coordinates must be finite numbers")
        if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
            raise PromptError("an exemplar box needs x1 > x0 and y1 > y0")
        threshold = float(self.threshold)
        if not 0.0 <= threshold <= 1.0:
            raise PromptError(f"the concept threshold is a score in [0, 1], got {self.threshold}")
        if text is None and len(boxes) == 0:
            raise PromptError("a concept prompt needs a phrase or at least one exemplar box")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "box_labels", labels)
        object.__setattr__(self, "threshold", threshold)

    @classmethod
    def from_lists(
        cls,
        text: str | None = None,
        boxes: Sequence[Sequence[float]] = (),
        labels: Sequence[bool] | None = None,
        threshold: float = DEFAULT_CONCEPT_THRESHOLD,
    ) -> ConceptPrompt:
        """Build from plain Python values; box labels default to all positive."""
        b = np.asarray(list(boxes), dtype=np.float32).reshape(-1, 4)
        lbl = np.ones(len(b), bool) if labels is None else np.asarray(list(labels), bool)
        return cls(text=text, boxes=b, box_labels=lbl, threshold=threshold)


@dataclass(frozen=True, eq=False)
class Instances:
    """Every instance a concept prompt found, best score first.

    Attributes:
        masks: (N, H, W) bool at the original image size.
        boxes: (N, 4) float32 ``x0, y0, x1, y1`` in pixels: the model's own box for each instance.
        scores: (N,) float32 in [0, 1].
        left_out: instances above the threshold not answered because their masks would not fit in memory
            (``engine.sam3.MAX_INSTANCE_MASK_BYTES``); 0 but for very large images at very low thresholds.
    """

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    left_out: int = 0

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@runtime_checkable
class ConceptModel(Protocol):
    """A model that answers concept prompts on an embedding (SAM 3)."""

    def find_instances(self, embedding: Embedding, prompt: ConceptPrompt) -> Instances:
        """Every instance of the concept in the embedded image (seconds on CPU)."""
        ...


def answers_concepts(model: object) -> bool:
    """True when ``model`` can answer a ``ConceptPrompt`` (today: SAM 3)."""
    return isinstance(model, ConceptModel)


CONCEPTS_SYNTAX = "NAME, NAME=PHRASE,PHRASE or NAME= (none), entries separated by ';'"


def parse_concepts_spec(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """``--concepts`` of ``serve`` and ``concepts-to-masks``: label (category) names → the phrases that find them.

    ``NAME`` alone is found by the phrase NAME; ``NAME=PHRASE,PHRASE`` by each phrase (one query each); ``NAME=``
    by none (left out). Spaces are collapsed, blank entries and blank phrases ignored. Raises ``PromptError`` for
    a name given twice, a phrase given twice for one name, two ``=`` in an entry, or a phrase SAM 3 cannot take.

    Example:
        >>> parse_concepts_spec("person=person, pedestrian;car; ;tree=")
        [('person', ('person', 'pedestrian')), ('car', ('car',)), ('tree', ())]
    """
    found: list[tuple[str, tuple[str, ...]]] = []
    for entry in text.split(";"):
        if not entry.strip():
            continue
        name, equals, rest = entry.partition("=")
        name = " ".join(name.split())
        if not name:
            raise PromptError(f"{entry.strip()!r}: a concept needs a name ({CONCEPTS_SYNTAX})")
        if "=" in rest:
            raise PromptError(f"{entry.strip()!r}: one '=' per entry ({CONCEPTS_SYNTAX})")
        if any(other == name for other, _ in found):
            raise PromptError(f"{name!r} is given twice: give all its phrases at once, {name}=PHRASE,PHRASE")
        phrases = [" ".join(p.split()) for p in rest.split(",")] if equals else [name]
        phrases = [p for p in phrases if p]
        repeated = next((p for i, p in enumerate(phrases) if p in phrases[:i]), None)
        if repeated is not None:
            raise PromptError(f"{name!r}: phrase {repeated!r} given twice")
        for phrase in phrases:
            ConceptPrompt(text=phrase)  # too long: the same error as a typed concept
        found.append((name, tuple(phrases)))
    return found


DUPLICATE_IOU = 0.9
"""Instances of one label (category) found by two of its phrases ("person", "pedestrian") whose masks overlap
with IoU above this are one object: the higher score stays. Instances of one phrase are SAM 3's own answer and
are all kept."""


def cross_phrase_duplicates(rles: Sequence[dict], scores: Sequence[float], phrases: Sequence[str]) -> set[int]:
    """Indexes of the instances (of one label) to leave out: each is a duplicate (``DUPLICATE_IOU``) of a
    better-scoring kept instance found by another phrase. Masks are COCO RLE (pycocotools' vectorised IoU);
    ties in score keep the earlier one.

    Example:
        >>> from label_anything.geometry.masks import mask_to_coco_rle
        >>> a = np.zeros((4, 4), bool); a[:2] = True
        >>> sorted(cross_phrase_duplicates([mask_to_coco_rle(a)] * 3, [0.5, 0.9, 0.7], ["car", "auto", "car"]))
        [0, 2]
    """
    if len(set(phrases)) < 2:
        return set()
    from pycocotools import mask as coco_mask

    order = sorted(range(len(rles)), key=lambda i: -float(scores[i]))
    iou = coco_mask.iou([rles[i] for i in order], [rles[i] for i in order], [0] * len(order))
    kept: list[int] = []  # positions in ``order``
    dropped: set[int] = set()
    for pos, index in enumerate(order):
        if any(iou[pos][k] > DUPLICATE_IOU and phrases[order[k]] != phrases[index] for k in kept):
            dropped.add(index)
        else:
            kept.append(pos)
    return dropped
