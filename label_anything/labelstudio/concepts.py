"""Concepts in Label Studio's terms: the phrase typed in a ``<TextArea>``, the label its instances go under, and
the phrases that stand for each label ("label names as concepts"). No model here: ``app.concepts`` asks SAM 3.

What Label Studio sends when a phrase is typed (read in its front-end, HumanSignal/label-studio ``web/``):

- ``TextArea`` (``libs/editor/src/tags/control/TextArea/TextArea.jsx``): Enter or "Add" calls ``addText`` →
  ``onChange`` → ``updateResult`` (``ClassificationBase.js``, a per-object result on the TextArea's ``toName``) and
  then ``area.notifyDrawingFinished()``. Its value is ``{"text": [every submitted row]}``: a second phrase is
  appended, so the newest phrase is the *last* row.
- ``notifyDrawingFinished`` (``libs/editor/src/mixins/Regions.js``) fires ``regionFinishedDrawing`` when the
  control is ``smartEnabled`` (``tags/control/Base.js``: ``smart`` defaults to true, so any control is, once the
  Auto-Annotation toggle is on) and the area may notify: a TextArea's ``ClassificationArea``
  (``regions/Area.js``) has ``supportSuggestions`` false, so it always may (no ``smart`` attribute needed).
- ``lsf:regionFinishedDrawing`` (``apps/labelstudio/src/pages/DataManager/DataManager.jsx``) posts
  ``/api/ml/<id>/interactive-annotating`` with ``context.result`` = ``serializeAnnotation()`` filtered to the ids
  of ``getConnectedDynamicRegions``: every area of the same ``type`` (``""`` for classifications), label and
  ``to_name``, so the TextArea's result, and possibly other per-image classifications (``Choices``...) beside it.
- A classification result is serialized (``regions/Result.js`` ``serialize``; ``ClassificationArea.serialize``
  gives ``{}``) as ``{"id", "from_name", "to_name", "type": "textarea", "origin", "value": {"text": [...]}}``:
  **no** ``original_width`` / ``original_height`` / ``image_rotation``, and no label. The image's size is
  therefore the fetched image's, and the label is not the one selected in the labeling screen (Label Studio
  does not send it) but one the text names (``concept_label``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from label_anything.labelstudio.config import LabelConfig
from label_anything.labelstudio.context import (
    MAX_REGIONS,
    PROMPT_TYPES,
    TEXTAREA_TYPE,
    ContextError,
    region_rotation,
    without_region_texts,
)

MAX_CONCEPT_CHARS = 200
"""Longest phrase accepted, as ``engine.concepts.MAX_CONCEPT_CHARS`` (the layers keep ``labelstudio`` and ``engine``
apart, so the number is repeated; a test checks both agree). Checked here so a bad request costs no image fetch."""

MAX_TEXT_ROWS = 1000
"""Most rows a TextArea value may hold (Label Studio sends every row submitted so far)."""


@dataclass(frozen=True)
class TypedConcept:
    """A phrase typed in a concept TextArea, for one image.

    Attributes:
        to_name: the image object name (the TextArea's ``toName``).
        from_name: the TextArea control.
        text: the newest row, whitespace collapsed, 1 to ``MAX_CONCEPT_CHARS`` characters: a phrase, or
            ``LABEL: phrase`` (see ``concept_label``).
        width, height: ``original_width`` / ``original_height`` when the client sent them (Label Studio does
            not), else None: the fetched image's size is used.
        rotation: ``image_rotation`` (0 when absent), passed through to the answer.
    """

    to_name: str
    from_name: str
    text: str
    width: int | None
    height: int | None
    rotation: float


def parse_typed_concept(context: Any, config: LabelConfig) -> TypedConcept | None:
    """The concept typed in ``params.context``, or None when it holds no TextArea result (then it is a click:
    ``parse_context``, which also reports a malformed context).

    A TextArea result counts when it is one of the image's concept TextAreas (``config.concept_textareas``);
    the text of a per-region TextArea (sharing its ``id`` with a smart region) and other classification
    results (``Choices``...) Label Studio sends beside it are ignored. With several concept results, the last
    one is read. Raises ContextError for a TextArea value that is no phrase (not ``{"text": [str, ...]}``, no
    row, an empty or blank newest row, one over ``MAX_CONCEPT_CHARS``), for a TextArea that is not a concept
    one, and for a context that also holds smart regions (Label Studio never sends both at once).
    """
    if not isinstance(context, dict):
        return None
    regions = context.get("result")
    if not isinstance(regions, list) or len(regions) > MAX_REGIONS:
        return None
    regions = without_region_texts(regions)
    texts = [r for r in regions if isinstance(r, dict) and r.get("type") == TEXTAREA_TYPE]
    if not texts:
        return None
    if any(isinstance(r, dict) and r.get("type") in PROMPT_TYPES for r in regions):
        raise ContextError("the context holds a typed concept and smart regions: send them in separate requests")
    region = texts[-1]
    to_name = _to_name(region, config)
    config.image_key(to_name)  # a TextArea on something else than an <Image> cannot name instances in it
    concept_areas = config.concept_textareas(to_name)
    from_name = region.get("from_name")
    if not isinstance(from_name, str) or not from_name:
        if len(concept_areas) != 1:
            raise ContextError("a textarea result has no from_name and the label config cannot tell which "
                               f"TextArea of {to_name!r} it is: send from_name")
        from_name = concept_areas[0]
    if from_name not in concept_areas:
        known = ", ".join(map(repr, concept_areas)) or "none"
        raise ContextError(
            f"TextArea {from_name[:60]!r} is not a concept TextArea of {to_name!r} (concept TextAreas: {known}; "
            'mark the one to read with concept="true")'
        )
    return TypedConcept(
        to_name=to_name,
        from_name=from_name,
        text=_phrase(region.get("value"), from_name),
        width=_optional_size(region, "original_width"),
        height=_optional_size(region, "original_height"),
        rotation=region_rotation(region),
    )


def _to_name(region: dict, config: LabelConfig) -> str:
    to_name = region.get("to_name")
    if isinstance(to_name, str) and to_name:
        return to_name
    images = tuple(config.images)
    if len(images) != 1:
        raise ContextError(f"a textarea result has no to_name and the label config has {len(images)} images: "
                           "send to_name")
    return images[0]


def _phrase(value: Any, from_name: str) -> str:
    """The newest row of a TextArea value, checked: one line of at most ``MAX_CONCEPT_CHARS`` characters."""
    if not isinstance(value, dict) or "text" not in value:
        raise ContextError(f"the result of TextArea {from_name[:60]!r} has no value.text")
    rows = value["text"]
    if isinstance(rows, str):  # other clients may send the text itself
        rows = [rows]
    if not isinstance(rows, list):
        raise ContextError(f"TextArea {from_name[:60]!r}: value.text must be a list of strings, "
                           f"got {type(rows).__name__}")
    if len(rows) > MAX_TEXT_ROWS:
        raise ContextError(f"TextArea {from_name[:60]!r} holds {len(rows)} rows; at most {MAX_TEXT_ROWS} are read")
    if not rows:
        raise ContextError(f"TextArea {from_name[:60]!r} holds no text: type a word or a short phrase")
    bad = [row for row in rows if not isinstance(row, str)][:1]
    if bad:
        raise ContextError(f"TextArea {from_name[:60]!r}: every row must be a string, got {type(bad[0]).__name__}")
    newest = rows[-1]
    if len(newest) > 10 * MAX_CONCEPT_CHARS:  # before splitting a huge string: its length says enough
        raise ContextError(f"the concept is {len(newest)} characters long; a concept is a short phrase "
                           f"(at most {MAX_CONCEPT_CHARS})")
    text = " ".join(newest.split())
    if not text:
        raise ContextError(f"the concept typed in TextArea {from_name[:60]!r} is empty: type a word or a short phrase")
    if len(text) > MAX_CONCEPT_CHARS:
        raise ContextError(f"the concept is {len(text)} characters long; a concept is a short phrase "
                           f"(at most {MAX_CONCEPT_CHARS})")
    return text


def _optional_size(region: dict, key: str) -> int | None:
    value = region.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or not 0 < value <= 1e6:
        raise ContextError(f"{key} must be a positive whole number of pixels, got {value!r}")
    return int(value)


# -- labels --------------------------------------------------------------------------------------------
def label_phrases(label: str, concepts: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The phrases that stand for ``label`` (``serve --concepts``): its entry (the exact name first, else one
    that differs in case only), else the label's own name. An entry with no phrase means: skip this label.

    >>> label_phrases("person", {"Person": ("person", "pedestrian")}), label_phrases("car", {})
    (('person', 'pedestrian'), ('car',))
    """
    if label in concepts:
        return tuple(concepts[label])
    lower = label.lower()
    for key, phrases in concepts.items():
        if key.lower() == lower:
            return tuple(phrases)
    return (label,)


def concept_label(text: str, labels: Sequence[str], concepts: Mapping[str, Sequence[str]]) -> tuple[str, str]:
    """(label, phrase) for a typed concept: the label its instances go under, and the phrase SAM 3 looks for.

    Label Studio does not send the label selected in the labeling screen with a TextArea result, so the text
    names it, case-insensitively, the first rule that applies winning:

    1. ``LABEL: phrase``: the label before the first colon, the phrase after it (``cat: tabby cat``);
    2. the phrase is a label's name (``Cat``);
    3. the phrase is one of a label's ``--concepts`` phrases (``pedestrian`` for ``person=person,pedestrian``);
    4. the image's output controls have one label only: that one.

    Raises ContextError naming the labels when none applies.

    >>> labels = ("cat", "person")
    >>> concept_label("Cat", labels, {}), concept_label("person: man in red", labels, {})
    (('cat', 'Cat'), ('person', 'man in red'))
    >>> concept_label("pedestrian", labels, {"person": ("person", "pedestrian")})
    ('person', 'pedestrian')
    """
    by_name: dict[str, str] = {}
    for label in labels:
        by_name.setdefault(label.lower(), label)
    head, colon, rest = text.partition(":")
    if colon and head.strip().lower() in by_name:
        label = by_name[head.strip().lower()]
        return label, " ".join(rest.split()) or label
    lower = text.lower()
    if lower in by_name:
        return by_name[lower], text
    for label in labels:
        if any(lower == phrase.lower() for phrase in label_phrases(label, concepts)):
            return label, text
    if len(labels) == 1:
        return labels[0], text
    shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "") if labels else "none"
    raise ContextError(
        f"the concept {text[:60]!r} names no label: type a label's name, or 'LABEL: {text[:40]}' "
        f"(labels: {shown})"
    )
