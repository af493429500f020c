"""The ML backend Label Studio 1.23.x talks to: /health, /setup, /predict, /webhook, /versions.

One click = fetch the image (cached) → embedding (cached, or computed once) → decode → regions. The
model is loaded at start-up so ``/setup`` answers in milliseconds; model work runs in worker threads so
``/health`` answers while a prediction runs; opening a task (``/predict`` without context) starts
encoding its image in the background so the first click does not pay the encoder.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from label_anything import __version__
from label_anything.app.refine import RefineMemory
from label_anything.engine import SegmentationModel, decode, encode
from label_anything.engine.cache import EmbeddingCache, cache_key
from label_anything.engine.types import Embedding
from label_anything.errors import ImageError, LabelAnythingError, PromptError
from label_anything.imaging.decode import DEFAULT_MAX_PIXELS
from label_anything.imaging.fetch import (
    ALLOW_HOSTS_ENV,
    ALLOW_HOSTS_OPTION,
    AccessDeniedError,
    ImageFetcher,
    parse_allowed_hosts,
)
from label_anything.labelstudio.config import LabelConfig, LabelConfigError, parse_label_config
from label_anything.labelstudio.context import ContextError, parse_context
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


def _status_of(exc: LabelAnythingError) -> int:
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, AccessDeniedError):
        return 403
    if isinstance(exc, ContextError | LabelConfigError | OutputError | PromptError):
        return 400
    return 422  # ImageError and the rest: well-formed request, content we cannot use


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
            whole selection in one request and drops every answer after ML_TIMEOUT_PREDICT (100 s).
    """

    outputs: OutputOptions = field(default_factory=OutputOptions)
    refine: bool = True
    basic_auth: tuple[str, str] | None = None
    prefetch: bool = True
    boxes_to_masks: bool = True
    boxes_seconds: float = 60.0


class Backend:
    """Everything a request needs, shared by all requests; every method is thread-safe."""

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

    def close(self) -> None:
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()

    # -- /setup ------------------------------------------------------------------------------------
    def setup(self, body: dict) -> dict:
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
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            raise RequestError("'tasks' must be a non-empty list of task objects")
        params = body.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        config = self._label_config(body)
        if not context:
            return {"results": self.batch(tasks, config)}
        if len(tasks) != 1:
            raise RequestError(f"an interactive request has one task, got {len(tasks)}")
        return {"results": [self.interactive(tasks[0], config, context)]}

    def batch(self, tasks: list[dict], config: LabelConfig) -> list[dict | list]:
        """Answer a ``/predict`` without context: "Retrieve predictions" on a selection, or a task opened.

        One item per task, in task order (Label Studio pairs them by position): a prediction with one mask
        per rectangle the task already holds (``--boxes-to-masks``), else ``[]``. Seen on Label Studio
        1.23.2: an item that is an empty list stores no prediction for its task and logs nothing, so the
        next opening of the task calls ``/predict`` again (our cue to encode its image in the background).
        An empty prediction instead is stored and shown as an empty "<model> 0.00%" tab, and the task is
        never sent again; ``{"results": []}`` also stores nothing but is logged as an error, and cannot
        answer a selection where only some tasks have boxes.
        """
        t0 = time.perf_counter()
        answers: list[dict | list] = []
        done = left = 0
        for task in tasks:
            source, rectangles = task_rectangles(task) if self.options.boxes_to_masks else ("", [])
            # at least one task per request, so even a slow model makes progress on every rerun
            if rectangles and done and time.perf_counter() - t0 > self.options.boxes_seconds:
                left += 1
                answers.append([])
                continue
            done += bool(rectangles)
            answer = self._boxes_to_masks(task, config, source, rectangles) if rectangles else None
            if answer is None:
                # a task with boxes had its image fetched (and encoded) just now, or it failed to load
                if self.options.prefetch and not rectangles:
                    self._schedule_prefetch(task, config)
                answers.append([])
            else:
                answers.append(answer)
        if left:
            log.warning(
                "%d task(s) with boxes left without masks after %.0f s (Label Studio gives up at 100 s); "
                "run 'Retrieve predictions' again for them",
                left,
                time.perf_counter() - t0,
            )
        return answers

    def _boxes_to_masks(self, task: dict, config: LabelConfig, source: str, rectangles: list[dict]) -> dict | None:
        """One prediction for ``task``: a mask (brush / polygons / box, per the outputs) for each rectangle,
        prompted by the rectangle's box, under its label. None when no rectangle gave a mask.

        Problems are logged, not raised: one bad task or box must not cost the rest of a selection
        its masks (Label Studio throws the whole answer away on an error status).
        """
        task_id = task.get("id")
        t0 = time.perf_counter()
        results: list[dict] = []
        scores: list[float] = []
        images: dict[str, tuple[Any, str]] = {}  # to_name → (image, digest); each encoded once, via the cache
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
                mask, score, _ = decode(self.model, self._embedding(image, digest), box.prompt()).best()
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
        """Answer one click: the prediction for ``task`` (one mask, as brush/box/polygons)."""
        t0 = time.perf_counter()
        click = parse_context(context, config)
        if click is None:  # every smart region was deleted
            return self._prediction([], 0.0)
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
        mask, score, low_res = decode(self.model, embedding, click.prompt(logits)).best()
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
        return {"result": results, "score": round(float(score), 6), "model_version": self.model_version}

    def _task_image(self, task: dict, config: LabelConfig, to_name: str):
        data = task.get("data")
        key = config.image_key(to_name)
        if not isinstance(data, dict) or key not in data:
            raise RequestError(
                f"task {task.get('id')} has no data[{key!r}] (the Image value of the label config)"
            )
        return self.fetcher.fetch(data[key], task.get("id"))

    def _embedding(self, image, digest: str) -> Embedding:
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


# -- HTTP ------------------------------------------------------------------------------------------
def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def _authorized(request: Request, basic_auth: tuple[str, str] | None) -> bool:
    if basic_auth is None:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # compare both, always: the time taken must not tell which one was wrong
    ok_user = secrets.compare_digest(user.encode(), basic_auth[0].encode())
    ok_password = secrets.compare_digest(password.encode(), basic_auth[1].encode())
    return ok_user and ok_password


def create_app(backend: Backend) -> Starlette:
    """The ASGI app serving ``backend``."""
    basic_auth = backend.options.basic_auth

    def guarded(handler, *, auth: bool = True):
        async def endpoint(request: Request):
            if auth and not _authorized(request, basic_auth):
                log.warning("%s %s: refused, wrong or missing basic auth", request.method, request.url.path)
                response = _error("authentication required", 401)
                response.headers["WWW-Authenticate"] = 'Basic realm="label-anything"'
                return response
            try:
                return await handler(request)
            except LabelAnythingError as exc:
                status = _status_of(exc)
                log.warning("%s %s → %d: %s", request.method, request.url.path, status, exc)
                return _error(str(exc), status)
            except Exception:
                log.exception("%s %s → 500: unexpected error", request.method, request.url.path)
                return _error("internal error in the backend; see its log", 500)

        return endpoint

    async def json_body(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise RequestError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "UP",
                "model_class": "LabelAnything",
                "model_version": backend.model_version,
                "version": __version__,
            }
        )

    async def setup(request: Request) -> JSONResponse:
        return JSONResponse(backend.setup(await json_body(request)))

    async def predict(request: Request) -> JSONResponse:
        body = await json_body(request)
        # model work blocks: a worker thread keeps the event loop (and /health) responsive
        return JSONResponse(await run_in_threadpool(backend.predict, body))

    async def webhook(request: Request) -> JSONResponse:
        body = await json_body(request)
        # unauthenticated (Label Studio sends no credentials here): log the event, act on nothing
        action = body.get("action")
        if action == "START_TRAINING":
            log.info("webhook START_TRAINING: this backend does not train; nothing to do")
        else:
            log.debug("webhook %s: ignored", str(action)[:64])
        return JSONResponse({"status": "ok", "action": action if isinstance(action, str) else None})

    async def versions(request: Request) -> JSONResponse:
        return JSONResponse({"versions": [backend.model_version]})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        backend.close()

    routes = [
        Route("/", guarded(health), methods=["GET"]),
        Route("/health", guarded(health), methods=["GET"]),
        Route("/setup", guarded(setup), methods=["POST"]),
        Route("/predict", guarded(predict), methods=["POST"]),
        Route("/webhook", guarded(webhook, auth=False), methods=["POST"]),  # Label Studio sends no auth here
        Route("/versions", guarded(versions), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.backend = backend
    return app


# -- CLI -------------------------------------------------------------------------------------------
def _basic_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("not USER:PASSWORD (both non-empty, joined by ':')")
    return user, password


def allowed_image_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """The image host allow-list: ``--allow-image-host`` options, else the environment variable."""
    entries = args.allow_image_hosts
    if entries is None:
        entries = [os.environ.get(ALLOW_HOSTS_ENV, "")]
    return parse_allowed_hosts(entries)


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything serve`` to the CLI's sub-commands."""
    from label_anything.cli.options import add_model_arguments, env, non_negative_float, port_number, positive_int

    p = subparsers.add_parser(
        "serve",
        help="run the Label Studio ML backend (interactive masks, boxes, polygons)",
        description="Serve SAM-family models to Label Studio as an ML backend. In Label Studio: "
        "Settings → Model → "
        "Connect Model, URL http://HOST:PORT, 'Interactive preannotations' on.",
    )
    add_model_arguments(p)
    out = p.add_argument_group("answer")
    out.add_argument(
        "--out-mask",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_OUT_MASK", True),
        help="answer a brush mask (BrushLabels) [env LABEL_ANYTHING_OUT_MASK; default: on]",
    )
    out.add_argument(
        "--out-bbox",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_OUT_BBOX", False),
        help="answer the mask's box (RectangleLabels) [env LABEL_ANYTHING_OUT_BBOX; default: off]",
    )
    out.add_argument(
        "--out-poly",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_OUT_POLY", False),
        help="answer polygons (PolygonLabels), one per part [env LABEL_ANYTHING_OUT_POLY; default: off]",
    )
    out.add_argument(
        "--poly-tolerance",
        type=non_negative_float,
        default=env("LABEL_ANYTHING_POLY_TOLERANCE", "1.0"),
        help="polygon simplification in pixels [env LABEL_ANYTHING_POLY_TOLERANCE; default: %(default)s]",
    )
    out.add_argument(
        "--poly-min-area",
        type=non_negative_float,
        default=env("LABEL_ANYTHING_POLY_MIN_AREA", "16"),
        help="drop polygon parts (specks) smaller than this many pixels "
        "[env LABEL_ANYTHING_POLY_MIN_AREA; default: %(default)s]",
    )
    out.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_REFINE", True),
        help="refine the previous mask when points are added to the same object "
        "[env LABEL_ANYTHING_REFINE; default: on]",
    )
    out.add_argument(
        "--boxes-to-masks",
        action=argparse.BooleanOptionalAction,
        default=env("LABEL_ANYTHING_BOXES_TO_MASKS", True),
        help="'Retrieve predictions' (and opening a task) on tasks that hold rectangles, in their newest "
        "annotation or else a prediction: answer one mask per rectangle, its box as the prompt, under its "
        "label [env LABEL_ANYTHING_BOXES_TO_MASKS; default: on]",
    )
    net = p.add_argument_group("server")
    net.add_argument(
        "--host",
        default=env("LABEL_ANYTHING_HOST", "127.0.0.1"),
        help="address to listen on [env LABEL_ANYTHING_HOST; default: %(default)s]",
    )
    net.add_argument(
        "--port",
        type=port_number,
        default=env("LABEL_ANYTHING_PORT", "8003"),
        help="[env LABEL_ANYTHING_PORT; default: %(default)s]",
    )
    net.add_argument(
        "--basic-auth",
        type=_basic_auth,
        default=env("LABEL_ANYTHING_BASIC_AUTH"),
        metavar="USER:PASS",
        help="require HTTP basic auth from Label Studio [env LABEL_ANYTHING_BASIC_AUTH]",
    )
    net.add_argument(
        "--label-studio-url",
        default=env("LABEL_STUDIO_URL"),
        help="Label Studio's URL, to fetch uploaded images [env LABEL_STUDIO_URL]",
    )
    net.add_argument(
        "--label-studio-api-key",
        default=env("LABEL_STUDIO_API_KEY"),
        help="personal access token (or legacy token) [env LABEL_STUDIO_API_KEY]",
    )
    net.add_argument(
        "--local-files-root",
        type=Path,
        default=env("LOCAL_FILES_DOCUMENT_ROOT"),
        help="read /data/local-files/ images from this folder [env LOCAL_FILES_DOCUMENT_ROOT]",
    )
    net.add_argument(
        ALLOW_HOSTS_OPTION,
        dest="allow_image_hosts",
        action="append",
        default=None,
        metavar="HOST",
        help="also fetch task image URLs from HOST (host, host:port or *.domain; repeatable). Without it "
        f"only Label Studio's own URL is fetched from [env {ALLOW_HOSTS_ENV}, comma separated]",
    )
    net.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=env("LABEL_ANYTHING_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS)),
        help="refuse images larger than this many pixels, read from the file header before decoding "
        "(decompression bombs) [env LABEL_ANYTHING_MAX_IMAGE_PIXELS; default: %(default)s]",
    )
    net.add_argument(
        "--embedding-cache-mb",
        type=positive_int,
        default=env("LABEL_ANYTHING_EMBEDDING_CACHE_MB", "1024"),
        help="memory for image embeddings, per worker [env LABEL_ANYTHING_EMBEDDING_CACHE_MB; default: %(default)s]",
    )
    net.add_argument(
        "--workers",
        type=positive_int,
        default=env(WORKERS_ENV, "1"),
        help="backend processes answering on one port, each with its own model, memory cache and share of "
        "the CPU cores. They share embeddings through the disk cache in --cache-dir (one machine) or "
        f"through Redis with --cache-url [env {WORKERS_ENV}; default: %(default)s]",
    )
    from label_anything.cli.options import add_cache_url_arguments

    add_cache_url_arguments(net)
    p.set_defaults(func=cmd_serve)
    return p


WORKERS_ENV = "LABEL_ANYTHING_WORKERS"
WORKER_OPTIONS_ENV = "LABEL_ANYTHING_SERVE_OPTIONS"
"""How ``serve --workers N`` hands its parsed options to the worker processes uvicorn spawns (JSON)."""


def _serve_options(args: argparse.Namespace) -> ServeOptions:
    """The non-model options of ``serve``; raises LabelAnythingError when they cannot work."""
    # a tuple, also when the options came back from JSON (``serve --workers N``) as a list
    basic_auth = tuple(args.basic_auth) if args.basic_auth else None
    outputs = OutputOptions(
        mask=args.out_mask,
        bbox=args.out_bbox,
        poly=args.out_poly,
        poly_tolerance=args.poly_tolerance,
        poly_min_area=args.poly_min_area,
    )
    if not outputs.types():
        raise LabelAnythingError(
            "every output is off: enable at least one of --out-mask, --out-bbox, --out-poly"
        )
    return ServeOptions(
        outputs=outputs, refine=args.refine, basic_auth=basic_auth, boxes_to_masks=args.boxes_to_masks
    )


def build_backend(args: argparse.Namespace) -> Backend:
    """The backend ``serve``'s options describe: loads the model, opens the caches and the image fetcher."""
    from label_anything.cli.options import load_model_from_args, shared_level_from_args
    from label_anything.engine.weights import default_cache_dir

    options = _serve_options(args)
    shared = shared_level_from_args(args)
    model = load_model_from_args(args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    disk_gb = float(args.cache_disk_gb)
    cache = EmbeddingCache(
        max_memory_bytes=args.embedding_cache_mb * 2**20,
        disk_dir=cache_dir / "embeddings" if disk_gb > 0 else None,  # --cache-disk-gb 0: no disk level
        max_disk_bytes=int(disk_gb * 2**30),
        shared=shared,
    )
    hosts = allowed_image_hosts(args)
    fetcher = ImageFetcher(
        args.label_studio_url,
        args.label_studio_api_key,
        args.local_files_root,
        max_pixels=args.max_image_pixels,
        allowed_hosts=hosts,
    )
    # httpx logs every request URL at INFO; presigned URLs carry credentials in their query string
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    backend = Backend(model, fetcher, cache, options)
    log.info(
        "serving %s at http://%s:%d (outputs: %s; refine %s; basic auth %s; image hosts: Label Studio%s; "
        "embeddings: memory, %s%s)",
        backend.model_version,
        args.host,
        args.port,
        ", ".join(options.outputs.types()),
        "on" if args.refine else "off",
        "on" if options.basic_auth else "off",
        "".join(f", {h}" for h in hosts),
        f"Redis at {shared.display_url}, " if shared is not None else "",
        f"disk {cache.disk_dir} (at most {disk_gb:g} GiB)" if cache.disk_dir else "no disk",
    )
    return backend


def _options_to_env(args: argparse.Namespace) -> str:
    """``args`` as JSON for the workers (paths remembered as paths; the sub-command function left out)."""
    import json

    values = {k: v for k, v in vars(args).items() if not callable(v)}
    paths = [k for k, v in values.items() if isinstance(v, Path)]
    return json.dumps({"args": values, "paths": paths}, default=str)


def _options_from_env(text: str) -> argparse.Namespace:
    import json

    data = json.loads(text)
    values = data["args"]
    for key in data["paths"]:
        values[key] = Path(values[key])
    return argparse.Namespace(**values)


def worker_app() -> Starlette:
    """uvicorn's app factory for ``serve --workers N``, run in each worker process.

    The parent process put its parsed options in ``LABEL_ANYTHING_SERVE_OPTIONS``; each worker loads its
    own model from them. Log lines carry the worker's pid, so the log tells which worker answered a click.
    """
    import sys

    args = _options_from_env(os.environ[WORKER_OPTIONS_ENV])
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s [worker %(process)d]: %(message)s",
        stream=sys.stderr,
    )
    _share_cpu_cores(args.workers)
    backend = build_backend(args)
    log.info("worker %d ready", os.getpid())
    return create_app(backend)


def _share_cpu_cores(workers: int) -> None:
    """Give each of ``workers`` processes its share of the cores: N processes each using every core would
    slow every click. Set on PyTorch, which the ONNX Runtime decoder follows (``OnnxDecoder``); left alone
    when the user set OMP_NUM_THREADS."""
    if workers <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    # the cores this process may run on (a container or taskset may allow fewer than the machine has)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // workers))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    log_options = {"log_level": args.log_level.lower(), "access_log": args.log_level == "DEBUG"}
    if args.workers == 1:
        uvicorn.run(create_app(build_backend(args)), host=args.host, port=args.port, **log_options)
        return 0
    # Check what can be checked here, before N workers each load a model and fail the same way.
    _serve_options(args)
    if args.cache_url:
        from label_anything.engine.redis_cache import check_shared_cache_arguments

        check_shared_cache_arguments(args.cache_url)
    log.info(
        "starting %d workers on http://%s:%d; they share embeddings through %s",
        args.workers,
        args.host,
        args.port,
        "Redis" if args.cache_url else "the disk cache" if args.cache_disk_gb > 0 else "nothing (--cache-disk-gb 0)",
    )
    os.environ[WORKER_OPTIONS_ENV] = _options_to_env(args)
    uvicorn.run(
        f"{__name__}:worker_app", factory=True, workers=args.workers, host=args.host, port=args.port, **log_options
    )
    return 0
