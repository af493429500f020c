"""The interactive use case behind Label Studio's ML backend: a request body in, predictions out.

One click = fetch the image (cached) → embedding (cached, or computed once) → decode → regions. Opening a
task (``/predict`` without context) starts encoding its image in the background so the first click does not
pay the encoder; "Retrieve predictions" on tasks that hold rectangles answers one mask per rectangle. With SAM 3,
a typed concept, a smart rectangle of an exemplar label and a ``/predict`` without context on a task without
rectangles answer every instance instead (``app.concepts``).

Coordinates: request and answer bodies are Label Studio JSON, positions in percent (0–100) of the image's
``original_width`` / ``original_height``; everything between ``parse_context`` and ``mask_results`` is in
pixels of that image (EXIF orientation applied, x right, y down, origin top-left). Images are (H, W, 3) uint8
RGB, masks (H, W) bool, low-res logits (1, 256, 256) float32 ((1, 288, 288) for SAM 3).

No HTTP here (``label_anything.server.http`` maps ``RequestError`` and the other ``LabelAnythingError``
subclasses to status codes) and no argparse (``label_anything.cli.serve`` builds a ``Backend`` from options).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from label_anything.app.concepts import ConceptAnswers, ConceptOptions
from label_anything.app.refine import RefineMemory
from label_anything.engine import Prompt, SegmentationModel, decode, encode
from label_anything.engine.cache import EmbeddingCache, cache_key
from label_anything.engine.types import Embedding
from label_anything.errors import ImageError, LabelAnythingError, PromptError
from label_anything.imaging.fetch import ImageFetcher
from label_anything.labelstudio.concepts import parse_typed_concept
from label_anything.labelstudio.config import LabelConfig, parse_label_config
from label_anything.labelstudio.context import Click, ContextError, parse_context
from label_anything.labelstudio.results import OutputError, OutputOptions, mask_results, output_controls
from label_anything.labelstudio.task_boxes import is_rotated, rectangle_click, rectangle_label, task_rectangles

log = logging.getLogger("label_anything.server")

MAX_PREFETCH_PENDING = 16
"""Background encodes queued at most; more task openings than that are skipped, not queued forever."""


class RequestError(LabelAnythingError):
    """A request the backend cannot answer; ``status`` is the HTTP status to send."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServeOptions:
    """Behaviour of the backend that is not the model.

    Attributes:
        outputs: which regions to answer with.
        refine: feed the previous answer's logits back when the user adds points to the same object.
        basic_auth: (user, password) Label Studio must send, or None.
        prefetch: encode images of opened tasks in the background.
        boxes_to_masks: answer a ``/predict`` without context ("Retrieve predictions", a task opened) on a
            task that holds rectangles with one mask per rectangle, under its label.
        boxes_seconds: stop starting new tasks of one such request after this long, answering the rest
            with no prediction (a rerun of "Retrieve predictions" picks them up): Label Studio sends the
            whole selection in one request and drops every answer after ML_TIMEOUT_PREDICT (100 s). Tasks
            answered with their labels' instances (SAM 3, ``concepts.label_concepts``) count the same way.
        concepts: SAM 3's concept prompts: threshold, label names as concepts, label → phrases.
    """

    outputs: OutputOptions = field(default_factory=OutputOptions)
    refine: bool = True
    basic_auth: tuple[str, str] | None = None
    prefetch: bool = True
    boxes_to_masks: bool = True
    boxes_seconds: float = 60.0
    concepts: ConceptOptions = field(default_factory=ConceptOptions)


def click_prompt(click: Click, mask_logits: np.ndarray | None = None) -> Prompt:
    """A Label Studio ``Click`` → the engine's ``Prompt``, in the same pixel coordinates.

    Args:
        click: points (N, 2) float32 xy pixels with labels (N,) int32 (1 positive, 0 negative) and/or a box
            (4,) float32 ``x0, y0, x1, y1`` pixels, as ``parse_context`` returns them.
        mask_logits: (1, S, S) float32 low-res logits of a previous answer of the same model to refine (S = 256,
            288 for SAM 3), or None.

    Raises PromptError for a prompt the engine cannot take (``parse_context`` already refuses those).
    """
    return Prompt(points=click.points, point_labels=click.point_labels, box=click.box, mask_logits=mask_logits)


class Backend:
    """Everything a request needs, shared by all requests; every method is thread-safe.

    Args:
        model: the loaded segmentation model (loaded once, at start-up).
        fetcher: reads task images: (H, W, 3) uint8 RGB, EXIF orientation applied, with a content digest.
        cache: embeddings by model and image digest; a new memory-only cache when None.
        options: outputs, refinement, background encoding, boxes to masks.

    The request and answer bodies of ``setup`` and ``predict`` are Label Studio's JSON (positions in percent
    of ``original_width`` / ``original_height``); problems raise ``LabelAnythingError`` subclasses.
    """

    def __init__(
        self,
        model: SegmentationModel,
        fetcher: ImageFetcher,
        cache: EmbeddingCache | None = None,
        options: ServeOptions | None = None,
    ) -> None:
        self.model = model
        self.fetcher = fetcher
        # ``is None``, not ``or``: an empty EmbeddingCache is falsy (it has __len__) and must still be used
        self.cache = cache if cache is not None else EmbeddingCache()
        self.options = options if options is not None else ServeOptions()
        self.model_version = model.info.model_id
        self.refine_memory = RefineMemory()
        self._configs: OrderedDict[str, str] = OrderedDict()  # project id → label config from /setup
        self._lock = threading.Lock()
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-anything-prefetch")
        self._pending: set[str] = set()
        self.concepts = ConceptAnswers(model, self.options.outputs, self.options.concepts, self._task_image,
                                       self._embedding)

    def close(self) -> None:
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()

    # -- /setup ------------------------------------------------------------------------------------
    def setup(self, body: dict) -> dict:
        """``/setup``: remember the project's label config (``schema``); answers ``{"model_version": ...}``."""
        project = _project_id(body.get("project"))
        schema = body.get("schema")
        if project and isinstance(schema, str) and schema.strip():
            with self._lock:
                self._configs[project] = schema
                self._configs.move_to_end(project)
                while len(self._configs) > 256:
                    self._configs.popitem(last=False)
        return {"model_version": self.model_version}

    def _label_config(self, body: dict) -> LabelConfig:
        xml = body.get("label_config")
        if not isinstance(xml, str) or not xml.strip():
            with self._lock:
                xml = self._configs.get(_project_id(body.get("project")))
        if not xml:
            raise RequestError("the request has no label_config and /setup was not called for its project")
        return parse_label_config(xml)

    # -- /predict ----------------------------------------------------------------------------------
    def predict(self, body: dict) -> dict:
        """``/predict``: ``{"results": [...]}``, one prediction (or ``[]``) per task, in task order.

        With ``params.context`` (a click) the one task gets ``interactive``'s answer; without it (a task
        opened, "Retrieve predictions") every task gets ``retrieve_predictions``'s. Raises RequestError for a
        malformed body, ContextError / OutputError / LabelConfigError / ImageError for the rest.
        """
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            raise RequestError("'tasks' must be a non-empty list of task objects")
        params = body.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        config = self._label_config(body)
        if not context:
            return {"results": self.retrieve_predictions(tasks, config)}
        if len(tasks) != 1:
            raise RequestError(f"an interactive request has one task, got {len(tasks)}")
        return {"results": [self.interactive(tasks[0], config, context)]}

    def retrieve_predictions(self, tasks: list[dict], config: LabelConfig) -> list[dict | list]:
        """Answer a ``/predict`` without context: "Retrieve predictions" on a selection, or a task opened.

        One item per task, in task order (Label Studio pairs them by position): a prediction with one mask
        per rectangle the task already holds (``options.boxes_to_masks``); else, with SAM 3, one with every
        instance of every label (``ConceptAnswers.task_labels``); else ``[]``. Seen on Label Studio
        1.23.2: an item that is an empty list stores no prediction for its task and logs nothing, so the
        next opening of the task calls ``/predict`` again (our cue to encode its image in the background).
        An empty prediction instead is stored and shown as an empty "<model> 0.00%" tab, and the task is
        never sent again; ``{"results": []}`` also stores nothing but is logged as an error, and cannot
        answer a selection where only some tasks have boxes.
        """
        t0 = time.perf_counter()
        answers: list[dict | list] = []
        done = left = 0
        labels = self.concepts.labels_as_concepts(config)
        for task in tasks:
            source, rectangles = task_rectangles(task) if self.options.boxes_to_masks else ("", [])
            work = bool(rectangles) or labels  # boxes to masks first: the boxes say which objects are meant
            # at least one task per request, so even a slow model makes progress on every rerun
            if work and done and time.perf_counter() - t0 > self.options.boxes_seconds:
                left += 1
                answers.append([])
                if labels and not rectangles and self.options.prefetch:
                    self._schedule_prefetch(task, config)  # the rerun finds its image encoded
                continue
            done += work
            if rectangles:
                answer = self._task_boxes_to_masks(task, config, source, rectangles)
            else:
                found = self.concepts.task_labels(task, config) if labels else None
                answer = self._prediction(*found) if found is not None else None
            if answer is None:
                # a task with work had its image fetched (and encoded) just now, or it failed to load
                if self.options.prefetch and not work:
                    self._schedule_prefetch(task, config)
                answers.append([])
            else:
                answers.append(answer)
        if left:
            log.warning(
                "%d task(s) left without predictions after %.0f s (Label Studio gives up at 100 s); "
                "run 'Retrieve predictions' again for them",
                left,
                time.perf_counter() - t0,
            )
        return answers

    def _task_boxes_to_masks(
        self, task: dict, config: LabelConfig, source: str, rectangles: list[dict]
    ) -> dict | None:
        """One prediction for ``task``: a mask (brush / polygons / box, per the outputs) for each rectangle,
        prompted by the rectangle's box, under its label. None when no rectangle gave a mask.

        ``rectangles`` are saved ``rectanglelabels`` regions (percent of the image), from ``task_rectangles``;
        each becomes a box in pixels of the fetched image, which must have the size they were drawn on.

        Problems are logged, not raised: one bad task or box must not cost the rest of a selection
        its masks (Label Studio throws the whole answer away on an error status).
        """
        task_id = task.get("id")
        t0 = time.perf_counter()
        results: list[dict] = []
        scores: list[float] = []
        images: dict[str, tuple[np.ndarray, str]] = {}  # to_name → (image, digest); encoded once, via the cache
        for region in rectangles:
            to_name = str(region.get("to_name") or "")
            label = rectangle_label(region)
            if is_rotated(region):
                log.info("task %s: rotated rectangle %s %r skipped (a box prompt is axis-aligned)",
                         task_id, region.get("id"), label)
                continue
            try:
                if to_name not in images:
                    images[to_name] = self._task_image(task, config, to_name)
                image, digest = images[to_name]
                height, width = image.shape[:2]
                box = rectangle_click(region, width, height)
                if (box.height, box.width) != (height, width):
                    raise ImageError(
                        f"the image decodes to {width}x{height} but its rectangles were drawn on "
                        f"{box.width}x{box.height} (EXIF orientation or a changed file?)"
                    )
                controls = output_controls(config, box, self.options.outputs)  # before the encoder runs
                mask, score, _ = decode(self.model, self._embedding(image, digest), click_prompt(box)).best()
            except (ContextError, OutputError, PromptError) as exc:
                log.warning("task %s: rectangle %s %r skipped: %s", task_id, region.get("id"), label, exc)
                continue
            except LabelAnythingError as exc:
                log.warning("task %s: no masks from its boxes: %s", task_id, exc)
                return None
            regions = mask_results(mask, score, box, controls, self.options.outputs)
            if regions:
                results.extend(regions)
                scores.append(float(score))
        log.info(
            "task %s: %d box(es) of its %s → %d mask(s), %d region(s) in %.0f ms",
            task_id,
            len(rectangles),
            source,
            len(scores),
            len(results),
            (time.perf_counter() - t0) * 1e3,
        )
        if not results:
            return None
        return self._prediction(results, sum(scores) / len(scores))

    def interactive(self, task: dict, config: LabelConfig, context: Any) -> dict:
        """Answer one click: the prediction for ``task`` (one mask, as brush/box/polygons).

        ``context`` is ``params.context`` (smart regions in percent, see ``parse_context``). Answers
        ``{"result": [region, ...], "score": float, "model_version": str}``, the regions in percent of the
        image under the clicked label, sharing one answer id; ``result`` is empty when every smart region was
        deleted or the mask is empty. Raises ImageError when the image's size is not the one Label Studio shows.

        A phrase typed in a TextArea (``parse_typed_concept``) and a smart rectangle of an ``exemplar`` label
        are answered by ``ConceptAnswers`` instead: every instance, one answer id each (SAM 3 only).
        """
        t0 = time.perf_counter()
        typed = parse_typed_concept(context, config)
        if typed is not None:
            return self._prediction(*self.concepts.typed(task, config, typed))
        click = parse_context(context, config)
        if click is None:  # every smart region was deleted
            return self._prediction([], 0.0)
        if click.box is not None and config.is_exemplar(click.to_name, click.from_name, click.label):
            return self._prediction(*self.concepts.similar(task, config, click))
        controls = output_controls(config, click, self.options.outputs)
        task_id = task.get("id")
        image, digest = self._task_image(task, config, click.to_name)
        if image.shape[:2] != (click.height, click.width):
            raise ImageError(
                f"task {task_id}: the image decodes to {image.shape[1]}x{image.shape[0]} but Label Studio "
                f"shows it as {click.width}x{click.height} (EXIF orientation or a changed file?)"
            )
        t1 = time.perf_counter()
        cached = self.cache.contains(cache_key(self.model.info.model_id, digest))
        embedding = self._embedding(image, digest)
        t2 = time.perf_counter()
        key = (str(task_id), click.to_name, click.label)
        logits = self.refine_memory.previous_logits(key, click, digest) if self.options.refine else None
        mask, score, low_res = decode(self.model, embedding, click_prompt(click, logits)).best()
        if self.options.refine:
            self.refine_memory.remember(key, click, digest, low_res)
        t3 = time.perf_counter()
        results = mask_results(mask, score, click, controls, self.options.outputs)
        t4 = time.perf_counter()
        log.info(
            "task %s %r: %d point(s)%s%s → %d region(s), score %.3f | image %.0f ms, embedding %.0f ms%s, "
            "decode %.0f ms, regions %.0f ms",
            task_id,
            click.label,
            len(click.points),
            " + box" if click.box is not None else "",
            " (refined)" if logits is not None else "",
            len(results),
            score,
            (t1 - t0) * 1e3,
            (t2 - t1) * 1e3,
            " cached" if cached else "",
            (t3 - t2) * 1e3,
            (t4 - t3) * 1e3,
        )
        if not results:
            log.info("task %s: the mask for %r is empty; nothing to suggest", task_id, click.label)
        return self._prediction(results, score)

    def _prediction(self, results: list[dict], score: float) -> dict:
        """A Label Studio prediction: the regions, the score rounded to 6 digits, the model version."""
        return {"result": results, "score": round(float(score), 6), "model_version": self.model_version}

    def _task_image(self, task: dict, config: LabelConfig, to_name: str) -> tuple[np.ndarray, str]:
        """(image (H, W, 3) uint8 RGB, content digest) of the ``<Image>`` named ``to_name`` in ``task``."""
        data = task.get("data")
        key = config.image_key(to_name)
        if not isinstance(data, dict) or key not in data:
            raise RequestError(
                f"task {task.get('id')} has no data[{key!r}] (the Image value of the label config)"
            )
        return self.fetcher.fetch(data[key], task.get("id"))

    def _embedding(self, image: np.ndarray, digest: str) -> Embedding:
        """The embedding of ``image`` ((H, W, 3) uint8 RGB): from the cache, else encoded once and kept."""
        return self.cache.get_or_compute(
            cache_key(self.model.info.model_id, digest), lambda: encode(self.model, image, digest)
        )

    # -- background encoding -----------------------------------------------------------------------
    def _schedule_prefetch(self, task: dict, config: LabelConfig) -> None:
        data = task.get("data")
        if not isinstance(data, dict):
            return
        for key in config.images.values():
            ref = data.get(key)
            if not isinstance(ref, str):
                continue
            with self._lock:
                if ref in self._pending or len(self._pending) >= MAX_PREFETCH_PENDING:
                    continue
                self._pending.add(ref)
            self._prefetch.submit(self._prefetch_one, ref, task.get("id"))

    def _prefetch_one(self, ref: str, task_id: Any) -> None:
        try:
            t0 = time.perf_counter()
            image, digest = self.fetcher.fetch(ref, task_id)
            if not self.cache.contains(cache_key(self.model.info.model_id, digest)):
                self._embedding(image, digest)
                log.info(
                    "task %s: image encoded in the background in %.0f ms",
                    task_id,
                    (time.perf_counter() - t0) * 1e3,
                )
        except LabelAnythingError as exc:
            log.warning("task %s: background encoding skipped: %s", task_id, exc)
        except Exception:
            log.exception("task %s: background encoding failed", task_id)
        finally:
            with self._lock:
                self._pending.discard(ref)

    def wait_for_prefetch(self, timeout: float = 60.0) -> bool:
        """Block until no background encode is pending (tests, benchmarks). True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.02)
        return False


def _project_id(value: Any) -> str:
    """``"12.1712345678"`` (project id and a timestamp) → ``"12"``."""
    return str(value).split(".", 1)[0] if value is not None else ""
