"""The run of ``concepts-to-masks``: resume, then image after image (here or on a Ray pool) its embedding (from
the cache, else encoded), one query per phrase, its progress line; then the whole output file, atomically."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from label_anything.app.concepts_to_masks.concept_spec import ConceptSet, output_categories
from label_anything.app.concepts_to_masks.image_job import ImageAnswer, find_concepts
from label_anything.app.concepts_to_masks.output import OutputCounts, Record, build_coco, record_parser
from label_anything.app.concepts_to_masks.sources import ImageItem, ImageSource, failure_reason
from label_anything.app.journal import (
    append_record,
    changed_fields,
    open_journal,
    partial_path,
    read_journal,
    write_json_atomic,
)
from label_anything.app.precompute import loaded_ahead
from label_anything.engine.cache import EmbeddingCache, cache_key
from label_anything.engine.concepts import DEFAULT_CONCEPT_THRESHOLD, answers_concepts
from label_anything.engine.types import SegmentationModel
from label_anything.errors import LabelAnythingError

if TYPE_CHECKING:
    from label_anything.app.ray_pool import RayPool

log = logging.getLogger(__name__)

COMMAND = "concepts-to-masks"
CONCEPT_MODELS = ("sam3",)
"""Model families that answer concept prompts (``engine.concepts.answers_concepts`` says it of a loaded one)."""
FINGERPRINT_VERSION = 1
MODEL_REFUSED = "image refused by the model"
QUERYING = "concepts-to-masks: querying image "  # the DEBUG line logged before each image's queries


def concept_model_refusal(name: str) -> str:
    """The one line that says a model family cannot run this command."""
    return (f"{COMMAND} needs SAM 3 (--model-name sam3, weights from `label-anything download sam3` or "
            f"--checkpoint sam3.pt): {name} segments one object per click or box and cannot find concepts")


def check_concept_model(model_name: str, sam_config: str | None, checkpoint: Any, cache_dir: Any) -> None:
    """Refuse, before anything loads, a model family that cannot answer concepts (``auto`` is resolved the way
    loading would resolve it: it never picks SAM 3)."""
    name = (model_name or "auto").lower()
    if name == "auto":
        from label_anything.engine.models import choose_model

        name = choose_model("auto", sam_config, checkpoint, cache_dir=cache_dir, device="cpu").name
    if name not in CONCEPT_MODELS:
        raise LabelAnythingError(concept_model_refusal(name))


@dataclass
class ConceptsReport:
    """What one run did. ``seconds`` counts encoding and queries only (not reading files or writing JSON)."""

    images_done: int = 0
    images_resumed: int = 0  # finished by an earlier, interrupted run
    instances_found: int = 0  # by this run's queries, before duplicates are merged
    instances_resumed: int = 0
    empty_masks: int = 0  # instances whose mask has no pixel: left out
    encoded: int = 0
    from_cache: int = 0  # embeddings read from the cache (``precompute`` wrote them)
    encode_seconds: float = 0.0
    query_seconds: float = 0.0
    skipped: Counter[str] = field(default_factory=Counter)  # images not used, by reason
    failed: list[str] = field(default_factory=list)  # one line per image not used
    workers: dict[str, int] = field(default_factory=dict)  # with a Ray pool: images done per host:pid
    output: OutputCounts = field(default_factory=OutputCounts)

    @property
    def seconds(self) -> float:
        return self.encode_seconds + self.query_seconds

    @property
    def images_per_s(self) -> float:
        return self.images_done / self.seconds if self.seconds > 0 else 0.0

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        self.failed.append(message)


def run_fingerprint(model_id: str, concepts: ConceptSet, threshold: float, source: ImageSource) -> dict[str, Any]:
    """What identifies a run: records of another model, other concepts, another threshold or another input must
    not be mixed into this output."""
    return {"version": FINGERPRINT_VERSION, "command": COMMAND, "model": model_id, "concepts": concepts.as_json(),
            "threshold": threshold, "input": source.identity}


def _other_run(partial: Path, old: dict[str, Any], new: dict[str, Any]) -> str:
    """The one line that refuses to mix a progress file of another run into this one."""

    def shown(name: str, fingerprint: dict[str, Any]) -> str:
        value = fingerprint.get(name)
        if name == "concepts" and isinstance(value, list):
            return ";".join(f"{c[0]}={','.join(map(str, c[1]))}" for c in value
                            if isinstance(c, list) and len(c) == 2 and isinstance(c[1], list))
        return str(value)

    parts = []
    for name in changed_fields(old, new):
        if name == "input":
            parts.append("another input (folder, COCO file or project), or the COCO file changed since")
        elif name in ("model", "concepts", "threshold", "command"):
            parts.append(f"{name} {shown(name, old)} instead of {shown(name, new)}")
        else:
            parts.append(f"another {name}")
    return (f"{partial} holds an unfinished run with other options ({'; '.join(parts)}): its results cannot be "
            "mixed into this run's. Rerun with its options to finish it, or pass --restart to discard it")


def concepts_to_masks(
    model: SegmentationModel | None,
    source: ImageSource,
    concepts: ConceptSet,
    out: Path,
    *,
    threshold: float = DEFAULT_CONCEPT_THRESHOLD,
    cache: EmbeddingCache | None = None,
    merge: bool = True,
    restart: bool = False,
    progress: bool = True,
    after_image: Callable[[str], None] | None = None,
    pool: RayPool | None = None,
) -> ConceptsReport:
    """Find every instance of every concept in every image of ``source``; write ``out`` (COCO, RLE masks).

    Args:
        model: a model that answers concepts (SAM 3); None with ``pool``.
        source: the images (``sources.folder_source``, ``coco_source``, ``project_source``).
        concepts: the categories and their phrases.
        out: the COCO file to write; its sidecar ``OUT.partial.jsonl`` holds the progress until it is written.
        threshold: keep instances scoring above it.
        cache: embeddings to reuse (``precompute``'s disk cache), read only; None: encode every image.
        merge: leave out cross-phrase duplicates (``output.merge_duplicates``).
        restart: discard the progress of a run with other options instead of refusing to go on.
        progress: show a tqdm bar on stderr.
        after_image: called with each image's key once its record is safely in the progress file (a hook for
            tests and callers that stop early: an exception raised there stops the run, resumably).
        pool: Ray workers (``app.ray_pool.ray_pool``) to query on instead of ``model``; the output is the same.
    """
    from tqdm import tqdm

    if (model is None) == (pool is None):
        raise ValueError("give either a model or a pool")
    model_id = pool.model_id if pool is not None else model.info.model_id  # type: ignore[union-attr]
    if model is not None and not answers_concepts(model):
        raise LabelAnythingError(concept_model_refusal(model.info.name))
    if pool is not None and model_id.split("-", 1)[0] not in CONCEPT_MODELS:
        raise LabelAnythingError(concept_model_refusal(model_id.split("-", 1)[0]))
    if not len(concepts):
        raise LabelAnythingError("no concepts to look for: give --concepts or --concept")
    out = Path(out)
    if out.is_dir():
        raise LabelAnythingError(f"--out {out} is a folder; give the COCO file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out)
    fingerprint = run_fingerprint(model_id, concepts, float(threshold), source)
    journal = read_journal(partial, fingerprint, record_parser(concepts))
    if journal.other is not None:
        if not restart:
            raise LabelAnythingError(_other_run(partial, journal.other, fingerprint))
        log.warning("%s: --restart: discarding the progress of a run with other options", partial)
    done: dict[str, Record] = journal.done
    report = ConceptsReport()
    for reason, message in source.skips:
        report.skip(reason, message)
    order: list[tuple[str, dict[str, Any]]] = []
    queries = concepts.queries()

    with open_journal(partial, fingerprint, journal.end) as journal_file, tqdm(
        total=source.total, unit="img", desc=COMMAND, disable=not progress
    ) as bar:

        def pending() -> Iterator[tuple[ImageItem, Any]]:
            for item in source.items():
                order.append((item.key, item.entry))
                record = done.get(item.key)
                if record is not None and record.stamp == item.stamp:  # a file edited since is done again
                    report.images_resumed += 1
                    report.instances_resumed += len(record.instances)
                    report.empty_masks += record.empty
                    bar.update()
                    continue
                yield item, item.load

        def calls() -> Iterator[tuple[ImageItem, tuple[Any, ...]]]:
            # The next image is read and decoded while this one is queried; its embedding is fetched only now,
            # and dropped before the next one is: one embedding in memory at a time (with a pool, one per call
            # in flight).
            for item, loaded in loaded_ahead(pending()):  # type: ignore[arg-type]
                if isinstance(loaded, LabelAnythingError):
                    log.warning("%s: skipped (%s)", item.name, loaded)
                    report.skip(failure_reason(loaded), f"{item.name}: {loaded}")
                    bar.update()
                    continue
                image, digest = loaded
                embedding = cache.get(cache_key(model_id, digest)) if cache is not None else None
                log.debug("%s%s (%s)", QUERYING, item.key, "encoding" if embedding is None else "cached embedding")
                args = (image if embedding is None else embedding, digest, queries, float(threshold))
                del loaded, image, embedding
                yield item, args
                del args

        def local() -> Iterator[tuple[ImageItem, str | None, ImageAnswer]]:
            for item, args in calls():
                answer = find_concepts(model, *args)  # type: ignore[arg-type]
                del args
                yield item, None, answer

        results = pool.map(find_concepts, calls()) if pool is not None else local()
        for item, worker, answer in results:
            _count(report, item, answer, worker)
            if answer.error is None:
                record = Record.of(answer, item.stamp)
                append_record(journal_file, record.to_json(item.key))
                done[item.key] = record
            bar.update()
            bar.set_postfix(instances=report.instances_found + report.instances_resumed)
            if after_image is not None:
                after_image(item.key)

    coco, report.output = build_coco(source, order, done, output_categories(concepts, source.categories),
                                     merge=merge)
    write_json_atomic(out, coco)
    partial.unlink(missing_ok=True)
    return report


def _count(report: ConceptsReport, item: ImageItem, answer: ImageAnswer, worker: str | None) -> None:
    """Add one image's answer to ``report``."""
    if answer.error is not None:
        log.warning("%s: skipped (%s)", item.name, answer.error)
        report.skip(MODEL_REFUSED, f"{item.name}: {answer.error}")
        return
    report.images_done += 1
    report.instances_found += len(answer.instances)
    report.empty_masks += answer.empty
    report.encoded += int(answer.encoded)
    report.from_cache += int(not answer.encoded)
    report.encode_seconds += answer.encode_seconds
    report.query_seconds += answer.query_seconds
    if worker is not None:
        report.workers[worker] = report.workers.get(worker, 0) + 1
