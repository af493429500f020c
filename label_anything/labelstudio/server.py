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
from label_anything.engine import SegmentationModel, decode, encode
from label_anything.engine.cache import EmbeddingCache, cache_key
from label_anything.engine.types import Embedding
from label_anything.errors import ImageError, LabelAnythingError, PromptError
from label_anything.images import DEFAULT_MAX_PIXELS
from label_anything.labelstudio.config import LabelConfig, LabelConfigError, parse_label_config
from label_anything.labelstudio.context import ContextError, parse_context
from label_anything.labelstudio.images import (
    ALLOW_HOSTS_ENV,
    ALLOW_HOSTS_OPTION,
    AccessDeniedError,
    ImageFetcher,
    parse_allowed_hosts,
)
from label_anything.labelstudio.results import OutputError, OutputOptions, mask_results, output_controls
from label_anything.labelstudio.state import RefineMemory

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
    """

    outputs: OutputOptions = field(default_factory=OutputOptions)
    refine: bool = True
    basic_auth: tuple[str, str] | None = None
    prefetch: bool = True


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
            # A task was opened (or "retrieve predictions"): answer at once, encode in the background.
            if self.options.prefetch:
                for task in tasks:
                    self._schedule_prefetch(task, config)
            return {"results": [self._prediction([], 0.0) for _ in tasks]}
        if len(tasks) != 1:
            raise RequestError(f"an interactive request has one task, got {len(tasks)}")
        return {"results": [self.interactive(tasks[0], config, context)]}

    def interactive(self, task: dict, config: LabelConfig, context: Any) -> dict:
        """Answer one click: the prediction for ``task`` (one mask, as brush/box/polygons)."""
        t0 = time.perf_counter()
        click = parse_context(context)
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
def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _basic_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("--basic-auth is USER:PASSWORD")
    return user, password


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def allowed_image_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """The image host allow-list: ``--allow-image-host`` options, else the environment variable."""
    entries = args.allow_image_hosts
    if entries is None:
        entries = [os.environ.get(ALLOW_HOSTS_ENV, "")]
    return parse_allowed_hosts(entries)


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything serve`` to the CLI's sub-commands."""
    from label_anything.cli import add_model_arguments

    env = os.environ.get
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
        default=_env_bool("LABEL_ANYTHING_OUT_MASK", True),
        help="answer a brush mask (BrushLabels) [env LABEL_ANYTHING_OUT_MASK; default: on]",
    )
    out.add_argument(
        "--out-bbox",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("LABEL_ANYTHING_OUT_BBOX", False),
        help="answer the mask's box (RectangleLabels) [env LABEL_ANYTHING_OUT_BBOX; default: off]",
    )
    out.add_argument(
        "--out-poly",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("LABEL_ANYTHING_OUT_POLY", False),
        help="answer polygons (PolygonLabels), one per part [env LABEL_ANYTHING_OUT_POLY; default: off]",
    )
    out.add_argument(
        "--poly-tolerance",
        type=float,
        default=float(env("LABEL_ANYTHING_POLY_TOLERANCE", "1.0")),
        help="polygon simplification in pixels [env LABEL_ANYTHING_POLY_TOLERANCE; default: %(default)s]",
    )
    out.add_argument(
        "--poly-min-area",
        type=float,
        default=float(env("LABEL_ANYTHING_POLY_MIN_AREA", "16")),
        help="drop polygon parts (specks) smaller than this many pixels "
        "[env LABEL_ANYTHING_POLY_MIN_AREA; default: %(default)s]",
    )
    out.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("LABEL_ANYTHING_REFINE", True),
        help="refine the previous mask when points are added to the same object "
        "[env LABEL_ANYTHING_REFINE; default: on]",
    )
    net = p.add_argument_group("server")
    net.add_argument(
        "--host",
        default=env("LABEL_ANYTHING_HOST", "127.0.0.1"),
        help="address to listen on [env LABEL_ANYTHING_HOST; default: %(default)s]",
    )
    net.add_argument(
        "--port",
        type=int,
        default=int(env("LABEL_ANYTHING_PORT", "8003")),
        help="[env LABEL_ANYTHING_PORT; default: %(default)s]",
    )
    net.add_argument(
        "--basic-auth",
        type=_basic_auth,
        default=None,
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
        type=_positive_int,
        # a string default goes through ``type`` too: a bad env value is a usage error of ``serve`` only
        default=env("LABEL_ANYTHING_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS)),
        help="refuse images larger than this many pixels, read from the file header before decoding "
        "(decompression bombs) [env LABEL_ANYTHING_MAX_IMAGE_PIXELS; default: %(default)s]",
    )
    net.add_argument(
        "--embedding-cache-mb",
        type=int,
        default=int(env("LABEL_ANYTHING_EMBEDDING_CACHE_MB", "1024")),
        help="memory for image embeddings [env LABEL_ANYTHING_EMBEDDING_CACHE_MB; default: %(default)s]",
    )
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from label_anything.cli import load_model_from_args
    from label_anything.engine.weights import default_cache_dir

    basic_auth = args.basic_auth
    if basic_auth is None and os.environ.get("LABEL_ANYTHING_BASIC_AUTH"):
        basic_auth = _basic_auth(os.environ["LABEL_ANYTHING_BASIC_AUTH"])
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
    model = load_model_from_args(args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    cache = EmbeddingCache(
        max_memory_bytes=args.embedding_cache_mb * 2**20, disk_dir=cache_dir / "embeddings"
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
    backend = Backend(
        model, fetcher, cache, ServeOptions(outputs=outputs, refine=args.refine, basic_auth=basic_auth)
    )
    log.info(
        "serving %s at http://%s:%d (outputs: %s; refine %s; basic auth %s; image hosts: Label Studio%s)",
        backend.model_version,
        args.host,
        args.port,
        ", ".join(outputs.types()),
        "on" if args.refine else "off",
        "on" if basic_auth else "off",
        "".join(f", {h}" for h in hosts),
    )
    uvicorn.run(
        create_app(backend),
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        access_log=args.log_level == "DEBUG",
    )
    return 0
