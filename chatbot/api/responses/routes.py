"""POST /v1/responses, GET and DELETE /v1/responses/{id}: OpenAI's Responses API.

Each request becomes the chat route's request (chatbot.api.responses.convert) and runs
through chatbot.api.chat_run, so models, tools, structured output, sampling, limits,
metrics and cancellation are the chat route's. Errors are OpenAI error JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatbot.api.chat_run import invoke_chat, open_chat_stream, prepare_chat
from chatbot.api.errors import APIError
from chatbot.api.openai.serving import app_state
from chatbot.api.responses.builder import ResponseBuilder
from chatbot.api.responses.convert import chat_request, input_messages
from chatbot.api.responses.protocol import ResponsesRequest, check_supported, not_found
from chatbot.api.responses.store import ResponseStore
from chatbot.api.sse import typed_sse_response

router = APIRouter(tags=["responses"])  # included under /v1


def response_store(request: Request) -> ResponseStore:
    return request.app.state.responses


async def _history(store: ResponseStore, previous: str | None) -> list[dict[str, Any]]:
    """The conversation a response continues: its input, then its output."""
    if previous is None:
        return []
    stored = await store.get(previous)
    if stored is None:
        raise APIError(
            404,
            f"Previous response with id {previous[:80]!r} not found.",
            param="previous_response_id",
            code="not_found",
        )
    return stored.messages + input_messages(stored.response["output"], "previous output")


@router.post("/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request) -> Any:
    check_supported(body)
    store = response_store(request)
    chat, conversation = chat_request(body, await _history(store, body.previous_response_id))
    run = await prepare_chat(chat, app_state(request), "responses", "max_output_tokens")
    builder = ResponseBuilder(body, run.name)
    keep = body.store is not False

    if not body.stream:
        builder.feed(await invoke_chat(run))
        builder.finish()
        response = builder.response()
        if keep:
            await store.put(response, conversation)
        return JSONResponse(response)

    stream = await open_chat_stream(run)

    async def events() -> AsyncIterator[dict[str, Any]]:
        for event in builder.start():
            yield event
        async for chunk in stream.chunks():
            for event in builder.feed(chunk):
                yield event
        last = builder.finish()
        if keep:
            await store.put(builder.response(), conversation)
        for event in last:
            yield event

    def error(api: APIError) -> dict[str, Any]:
        return builder.error_event(api.code, api.message, api.param)

    return typed_sse_response(events(), error, close=[stream])


@router.get("/responses/{response_id}", response_model=None)
async def retrieve_response(response_id: str, request: Request) -> Any:
    stored = await response_store(request).get(response_id)
    if stored is None:
        raise not_found(response_id)
    return JSONResponse(stored.response)


@router.delete("/responses/{response_id}", response_model=None)
async def delete_response(response_id: str, request: Request) -> Any:
    if not await response_store(request).delete(response_id):
        raise not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}
