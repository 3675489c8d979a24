"""Operations: API keys, request ids and access logs, body size limit, CORS, and the
/health, /ready and /metrics routes.

Middleware order, outermost first: request context (id, access log, last-resort 500)
-> shutdown drain (chatbot.api.drain) -> HTTP metrics -> CORS (only when origins are
configured) -> body size limit -> API key check -> per-key rate limits (only when
configured, chatbot.api.limits) -> routes.
Keys are compared in constant time and never logged: nothing here logs headers, and the
access log line has the method, path, status and duration only.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import logging
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot.api.drain import DrainMiddleware, ShutdownDrain
from chatbot.api.errors import APIError, ErrorForms, from_exception, log_error
from chatbot.api.limits import RateLimiter, RateLimitMiddleware
from chatbot.api.metrics import HTTPMetricsMiddleware, Metrics
from chatbot.settings import Settings

log = logging.getLogger("chatbot.access")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
PUBLIC_PATHS = frozenset({"/health"})


# --- logging -------------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (format with %(request_id)s)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Root logging with request ids, for `chatbot serve` and `python app.py`."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_chatbot", False):
            root.setLevel(level)
            return
    import sys

    handler: logging.Handler
    if sys.stderr.isatty():  # a person watching: rich; a log file or collector: plain lines
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, log_time_format="%H:%M:%S")
        handler.setFormatter(logging.Formatter("[%(request_id)s] %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    handler._chatbot = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


# --- the server ----------------------------------------------------------------------


class GracefulServer(uvicorn.Server):
    """uvicorn, but a graceful shutdown on SIGTERM/SIGINT exits 0. uvicorn re-raises the
    signal once it has shut down, so the exit status would be -15, which process
    managers read as a crash."""

    def __init__(self, config: uvicorn.Config, drain: ShutdownDrain | None = None) -> None:
        super().__init__(config)
        self.drain = drain

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn cancels what is left when the grace period ends (streams cut mid-way,
        # CancelledError tracebacks): end those requests cleanly just before that.
        grace = self.config.timeout_graceful_shutdown
        timer = None
        if self.drain is not None and grace is not None:
            delay = max(0.0, grace - min(1.0, grace / 2))
            timer = asyncio.get_running_loop().call_later(delay, self.drain.close_all)
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:
                timer.cancel()


# --- middleware ----------------------------------------------------------------------


async def send_error(send: Send, api: APIError, scope: Scope, forms: ErrorForms) -> None:
    """Answer `api` in the error form of the request's path (OpenAI's or Anthropic's)."""
    response = forms.response(api, str(scope.get("path", "")))
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - responses never read
    return {"type": "http.disconnect"}


class RequestContextMiddleware:
    """Request id (from X-Request-ID when sane, else new), access log, last-resort errors."""

    def __init__(self, app: ASGIApp, errors: ErrorForms) -> None:
        self.app = app
        self.errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _SAFE_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = [0]
        finished = [False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished[0] = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # noqa: BLE001 - nothing may escape as a bare 500 page
            if status[0] and isinstance(exc.__cause__, Exception):
                exc = exc.__cause__  # Starlette's "response already started": log the cause
            api = from_exception(exc)
            log_error(exc, api)
            if status[0] == 0:
                await send_error(send_wrapper, api, scope, self.errors)
            elif not finished[0]:
                # A stream failed after it started (its error event, if any, is sent):
                # end the body properly instead of resetting the connection.
                try:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except Exception:  # noqa: BLE001 - the client may be gone already
                    pass
        finally:
            elapsed = (time.perf_counter() - start) * 1000
            log.info(
                "%s %s -> %s (%.1f ms)",
                scope.get("method"),
                scope.get("path"),
                status[0],
                elapsed,
                extra={"request_id": request_id},
            )
            request_id_var.reset(token)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """413 for request bodies over `max_bytes`: by Content-Length up front, else counted
    as the body arrives (the app's own answer to the cut-off body is replaced)."""

    def __init__(self, app: ASGIApp, max_bytes: int, errors: ErrorForms) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.errors = errors

    def _error(self) -> APIError:
        return APIError(
            413,
            f"The request body is larger than this server accepts ({self.max_bytes} bytes).",
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await send_error(send, self._error(), scope, self.errors)
                return
        received = 0
        exceeded = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal replaced
            if not exceeded:
                await send(message)
            elif not replaced:  # whatever the app made of the error, the answer is 413
                replaced = True
                await send_error(send, self._error(), scope, self.errors)

        try:
            await self.app(scope, counting_receive, send_wrapper)
        except _BodyTooLarge:
            pass
        if exceeded and not replaced:
            await send_error(send, self._error(), scope, self.errors)


class APIKeyMiddleware:
    """When keys are configured, every path except the public ones needs
    `Authorization: Bearer <key>` (or Anthropic's `x-api-key: <key>`). Keys are compared
    in constant time."""

    def __init__(
        self,
        app: ASGIApp,
        keys: list[str],
        public_paths: frozenset[str],
        errors: ErrorForms,
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys if k]
        self.public_paths = public_paths
        self.errors = errors

    def _valid(self, given: str) -> bool:
        candidate = given.encode()
        ok = False
        for key in self.keys:  # compare against every key: timing doesn't tell which
            ok |= hmac.compare_digest(candidate, key)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"authorization") or ""
        scheme, _, token = header.partition(" ")
        api_key = _header(scope, b"x-api-key")  # Anthropic's clients send the key so
        if api_key and not header:
            scheme, token = "bearer", api_key
        if scheme.lower() != "bearer" or not token.strip():
            api = APIError(
                401,
                "Missing API key: send it as 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif not self._valid(token.strip()):
            api = APIError(
                401,
                "Incorrect API key provided.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        else:
            await self.app(scope, receive, send)
            return
        log.info("rejected: %s", api.message)
        await send_error(send, api, scope, self.errors)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def install_middleware(
    app: FastAPI,
    settings: Settings,
    metrics: Metrics,
    drain: ShutdownDrain | None = None,
    public_paths: Iterable[str] = (),
    errors: ErrorForms | None = None,
) -> None:
    """Add the middleware stack (innermost first; Starlette wraps each new one outside).
    `public_paths` need no key (the web page's static files); `errors` decides each
    path's error form (given by the app, so this layer imports no wire format)."""
    errors = errors or ErrorForms()
    public = set(PUBLIC_PATHS) | set(public_paths)
    if settings.public_metrics:
        public.add("/metrics")
    keys = [k.get_secret_value() for k in settings.api_keys]
    if settings.rate_limit_rpm or settings.rate_limit_tpm:  # after the key check
        limiter = RateLimiter(settings.rate_limit_rpm, settings.rate_limit_tpm)
        app.add_middleware(
            RateLimitMiddleware,
            limiter=limiter,
            by_key=bool(keys),
            public_paths=PUBLIC_PATHS | frozenset(public_paths),
            errors=errors,
        )
    app.add_middleware(
        APIKeyMiddleware,
        keys=keys,
        public_paths=frozenset(public),
        errors=errors,
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes, errors=errors)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["x-request-id"],
        )
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)
    if drain is not None:  # inside the request context: its log shows the final status
        app.add_middleware(DrainMiddleware, drain=drain, errors=errors)
    app.add_middleware(RequestContextMiddleware, errors=errors)


# --- routes --------------------------------------------------------------------------

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Never needs a key."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 when every served model that is not lazy is loaded, else 503."""
    loader = request.app.state.chatbot.loader
    models = loader.status()
    is_ready = loader.ready()
    body: dict[str, Any] = {"status": "ready" if is_ready else "loading", "models": models}
    if loader.errors:
        body["errors"] = dict(loader.errors)
    return JSONResponse(body, status_code=200 if is_ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state = request.app.state.chatbot
    data, content_type = state.metrics.render(state.catalog)
    return Response(data, media_type=content_type)
