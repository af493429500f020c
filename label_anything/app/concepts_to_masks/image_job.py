"""One image of ``concepts-to-masks``: its embedding (given, from the cache, or encoded here), then one concept
query per phrase, every instance turned into plain COCO data at once (so a query's masks never pile up).

``find_concepts`` runs in this process or on a Ray worker (``--ray-address``): it takes the pixels or the
cached embedding and returns an ``ImageAnswer`` (plain data) that travels back to the driver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from label_anything.engine import encode
from label_anything.engine.concepts import ConceptPrompt, Instances, answers_concepts
from label_anything.engine.types import Embedding, SegmentationModel
from label_anything.errors import LabelAnythingError
from label_anything.geometry.masks import mask_area, mask_to_coco_rle, mask_to_xyxy

MODEL_BOX_FIELD = "sam3_box"
"""Annotation field holding the model's own box of the instance (``[x, y, w, h]`` pixels); ``bbox`` is the
mask's tight box, as COCO evaluation and training expect."""


@dataclass
class ImageAnswer:
    """Every instance every query found in one image, as the progress file and the output hold them."""

    size: tuple[int, int] = (0, 0)  # (height, width) of the image the masks are on
    instances: list[dict[str, Any]] = field(default_factory=list)  # see ``instance_fields``
    empty: int = 0  # instances whose mask has no pixel (left out: no box, nothing to train on)
    encoded: bool = False  # False: the embedding came from the cache
    encode_seconds: float = 0.0
    query_seconds: float = 0.0
    error: str | None = None  # the image could not be queried (the model refused it)


def instance_fields(instances: Instances, k: int, category: str, phrase: str) -> dict[str, Any] | None:
    """The ``k``-th instance as the fields of its annotation-to-be (None when its mask is empty):
    ``category``, ``concept`` (the phrase), ``segmentation`` (COCO RLE, counts a string), ``area`` (mask pixels),
    ``bbox`` (the mask's tight box, ``[x, y, w, h]`` pixel edges), the model's box and ``score``."""
    mask = instances.masks[k]
    area = mask_area(mask)
    if area == 0:
        return None
    x0, y0, x1, y1 = (float(v) for v in mask_to_xyxy(mask))
    bx0, by0, bx1, by1 = (float(v) for v in instances.boxes[k])
    return {
        "category": category,
        "concept": phrase,
        "segmentation": mask_to_coco_rle(mask),
        "area": area,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        MODEL_BOX_FIELD: [round(bx0, 2), round(by0, 2), round(bx1 - bx0, 2), round(by1 - by0, 2)],
        "score": round(float(instances.scores[k]), 6),
    }


def find_concepts(
    model: SegmentationModel,
    picture: np.ndarray | Embedding,
    digest: str,
    queries: list[tuple[str, str]],
    threshold: float,
) -> ImageAnswer:
    """Answer every (category, phrase) of ``queries`` on one image.

    Args:
        model: a model that answers concepts (SAM 3).
        picture: the image's (H, W, 3) uint8 RGB pixels (encoded here), or its embedding (from the cache).
        digest: the pixels' ``image_digest``.
        queries: (category name, phrase) pairs; each phrase is one query.
        threshold: keep instances scoring above it.
    """
    if not answers_concepts(model):
        raise LabelAnythingError(f"{model.info.model_id} does not answer concept prompts")
    answer = ImageAnswer()
    t0 = time.perf_counter()
    try:
        if isinstance(picture, Embedding):
            embedding = picture
        else:
            embedding = encode(model, picture, digest)
            answer.encoded = True
        t1 = time.perf_counter()
        answer.size = (int(embedding.original_size[0]), int(embedding.original_size[1]))
        for category, phrase in queries:
            instances = model.find_instances(embedding, ConceptPrompt(text=phrase, threshold=threshold))
            for k in range(len(instances)):
                fields = instance_fields(instances, k, category, phrase)
                if fields is None:
                    answer.empty += 1
                else:
                    answer.instances.append(fields)
            del instances
    except LabelAnythingError as exc:  # a prompt or an image the model refuses: this image only
        return ImageAnswer(error=str(exc))
    answer.encode_seconds = t1 - t0
    answer.query_seconds = time.perf_counter() - t1
    return answer
