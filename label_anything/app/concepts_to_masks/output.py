"""The records of ``concepts-to-masks`` (one progress line per image) and the COCO file made of them.

A record holds every instance every phrase found, duplicates included; merging happens when OUT is written,
so ``--keep-duplicates`` can change between an interrupted run and its rerun.

Duplicates: a category found by several phrases (``person=person,pedestrian``) sees the same object through
each. Within a category, instances are taken best score first, and one whose mask overlaps an instance
already kept *from another phrase* with IoU above ``engine.concepts.DUPLICATE_IOU`` is left out (counted as
merged; the backend's "Retrieve predictions" applies the same rule). Instances of one phrase are never merged
with each other: that is the model's own answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from label_anything.app.concepts_to_masks.concept_spec import ConceptSet
from label_anything.app.concepts_to_masks.image_job import MODEL_BOX_FIELD, ImageAnswer
from label_anything.app.concepts_to_masks.sources import ImageSource
from label_anything.engine.concepts import cross_phrase_duplicates

RECORD_VERSION = 1


@dataclass
class Record:
    """One finished image, as its progress line holds it."""

    size: tuple[int, int]  # (height, width)
    instances: list[dict[str, Any]]
    empty: int = 0
    stamp: list[int] | None = None

    def to_json(self, key: str) -> dict[str, Any]:
        return {"image": key, "size": list(self.size), "stamp": self.stamp, "empty": self.empty,
                "instances": self.instances}

    @classmethod
    def of(cls, answer: ImageAnswer, stamp: list[int] | None) -> Record:
        return cls(answer.size, answer.instances, answer.empty, stamp)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_instance(value: Any, names: set[str]) -> bool:
    if not isinstance(value, dict) or value.get("category") not in names or not isinstance(value.get("concept"), str):
        return False
    rle = value.get("segmentation")
    if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str) or not isinstance(rle.get("size"), list):
        return False
    boxes = [value.get("bbox"), value.get(MODEL_BOX_FIELD)]
    return (all(isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) for v in b) for b in boxes)
            and _is_count(value.get("area")) and isinstance(value.get("score"), int | float))


def record_parser(concepts: ConceptSet):
    """The journal's parser of this run's records: a line naming a category the run lacks is damage."""
    names = {category.name for category in concepts.categories}

    def parse(value: Any) -> tuple[str, Record] | None:
        if not isinstance(value, dict) or not isinstance(value.get("image"), str):
            return None
        size, stamp, instances = value.get("size"), value.get("stamp"), value.get("instances")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_count(v) for v in size)):
            return None
        if stamp is not None and not (isinstance(stamp, list) and all(isinstance(v, int) for v in stamp)):
            return None
        if not isinstance(instances, list) or not all(_is_instance(i, names) for i in instances):
            return None
        empty = value.get("empty", 0)
        return value["image"], Record((size[0], size[1]), instances, empty if _is_count(empty) else 0, stamp)

    return parse


def merge_duplicates(instances: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """``instances`` of one image without the cross-phrase duplicates (``engine.concepts.cross_phrase_duplicates``,
    per category), in their order; and how many were left out."""
    by_category: dict[str, list[int]] = {}
    for index, instance in enumerate(instances):
        by_category.setdefault(instance["category"], []).append(index)
    dropped: set[int] = set()
    for indexes in by_category.values():
        found = cross_phrase_duplicates([instances[i]["segmentation"] for i in indexes],
                                        [instances[i]["score"] for i in indexes],
                                        [instances[i]["concept"] for i in indexes])
        dropped.update(indexes[j] for j in found)
    return [instance for i, instance in enumerate(instances) if i not in dropped], len(dropped)


@dataclass
class OutputCounts:
    """What the written file holds."""

    images: int = 0
    instances: int = 0
    merged: int = 0
    by_category: dict[str, int] | None = None


def build_coco(
    source: ImageSource,
    order: list[tuple[str, dict[str, Any]]],
    done: dict[str, Record],
    categories: list[dict[str, Any]],
    *,
    merge: bool = True,
) -> tuple[dict[str, Any], OutputCounts]:
    """The output COCO file: the images of ``order`` (key, entry) that have a record, in that order, every
    instance as an annotation of its category; and what it holds.

    Each annotation: ``id``, ``image_id``, ``category_id``, ``segmentation`` (RLE), ``area``, ``bbox`` (the mask's
    tight box), ``iscrowd`` 0, ``score``, ``concept`` (the phrase that found it) and the model's box.
    """
    ids = {c["name"]: c["id"] for c in categories}
    counts = OutputCounts(by_category={c["name"]: 0 for c in categories})
    assert counts.by_category is not None
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[str] = set()
    for key, entry in order:
        record = done.get(key)
        if record is None or key in seen:
            continue
        seen.add(key)
        image = dict(entry)
        if source.numbered:
            image = {"id": len(images) + 1, **image}
        height, width = record.size
        image["height"], image["width"] = height, width
        images.append(image)
        instances = record.instances
        if merge:
            instances, merged = merge_duplicates(instances)
            counts.merged += merged
        for instance in instances:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image["id"], "category_id": ids[instance["category"]],
                "segmentation": instance["segmentation"], "area": instance["area"], "bbox": instance["bbox"],
                "iscrowd": 0, "score": instance["score"], "concept": instance["concept"],
                MODEL_BOX_FIELD: instance[MODEL_BOX_FIELD],
            })
            counts.by_category[instance["category"]] += 1
    counts.images, counts.instances = len(images), len(annotations)
    coco = {**source.base, "images": images, "annotations": annotations, "categories": categories}
    return coco, counts

