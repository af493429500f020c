"""SAM 3 concept prompts in Label Studio: every instance of a thing, one region (brush, box, polygons) each.

Three ways in, all answered by ``find_instances`` of a model that ``answers_concepts`` (SAM 3):

- **Type a concept**: a phrase typed in the image's ``<TextArea>`` (``labelstudio.concepts.parse_typed_concept``)
  → every instance, under the label the text names (``concept_label``: ``cat``, or ``cat: tabby cat``).
- **Find similar**: a smart rectangle drawn with a label marked ``exemplar="true"`` in its ``RectangleLabels``
  control → every object like the boxed one, under that label. The box alone is the prompt (SAM 3's visual
  exemplar, the label's name is not added): a label's name can be any word ("object", "class 3"), while the
  boxed pixels say what is meant; more smart rectangles of the label are more exemplars, and one sent with
  ``is_positive: false`` is a negative one.
- **Label names as concepts**: "Retrieve predictions" (and opening a task) → every instance of every label of
  the label config, the label's phrases from ``serve --concepts`` (default: its own name), as one prediction.

Coordinates are pixels of the fetched image (EXIF orientation applied) until ``mask_results`` writes percent.
A model that cannot answer concepts is refused with a ``PromptError`` (HTTP 400) before any image is fetched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from label_anything.engine import SegmentationModel
from label_anything.engine.concepts import (
    DEFAULT_CONCEPT_THRESHOLD,
    ConceptPrompt,
    Instances,
    answers_concepts,
    cross_phrase_duplicates,
)
from label_anything.engine.types import Embedding
from label_anything.errors import ImageError, LabelAnythingError, PromptError
from label_anything.geometry.masks import mask_to_coco_rle
from label_anything.labelstudio.concepts import TypedConcept, concept_label, label_phrases
from label_anything.labelstudio.config import LabelConfig
from label_anything.labelstudio.context import Click, ContextError
from label_anything.labelstudio.results import OutputError, OutputOptions, mask_results, output_controls

log = logging.getLogger("label_anything.server")

ImageOf = Callable[[dict, LabelConfig, str], tuple[np.ndarray, str]]
EmbeddingOf = Callable[[np.ndarray, str], Embedding]


@dataclass(frozen=True)
class ConceptOptions:
    """How concepts are answered.

    Attributes:
        threshold: keep instances scoring above this (``serve --concept-threshold``), in [0, 1].
        label_concepts: answer "Retrieve predictions" / a task opened with every instance of every label.
        concepts: label → the phrases that stand for it (``serve --concepts``); a label not in it stands for its
            own name, one mapped to no phrase is skipped.
    """

    threshold: float = DEFAULT_CONCEPT_THRESHOLD
    label_concepts: bool = True
    concepts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def answer_click(to_name: str, from_name: str, label: str, width: int, height: int, rotation: float) -> Click:
    """The ``Click`` that ``output_controls`` and ``mask_results`` read for an answer: the image, its size, the
    label; no prompt of its own."""
    return Click(to_name=to_name, from_name=from_name, label=label, width=width, height=height, rotation=rotation,
                 points=np.zeros((0, 2), np.float32), point_labels=np.zeros((0,), np.int32), box=None)


class ConceptAnswers:
    """Concept prompts → Label Studio regions, for ``app.interactive.Backend``; thread-safe.

    Args:
        model: the backend's model; ``supported`` is False unless it answers concepts (SAM 3).
        outputs: which regions each instance gets (brush / bitmask, box, polygons).
        options: threshold, label names as concepts, the label → phrases map.
        image_of: (task, config, image name) → (image (H, W, 3) uint8 RGB, digest), as the backend fetches it.
        embedding_of: (image, digest) → its embedding, from the backend's cache or encoded once.
    """

    def __init__(self, model: SegmentationModel, outputs: OutputOptions, options: ConceptOptions,
                 image_of: ImageOf, embedding_of: EmbeddingOf) -> None:
        self.model = model
        self.outputs = outputs
        self.options = options
        self._image_of = image_of
        self._embedding_of = embedding_of

    @property
    def supported(self) -> bool:
        return answers_concepts(self.model)

    def labels_as_concepts(self, config: LabelConfig) -> bool:
        """Whether a ``/predict`` without context gets every label's instances (SAM 3, ``label_concepts`` on, and
        a label with a phrase on an image)."""
        return self.supported and self.options.label_concepts and any(
            label_phrases(label, self.options.concepts)
            for to_name in config.images for label in config.output_labels(to_name)
        )

    def _require(self, what: str) -> None:
        if not self.supported:
            raise PromptError(
                f"{what} needs SAM 3 (serve --model-name sam3); this backend serves {self.model.info.model_id}, "
                "which answers clicks and boxes only"
            )

    # -- interactive -------------------------------------------------------------------------------
    def typed(self, task: dict, config: LabelConfig, typed: TypedConcept) -> tuple[list[dict], float]:
        """Every instance of a typed phrase: (regions, mean score). Regions are one answer per instance (its
        brush / box / polygons share an answer id), each with the instance's score."""
        self._require(f"a typed concept ({typed.text[:40]!r})")
        label, phrase = concept_label(typed.text, config.output_labels(typed.to_name), self.options.concepts)
        prompt = ConceptPrompt(text=phrase, threshold=self.options.threshold)
        t0 = time.perf_counter()
        image, digest = self._image_of(task, config, typed.to_name)
        height, width = image.shape[:2]
        if (typed.width or width, typed.height or height) != (width, height):
            raise ImageError(f"task {task.get('id')}: the image decodes to {width}x{height} but the TextArea result "
                             f"says {typed.width}x{typed.height}")
        click = answer_click(typed.to_name, typed.from_name, label, width, height, typed.rotation)
        controls = output_controls(config, click, self.outputs)  # before the encoder runs
        return self._answer(task, image, digest, [prompt], click, controls, f"concept {phrase!r}", t0)

    def similar(self, task: dict, config: LabelConfig, click: Click) -> tuple[list[dict], float]:
        """Every object like the boxed one(s): ``click.boxes`` are the exemplars (``box_positive`` False: a
        negative one), the answer is under ``click.label``. (regions, mean score)."""
        self._require(f"find similar (exemplar label {click.label!r})")
        prompt = ConceptPrompt(boxes=click.boxes, box_labels=click.box_positive, threshold=self.options.threshold)
        controls = output_controls(config, click, self.outputs)
        t0 = time.perf_counter()
        image, digest = self._image_of(task, config, click.to_name)
        if image.shape[:2] != (click.height, click.width):
            raise ImageError(
                f"task {task.get('id')}: the image decodes to {image.shape[1]}x{image.shape[0]} but Label Studio "
                f"shows it as {click.width}x{click.height} (EXIF orientation or a changed file?)"
            )
        what = f"{len(click.boxes)} exemplar box(es)" + (f" + {len(click.points)} point(s) ignored"
                                                            if len(click.points) else "")
        return self._answer(task, image, digest, [prompt], click, controls, what, t0)

    def _answer(self, task: dict, image: np.ndarray, digest: str, prompts: list[ConceptPrompt], click: Click,
                controls: dict[str, str], what: str, t0: float) -> tuple[list[dict], float]:
        t1 = time.perf_counter()
        embedding = self._embedding_of(image, digest)
        t2 = time.perf_counter()
        found = merge_instances([self.model.find_instances(embedding, p) for p in prompts])  # type: ignore[attr-defined]
        t3 = time.perf_counter()
        results, scores = self._regions(found, click, controls)
        log.info(
            "task %s %r: %s → %d instance(s), %d region(s) (threshold %.3g) | image %.0f ms, embedding %.0f ms, "
            "query %.0f ms, regions %.0f ms",
            task.get("id"), click.label, what, len(scores), len(results), self.options.threshold,
            (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (time.perf_counter() - t3) * 1e3,
        )
        return results, (float(np.mean(scores)) if scores else 0.0)

    def _regions(self, found: list[tuple[np.ndarray, float]], click: Click,
                 controls: dict[str, str]) -> tuple[list[dict], list[float]]:
        results: list[dict] = []
        scores: list[float] = []
        for mask, score in found:
            regions = mask_results(mask, score, click, controls, self.outputs)
            if regions:  # an empty mask answers nothing
                results.extend(regions)
                scores.append(score)
        return results, scores

    # -- label names as concepts ---------------------------------------------------------------------
    def task_labels(self, task: dict, config: LabelConfig) -> tuple[list[dict], float] | None:
        """Every instance of every label on each image of ``task`` (the label's phrases, ``label_phrases``):
        (regions, mean score), or None when nothing was found or the task's image failed.

        Problems are logged, not raised: one bad task or label must not cost the rest of a selection its
        predictions (Label Studio throws the whole answer away on an error status).
        """
        task_id = task.get("id")
        t0 = time.perf_counter()
        results: list[dict] = []
        scores: list[float] = []
        queries = 0
        for to_name in config.images:
            wanted = [(label, label_phrases(label, self.options.concepts)) for label in config.output_labels(to_name)]
            wanted = [(label, phrases) for label, phrases in wanted if phrases]
            if not wanted:
                continue
            try:
                image, digest = self._image_of(task, config, to_name)
                embedding = self._embedding_of(image, digest)
            except LabelAnythingError as exc:
                log.warning("task %s: no instances of its labels: %s", task_id, exc)
                return None
            height, width = image.shape[:2]
            for label, phrases in wanted:
                click = answer_click(to_name, "", label, width, height, 0.0)
                try:
                    controls = output_controls(config, click, self.outputs)
                    prompts = [ConceptPrompt(text=p, threshold=self.options.threshold) for p in phrases]
                except (ContextError, OutputError, PromptError) as exc:
                    log.warning("task %s: label %r skipped: %s", task_id, label, exc)
                    continue
                queries += len(prompts)
                found = merge_instances([self.model.find_instances(embedding, p) for p in prompts])  # type: ignore[attr-defined]
                regions, found_scores = self._regions(found, click, controls)
                results.extend(regions)
                scores.extend(found_scores)
        log.info("task %s: %d concept query(ies) → %d instance(s), %d region(s) in %.0f ms (threshold %.3g)",
                 task_id, queries, len(scores), len(results), (time.perf_counter() - t0) * 1e3, self.options.threshold)
        if not results:
            return None
        return results, float(np.mean(scores))


def merge_instances(found: list[Instances]) -> list[tuple[np.ndarray, float]]:
    """(mask (H, W) bool, score) of every instance, best first; ``found`` holds one answer per phrase of a label.
    With several, an instance that duplicates a better one of another phrase is left out
    (``engine.concepts.cross_phrase_duplicates``, the rule ``concepts-to-masks`` applies too)."""
    items = [(mask, float(score), phrase) for phrase, inst in enumerate(found)
             for mask, score in zip(inst.masks, inst.scores, strict=True)]
    items.sort(key=lambda item: -item[1])  # stable: phrase order breaks ties
    if len(found) > 1:
        rles = [mask_to_coco_rle(mask) for mask, _, _ in items]
        dropped = cross_phrase_duplicates(rles, [s for _, s, _ in items], [str(p) for _, _, p in items])
        items = [item for i, item in enumerate(items) if i not in dropped]
    return [(mask, score) for mask, score, _ in items]
