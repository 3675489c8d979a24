"""The one place for SSE framing: `data: {json}` events, ending in `data: [DONE]`.

An error raised by the payload iterator after the response started is sent as one
event in OpenAI's error format, followed by [DONE]. If the client goes away, the
iterator is cancelled and closed, which closes the model's stream and cancels the
generation (model_adapters.generation.Sink sets the request's cancel event).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from chatbot.api.errors import from_exception, log_error

log = logging.getLogger(__name__)

DONE = "[DONE]"


def encode(payload: BaseModel | dict[str, Any]) -> str:
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


def sse_response(
    payloads: AsyncIterator[BaseModel | dict[str, Any]], headers: dict[str, str] | None = None
) -> EventSourceResponse:
    # sep="\n": frame events with "\n\n" exactly as OpenAI does.
    return EventSourceResponse(sse_events(payloads), sep="\n", headers=headers, ping=15)
