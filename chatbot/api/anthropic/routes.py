"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API.

Each request becomes the chat route's request (chatbot.api.anthropic.convert) and runs
on the one serving path (chatbot.api.openai.chat.chat_serving, then serve() with
`MessagesWire`). Every error, before or during a stream, is answered in
Anthropic's error JSON: the route's own here, FastAPI's validation errors and the
middleware's answers (401, 413, 429) by the app's `ErrorForms` for /v1/messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatbot.api.anthropic.convert import (
    MessageBuilder,
    chat_messages,
    chat_request,
    chat_tools,
)
from chatbot.api.anthropic.protocol import (
    CountTokensRequest,
    MessagesRequest,
    check_supported,
    error_body,
    error_response,
)
from chatbot.api.errors import bad_request, from_exception, log_error
from chatbot.api.models import resolve_chat_model
from chatbot.api.openai.chat import chat_serving
from chatbot.api.openai.convert import to_langchain_messages
from chatbot.api.openai.protocol import UsageInfo
from chatbot.api.openai.serving import BuilderWire, Choice, app_state, serve
from chatbot.api.sse import typed_sse_response

router = APIRouter(tags=["anthropic"])  # included under /v1


def _error(exc: Exception) -> JSONResponse:
    api = from_exception(exc)
    log_error(exc, api)
    return error_response(api)


class MessagesWire(BuilderWire):
    """Anthropic Messages on the wire (typed SSE events; the usage is in message_delta)."""

    builder: MessageBuilder

    def response(self, choices: list[Choice], usage: UsageInfo) -> Any:
        self.build_whole(choices)
        return JSONResponse(self.builder.message())

    def stream_response(self, payloads: AsyncIterator[Any], close: list[Any]) -> Any:
        return typed_sse_response(payloads, error_body, close=close)


@router.post("/messages", response_model=None)
async def create_message(body: MessagesRequest, request: Request) -> Any:
    try:
        check_supported(body)
        serving = await chat_serving(chat_request(body), app_state(request), "messages")
        return await serve(serving, MessagesWire(MessageBuilder(serving.name)), bool(body.stream))
    except Exception as exc:  # noqa: BLE001 - every error in Anthropic's format
        return _error(exc)


@router.post("/messages/count_tokens", response_model=None)
async def count_tokens(body: CountTokensRequest, request: Request) -> Any:
    try:
        check_supported(body)
        state = app_state(request)
        model = await resolve_chat_model(state.catalog, body.model, settings=state.settings)
        messages = to_langchain_messages(chat_messages(body))
        tools = chat_tools(body)
        prompt_ids = getattr(model, "prompt_ids", None)
        if callable(prompt_ids):  # a local model: the exact prompt it would get
            from model_adapters.tools import normalize_tools

            ids = await asyncio.to_thread(prompt_ids, messages, normalize_tools(tools))
            return {"input_tokens": len(ids)}
        counter = getattr(model, "get_num_tokens_from_messages", None)
        try:
            count = await asyncio.to_thread(counter, messages, tools)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - e.g. no tokenizer for this provider offline
            raise bad_request(
                f"Model {body.model!r} cannot count tokens here.", param="model"
            ) from None
        return {"input_tokens": int(count)}
    except Exception as exc:  # noqa: BLE001 - every error in Anthropic's format
        return _error(exc)
