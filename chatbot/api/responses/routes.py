"""POST /v1/responses, GET and DELETE /v1/responses/{id}: OpenAI's Responses API.

Each request becomes the chat route's request (chatbot.api.responses.convert) and runs
on the one serving path (chatbot.api.openai.chat.chat_serving, then serve() with
`ResponsesWire`), so models, tools, structured output, sampling, limits, the deadline,
metrics and cancellation are the chat route's. Errors are OpenAI error JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatbot.api.errors import APIError
from chatbot.api.openai.chat import chat_serving
from chatbot.api.openai.protocol import UsageInfo
from chatbot.api.openai.serving import BuilderWire, Choice, app_state, serve
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


class ResponsesWire(BuilderWire):
    """The Responses API on the wire (a serving.WireFormat with typed SSE events). A
    stored response is written before its last event, so a client can GET it then."""

    builder: ResponseBuilder

    def __init__(
        self, builder: ResponseBuilder, store: ResponseStore | None, conversation: list
    ) -> None:
        super().__init__(builder)
        self.store = store  # None: `store: false`
        self.conversation = conversation

    def response(self, choices: list[Choice], usage: UsageInfo) -> Any:
        self.build_whole(choices)
        return self.builder.response()

    def stream_response(self, payloads: AsyncIterator[Any], close: list[Any]) -> Any:
        async def events() -> AsyncIterator[dict[str, Any]]:
            async for event in payloads:
                if event["type"] in _LAST and self.store is not None:
                    await self.store.put(self.builder.response(), self.conversation)
                yield event

        def error(api: APIError) -> dict[str, Any]:
            return self.builder.error_event(api.code, api.message, api.param)

        return typed_sse_response(events(), error, close=[*close, payloads])


_LAST = ("response.completed", "response.incomplete")


@router.post("/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request) -> Any:
    check_supported(body)
    store = response_store(request)
    chat, conversation = chat_request(body, await _history(store, body.previous_response_id))
    serving = await chat_serving(chat, app_state(request), "responses", "max_output_tokens")
    keep = store if body.store is not False else None
    wire = ResponsesWire(ResponseBuilder(body, serving.name), keep, conversation)
    if body.stream:
        return await serve(serving, wire, True)
    response = await serve(serving, wire, False)
    if keep is not None:
        await store.put(response, conversation)
    return JSONResponse(response)


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
