"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API.

Each request becomes the chat route's request (chatbot.api.anthropic.convert) and runs
through chatbot.api.chat_run. Every error, before or during a stream, is answered in
Anthropic's error JSON: the body is validated here, not by FastAPI, for that reason.
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
from chatbot.api.chat_run import invoke_chat, open_chat_stream, prepare_chat
from chatbot.api.errors import APIError, bad_request, from_exception, log_error
from chatbot.api.models import resolve_chat_model
from chatbot.api.openai.convert import to_langchain_messages
from chatbot.api.openai.serving import app_state
from chatbot.api.sse import typed_sse_response

router = APIRouter(tags=["anthropic"])  # included under /v1


async def _body(request: Request, model: type[CountTokensRequest]) -> Any:
    body = model.model_validate(await request.json())
    check_supported(body)
    return body


def _error(exc: Exception) -> JSONResponse:
    api = from_exception(exc)
    log_error(exc, api)
    return error_response(api)


@router.post("/messages", response_model=None)
async def create_message(request: Request) -> Any:
    try:
        body: MessagesRequest = await _body(request, MessagesRequest)
        run = await prepare_chat(chat_request(body), app_state(request), "messages")
        builder = MessageBuilder(run.name)
        if not body.stream:
            builder.feed(await invoke_chat(run))
            builder.finish()
            return JSONResponse(builder.message())
        stream = await open_chat_stream(run)
    except Exception as exc:  # noqa: BLE001 - every error in Anthropic's format
        return _error(exc)

    async def events() -> AsyncIterator[dict[str, Any]]:
        for event in builder.start():
            yield event
        async for chunk in stream.chunks():
            for event in builder.feed(chunk):
                yield event
        for event in builder.finish():
            yield event

    def error(api: APIError) -> dict[str, Any]:
        return error_body(api)

    return typed_sse_response(events(), error, close=[stream])


@router.post("/messages/count_tokens", response_model=None)
async def count_tokens(request: Request) -> Any:
    try:
        body: CountTokensRequest = await _body(request, CountTokensRequest)
        state = app_state(request)
        model = await resolve_chat_model(state.catalog, body.model)
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
