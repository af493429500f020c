"""What a conversion did not convert, by reason: nothing is lost silently."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Tally:
    """What was not converted, by reason, and what was skipped on purpose.

    ``dropped`` and ``skipped`` count regions (one result, or the results that share an id), so that the
    regions of an export are exactly the annotations written plus these counts. ``dropped`` are losses (a
    malformed or unsupported region, a label outside the class list); ``skipped`` are the user's choices or
    Label Studio's (cancelled annotations, older annotations of a task, ``--skip-boxes``) and regions written
    elsewhere or merged into another. ``images_dropped`` counts images missing from the dataset, or present
    without their file. ``--strict`` makes ``dropped`` and ``images_dropped`` an error. ``notes`` lose
    nothing.
    """

    dropped: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    images_dropped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def drop(self, reason: str, where: str = "", n: int = 1) -> None:
        if n:
            self.dropped[reason] += n
            self._example(reason, where)

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] += n

    def drop_image(self, reason: str, where: str = "") -> None:
        self.images_dropped[reason] += 1
        self._example(reason, where)

    def note(self, reason: str, n: int = 1) -> None:
        if n:
            self.notes[reason] += n

    def losses(self) -> int:
        """Regions and images lost: what ``--strict`` refuses."""
        return sum(self.dropped.values()) + sum(self.images_dropped.values())

    def _example(self, reason: str, where: str) -> None:
        if where:
            self.examples.setdefault(reason, where[:300])

    def lines(self) -> list[str]:
        """Human readable summary, one line per reason, losses first."""
        out = []
        for prefix, counter in (("not converted (images)", self.images_dropped), ("not converted", self.dropped)):
            for reason, n in sorted(counter.items(), key=lambda kv: -kv[1]):
                example = f" (e.g. {self.examples[reason]})" if reason in self.examples else ""
                out.append(f"  {prefix}: {n} × {reason}{example}")
        for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            out.append(f"  skipped: {n} × {reason}")
        for reason, n in sorted(self.notes.items(), key=lambda kv: -kv[1]):
            out.append(f"  note: {n} × {reason}")
        return out
