"""The concepts of a ``concepts-to-masks`` run: categories, each found by one or more phrases.

``--concepts 'person=person,pedestrian;car=car'`` names two categories, ``person`` (two phrases, two queries
per image) and ``car``; ``--concept cat`` (repeatable) is the category ``cat`` found by the phrase ``cat``, and
``--concept person=person,pedestrian`` one category with its phrases. Without either, a COCO file's category
names are the concepts (each its own phrase). The output's categories are these, in this order; a category
named like one of the COCO file's keeps that one's id (and its other fields).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from label_anything.engine.concepts import CONCEPTS_SYNTAX, ConceptPrompt, parse_concepts_spec
from label_anything.errors import LabelAnythingError, PromptError


class ConceptSpecError(LabelAnythingError):
    """A ``--concepts`` / ``--concept`` value that is not ``NAME[=PHRASE,...]``."""


@dataclass(frozen=True)
class Category:
    """One output category and the phrases that find its instances (each phrase is one query per image)."""

    name: str
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class ConceptSet:
    """The categories of a run, in output order."""

    categories: tuple[Category, ...]

    def queries(self) -> list[tuple[str, str]]:
        """(category name, phrase) of every query, category after category, phrases in the order given."""
        return [(category.name, phrase) for category in self.categories for phrase in category.phrases]

    def as_json(self) -> list[list[Any]]:
        """``[[name, [phrase, ...]], ...]``: how the progress file's fingerprint records them."""
        return [[category.name, list(category.phrases)] for category in self.categories]

    def describe(self) -> str:
        """``person=person,pedestrian;car=car``, as ``--concepts`` takes it back."""
        return ";".join(f"{c.name}={','.join(c.phrases)}" for c in self.categories)

    def __len__(self) -> int:
        return len(self.categories)


def parse_concepts(text: str) -> list[Category]:
    """``--concepts``: ``engine.concepts.parse_concepts_spec``'s syntax, the one ``serve --concepts`` takes
    (``NAME=`` is a category no phrase looks for: it stays in the output's categories, empty).

    >>> [c.name for c in parse_concepts("person=person,pedestrian;car")]
    ['person', 'car']
    """
    try:
        found = parse_concepts_spec(text)
    except PromptError as exc:
        raise ConceptSpecError(str(exc)) from None
    if not found:
        raise ConceptSpecError(f"{text!r} names no category (expected {CONCEPTS_SYNTAX})")
    return [Category(name, phrases) for name, phrases in found]


def parse_category(text: str) -> Category:
    """``--concept``: one category, ``NAME`` (found by the phrase NAME) or ``NAME=PHRASE,PHRASE,...``.

    >>> parse_category("person = person, pedestrian")
    Category(name='person', phrases=('person', 'pedestrian'))
    """
    if ";" in text:
        raise ConceptSpecError(f"{text!r}: --concept takes one category; give several with --concepts")
    (category,) = parse_concepts(text)
    return category


def concept_set(categories: Iterable[Category]) -> ConceptSet:
    """The run's concepts from every ``--concepts`` / ``--concept``; a category named twice is an error (its
    phrases would be ambiguous: two lists, or one?)."""
    found: list[Category] = []
    for category in categories:
        if any(other.name == category.name for other in found):
            raise ConceptSpecError(f"category {category.name!r} is given twice: give all its phrases at once, "
                                   f"{category.name}=PHRASE,PHRASE")
        found.append(category)
    return ConceptSet(tuple(found))


def coco_concepts(categories: Sequence[Any]) -> ConceptSet:
    """The default concepts of a COCO file: each category's name, its own phrase (first of a repeated name)."""
    found: list[Category] = []
    for entry in categories:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not " ".join(name.split()):
            continue
        name = " ".join(name.split())
        if all(other.name != name for other in found):
            try:
                ConceptPrompt(text=name)
            except PromptError as exc:
                raise ConceptSpecError(f"COCO category {name[:40]!r}: {exc}") from None
            found.append(Category(name, (name,)))
    return ConceptSet(tuple(found))


def output_categories(concepts: ConceptSet, coco_categories: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """The output's ``categories``: one per concept category, in order. A COCO category of the same name lends
    its entry (id, supercategory...); the others get ids after the largest whole-number id of the file."""
    by_name: dict[str, dict[str, Any]] = {}
    for entry in coco_categories:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and "id" in entry:
            by_name.setdefault(" ".join(entry["name"].split()), entry)
    taken = [e.get("id") for e in coco_categories if isinstance(e, dict)]
    taken = [i for i in taken if isinstance(i, int) and not isinstance(i, bool)]
    next_id = max(taken, default=0) + 1
    out = []
    for category in concepts.categories:
        entry = by_name.get(category.name)
        if entry is not None:
            out.append({**entry, "name": category.name})
        else:
            out.append({"id": next_id, "name": category.name})
            next_id += 1
    return out
