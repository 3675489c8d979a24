"""Ending requests cleanly when the shutdown grace period runs out.

On SIGTERM uvicorn stops accepting and waits `shutdown_grace` seconds for in-flight
requests; then it cancels their tasks, which cuts a stream mid-way (no error event, no
`[DONE]`) and logs a CancelledError traceback per request. Shortly before that deadline
`ShutdownDrain.close_all()` (called by chatbot.api.ops.GracefulServer) cancels every
open request itself, through its own cancel scope, and `DrainMiddleware` ends each one
properly: a 503 in the path's error JSON (ErrorForms) if nothing was sent yet, else a
final error event and the stream's end marker: `data: [DONE]` for OpenAI chat and
completions streams, `event: end` for LangServe ones, the wire format's own `error` event
for Anthropic Messages and OpenAI Responses (ErrorForms.stream_end). Cancelling a request
closes its model stream, which stops generation.
"""

from __future__ import annotations

import json
import logging
import re

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot.api.errors import APIError, ErrorForms

log = logging.getLogger(__name__)

_EVENT = re.compile(rb"(?:^|\n)event: ")
_LANGSERVE_STREAMS = ("/stream", "/stream_log", "/stream_events")


def shutting_down() -> APIError:
    return APIError(
        503,
        "The server is shutting down; the request was ended before it finished. Retry it.",
        code="server_shutting_down",
        headers={"Retry-After": "5"},
    )


class ShutdownDrain:
    """The cancel scopes of the requests in flight; `close_all` ends them all."""

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        self.closing = False

    def add(self, scope: anyio.CancelScope) -> None:
        if self.closing:
            scope.cancel()
        self._scopes.add(scope)

    def discard(self, scope: anyio.CancelScope) -> None:
        self._scopes.discard(scope)

    def close_all(self) -> None:
        """Must run on the event loop thread (uvicorn's shutdown calls it there)."""
        self.closing = True
        if self._scopes:
            log.warning("shutdown grace period over: ending %d open request(s)", len(self._scopes))
        for scope in list(self._scopes):
            scope.cancel()


def _stream_end(path: str, api: APIError) -> bytes:
    error = api.body()
    if path.endswith(_LANGSERVE_STREAMS):
        data = json.dumps({"status_code": api.status, "message": api.message, **error})
        return f"event: error\ndata: {data}\n\nevent: end\n\n".encode()
    return f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()


class DrainMiddleware:
    def __init__(self, app: ASGIApp, drain: ShutdownDrain, errors: ErrorForms) -> None:
        self.app = app
        self.drain = drain
        self.errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = False
        event_stream = False
        events_sent = 0  # named SSE events (Responses numbers its events)

        async def send_wrapper(message: Message) -> None:
            nonlocal started, finished, event_stream, events_sent
            if message["type"] == "http.response.start":
                started = True
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        event_stream = value.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body":
                finished = not message.get("more_body")
                if event_stream:
                    events_sent += len(_EVENT.findall(message.get("body", b"")))
            await send(message)

        with anyio.CancelScope() as cancel:
            self.drain.add(cancel)
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                self.drain.discard(cancel)
        if not cancel.cancelled_caught or finished:
            return
        api = shutting_down()
        try:
            if not started:
                path = str(scope.get("path", ""))
                await self.errors.response(api, path)(scope, receive, send)
            elif event_stream:
                path = str(scope.get("path", ""))
                body = self.errors.stream_end(api, path, events_sent) or _stream_end(path, api)
                await send({"type": "http.response.body", "body": body, "more_body": False})
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client is gone already
            pass
