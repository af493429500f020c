"""The ML backend Label Studio 1.23.x talks to, over HTTP: /health, /setup, /predict, /webhook, /versions.

Routes, HTTP basic auth (compared in constant time) and the mapping of errors to status codes; the work
itself is ``label_anything.app.interactive.Backend``'s. Model work runs in worker threads so ``/health``
answers while a prediction runs. ``label-anything serve`` (``label_anything.cli.serve``) builds the backend
from its options and runs this app under uvicorn.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import secrets
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from label_anything import __version__
from label_anything.app.interactive import Backend, RequestError
from label_anything.errors import LabelAnythingError, PromptError
from label_anything.imaging.fetch import AccessDeniedError
from label_anything.labelstudio.config import LabelConfigError
from label_anything.labelstudio.context import ContextError
from label_anything.labelstudio.request_body import parse_request_body
from label_anything.labelstudio.results import OutputError

__all__ = ["create_app"]

log = logging.getLogger("label_anything.server")


def _status_of(exc: LabelAnythingError) -> int:
    """The HTTP status for a user's mistake: RequestError's own, 403 for an image host not allowed, 400 for a
    malformed context, label config, output or prompt, 422 for content the backend cannot use (images)."""
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, AccessDeniedError):
        return 403
    if isinstance(exc, ContextError | LabelConfigError | OutputError | PromptError):
        return 400
    return 422  # ImageError and the rest: well-formed request, content we cannot use


class _JSON(JSONResponse):
    """A JSON response rendered by orjson: an answer's brush RLE is up to hundreds of thousands of
    integers, ~15 ms in ``json.dumps`` for a fragmented 1024 x 768 mask, ~2 ms here."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # an integer beyond 64 bits: the standard encoder takes anything JSON can hold
            return super().render(content)


def _error(message: str, status: int) -> JSONResponse:
    return _JSON({"error": message, "status": status}, status_code=status)


def _authorized(request: Request, basic_auth: tuple[str, str] | None) -> bool:
    """Whether ``request`` carries the (user, password) of ``basic_auth`` (always, when that is None)."""
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

    def parsed(raw: bytes) -> dict:
        try:
            body = parse_request_body(raw)
        except ValueError:
            raise RequestError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    async def json_body(request: Request) -> dict:
        return parsed(await request.body())

    async def health(request: Request) -> JSONResponse:
        return _JSON(
            {
                "status": "UP",
                "model_class": "LabelAnything",
                "model_version": backend.model_version,
                "version": __version__,
            }
        )

    async def setup(request: Request) -> JSONResponse:
        return _JSON(backend.setup(await json_body(request)))

    def answer(raw: bytes) -> Response:
        return _JSON(backend.predict(parsed(raw)))

    async def predict(request: Request) -> Response:
        # Parsing megabytes of task, the model work and rendering the answer all block: a worker thread
        # keeps the event loop (and /health) responsive.
        return await run_in_threadpool(answer, await request.body())

    async def webhook(request: Request) -> JSONResponse:
        body = await json_body(request)
        # unauthenticated (Label Studio sends no credentials here): log the event, act on nothing
        action = body.get("action")
        if action == "START_TRAINING":
            log.info("webhook START_TRAINING: this backend does not train; nothing to do")
        else:
            log.debug("webhook %s: ignored", str(action)[:64])
        return _JSON({"status": "ok", "action": action if isinstance(action, str) else None})

    async def versions(request: Request) -> JSONResponse:
        return _JSON({"versions": [backend.model_version]})

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
