"""The one place for SSE framing: `data: {json}` events, ending in `data: [DONE]`.

An error raised by the payload iterator after the response started is sent as one
event in OpenAI's error format, followed by [DONE]. If the client goes away, the
iterator is cancelled and closed, which closes the model's stream and cancels the
generation (model_adapters.generation.Sink sets the request's cancel event). Streams
opened before the response (to turn early errors into HTTP statuses) are passed as
`close`, and closed however the response ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus

from chatbot.api.errors import from_exception, log_error

log = logging.getLogger(__name__)

DONE = "[DONE]"


def encode(payload: BaseModel | dict[str, Any] | str) -> str:
    """A payload's JSON; a str is taken as JSON already."""
    if isinstance(payload, str):
        return payload
    if isinstance(payload, BaseModel):
        return payload.model_dump_json()
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


async def sse_events(payloads: AsyncIterator[BaseModel | dict[str, Any]]) -> AsyncIterator[dict]:
    """Payloads -> sse-starlette event dicts, an error event if one is raised, then [DONE]."""
    try:
        async for payload in payloads:
            yield {"data": encode(payload)}
    except Exception as exc:  # noqa: BLE001 - reported to the client in-band
        api = from_exception(exc)
        log_error(exc, api)
        yield {"data": encode(api.body())}
    finally:
        aclose = getattr(payloads, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):  # closing cancels the generation
                await aclose()
    yield {"data": DONE}


def let_streams_finish_on_shutdown() -> None:
    """For `chatbot serve`. On SIGTERM sse-starlette ends every open stream at once by
    default; with that off, in-flight streams run to their end, and uvicorn's
    timeout_graceful_shutdown (settings.shutdown_grace) bounds how long it waits."""
    AppStatus.disable_automatic_graceful_drain()


class _ClosingResponse(EventSourceResponse):
    """Closes `close` (model streams opened before the payloads started) when the response
    ends in any way. A client gone before the first event can mean that the payload
    generator never starts, so its own `finally` never runs: the generation would go on."""

    def __init__(self, content: Any, close: Sequence[Any], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._close = list(close)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                for stream in self._close:  # closing twice is harmless
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()


def sse_response(
    payloads: AsyncIterator[BaseModel | dict[str, Any]],
    headers: dict[str, str] | None = None,
    close: Sequence[Any] = (),
) -> EventSourceResponse:
    # sep="\n": frame events with "\n\n" exactly as OpenAI does.
    return _ClosingResponse(sse_events(payloads), close, sep="\n", headers=headers, ping=15)
