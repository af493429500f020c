"""Label config XML → what the backend needs: image objects, controls by type and ``to_name``, labels.

Label Studio does not validate predictions against the label config, so a region sent under a wrong
control name fails silently in the browser. Every output control is therefore looked up here by its
*type* and the object it points at, never by a fixed name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from label_anything.errors import LabelAnythingError

OUTPUT_TYPES = ("brushlabels", "bitmasklabels", "rectanglelabels", "polygonlabels")
"""Control types this backend can answer with (lower-case, as in a result's ``type``). The mask goes to a
``BrushLabels`` control (brush RLE) or, where the image has none, to a ``BitmaskLabels`` one (PNG data URL)."""

EXEMPLAR_ATTRIBUTE = "exemplar"
"""``<Label value="car" exemplar="true"/>`` in a ``RectangleLabels`` control: a smart rectangle drawn with that label
asks SAM 3 for every similar object ("find similar", see ``app.concepts``). Label Studio ignores attributes it
does not know: its server's config schema (``label_config_schema.json``) only checks ``name``/``toName``/``value``,
and the editor's ``ConfigValidator.validateAttributes`` checks only the attributes a tag's model declares."""
CONCEPT_ATTRIBUTE = "concept"
"""``<TextArea name="concept" toName="image" concept="true"/>``: with several TextAreas on an image, the one whose
text is a concept to find (see ``concept_textareas``); with one, no mark is needed."""
TRUE_WORDS = ("true", "1", "yes", "on")


class LabelConfigError(LabelAnythingError):
    """The label config cannot be parsed, or has no control the backend can answer with."""


@dataclass(frozen=True)
class Control:
    """One labeling control, e.g. ``<BrushLabels name="BrushLabels" toName="image">``.

    Attributes:
        name: the control's ``name`` (a result's ``from_name``).
        type: tag name in lower case (a result's ``type``), e.g. ``"brushlabels"``.
        to_names: the object names it labels (``toName`` may list several, comma separated).
        labels: the ``value`` of each ``<Label>`` child, in config order.
        exemplars: the labels marked ``exemplar="true"`` (see ``EXEMPLAR_ATTRIBUTE``), in config order.
        per_region: ``perRegion="true"`` (a TextArea or Choices that describes one region, not the image).
        concept: ``concept="true"`` (the TextArea to read typed concepts from, when an image has several).
    """

    name: str
    type: str
    to_names: tuple[str, ...]
    labels: tuple[str, ...]
    exemplars: tuple[str, ...] = ()
    per_region: bool = False
    concept: bool = False


@dataclass(frozen=True)
class LabelConfig:
    """The parsed parts of a label config.

    Attributes:
        images: object name → task data key, from ``<Image name="image" value="$image"/>``.
        controls: every control that has a ``toName``, in config order.
    """

    images: dict[str, str]
    controls: tuple[Control, ...]

    def image_key(self, to_name: str) -> str:
        """The task data key holding the image that ``to_name`` names."""
        try:
            return self.images[to_name]
        except KeyError:
            known = ", ".join(self.images) or "none"
            raise LabelConfigError(
                f"the label config has no <Image name={to_name!r}> (image objects: {known})"
            ) from None

    def output_control(self, type_: str, to_name: str) -> Control | None:
        """The first control of ``type_`` (e.g. ``"brushlabels"``) that labels ``to_name``, or None."""
        for control in self.controls:
            if control.type == type_ and to_name in control.to_names:
                return control
        return None

    def output_labels(self, to_name: str) -> tuple[str, ...]:
        """Every label of the output controls (``OUTPUT_TYPES``) on ``to_name``, once each, in config order."""
        labels: dict[str, None] = {}
        for control in self.controls:
            if control.type in OUTPUT_TYPES and to_name in control.to_names:
                labels.update(dict.fromkeys(control.labels))
        return tuple(labels)

    def concept_textareas(self, to_name: str) -> tuple[str, ...]:
        """Names of the TextArea controls on ``to_name`` whose text is a concept (SAM 3): the ones marked
        ``concept="true"``, else every TextArea on it that is not ``perRegion``."""
        areas = [c for c in self.controls if c.type == "textarea" and to_name in c.to_names and not c.per_region]
        marked = [c.name for c in areas if c.concept]
        return tuple(marked or (c.name for c in areas))

    def is_exemplar(self, to_name: str, from_name: str, label: str) -> bool:
        """Whether ``label`` of the ``RectangleLabels`` control ``from_name`` (or, with no name, of the first one
        on ``to_name``) is marked ``exemplar="true"``."""
        for control in self.controls:
            if control.type == "rectanglelabels" and to_name in control.to_names and (
                control.name == from_name or not from_name
            ):
                return label in control.exemplars
        return False


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_WORDS


def _tag(element: Element) -> str:
    tag = element.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


@functools.lru_cache(maxsize=64)
def parse_label_config(xml: str) -> LabelConfig:
    """Parse a label config (cached: Label Studio sends the same XML with every request).

    Example:
        >>> cfg = parse_label_config('<View><Image name="img" value="$photo"/>'
        ...     '<BrushLabels name="b" toName="img"><Label value="cat"/></BrushLabels></View>')
        >>> cfg.image_key("img"), cfg.output_control("brushlabels", "img").labels
        ('photo', ('cat',))
        >>> parse_label_config('<View><Image name="img" value="$photo"/><BitmaskLabels name="m" toName="img">'
        ...     '<Label value="cat"/></BitmaskLabels></View>').output_control("bitmasklabels", "img").name
        'm'
    """
    if not xml or not xml.strip():
        raise LabelConfigError("the label config is empty")
    try:
        root = ElementTree.fromstring(xml)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise LabelConfigError(f"the label config is not valid XML ({exc})") from None
    images: dict[str, str] = {}
    controls: list[Control] = []
    for element in root.iter():
        tag = _tag(element)
        name = element.get("name")
        if not name:
            continue
        if tag == "Image":
            value = element.get("value") or element.get("valueList") or ""
            # "$image" → "image"; a literal URL (no $) is not a task data key
            if value.startswith("$"):
                images[name] = value[1:]
            continue
        to_name = element.get("toName")
        if not to_name:
            continue
        labels = tuple(
            label.get("value", "")
            for label in element.iter()
            if _tag(label) == "Label" and label.get("value")
        )
        exemplars = tuple(
            label.get("value", "")
            for label in element.iter()
            if _tag(label) == "Label" and label.get("value")
            and _true(label.get(EXEMPLAR_ATTRIBUTE))
        )
        to_names = tuple(t.strip() for t in to_name.split(",") if t.strip())
        controls.append(
            Control(
                name=name,
                type=tag.lower(),
                to_names=to_names,
                labels=labels,
                exemplars=exemplars,
                per_region=_true(element.get("perRegion")),
                concept=_true(element.get(CONCEPT_ATTRIBUTE)),
            )
        )
    return LabelConfig(images=images, controls=tuple(controls))
