"""POST /v1/chat/completions: every chat model through its LangChain interface, served
by the one serving path (chatbot.api.openai.serving); `ChatWire` writes OpenAI's chat
completion objects and chunks."""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import Runnable

from chatbot.api.errors import bad_request
from chatbot.api.models import check_max_tokens, resolve_chat_model, supports_response_format
from chatbot.api.openai.convert import (
    chunk_to_delta,
    finish_reason,
    message_to_openai,
    to_langchain_messages,
)
from chatbot.api.openai.protocol import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    DeltaMessage,
    NamedToolChoice,
    UsageInfo,
    random_id,
)
from chatbot.api.openai.serving import Choice, Deadline, Job, Serving, app_state, serve
from chatbot.api.sampling import sampling_kwargs

router = APIRouter(tags=["openai"])  # included under /v1 by openai_routes


def bind_tools(model: Runnable, body: ChatCompletionRequest, name: str) -> tuple[Runnable, dict]:
    """Tools via bind_tools, response_format as an invoke kwarg; 400 when unsupported."""
    runnable: Runnable = model
    kwargs: dict[str, Any] = {}
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        choice = choice.model_dump(exclude_none=True)
    if body.tools:
        tools = [t.model_dump(exclude_none=True) for t in body.tools]
        bind = getattr(model, "bind_tools", None)
        try:
            if bind is None:
                raise NotImplementedError
            extra: dict[str, Any] = {}
            if choice is not None:
                extra["tool_choice"] = choice
            if body.parallel_tool_calls is not None:
                extra["parallel_tool_calls"] = body.parallel_tool_calls
            runnable = bind(tools, **extra)
        except NotImplementedError:
            raise bad_request(
                f"Model {name!r} does not support tool calling (tools) yet.",
                param="tools",
                code="tools_not_supported",
            ) from None
    elif choice not in (None, "none", "auto"):
        raise bad_request("'tool_choice' needs 'tools'.", param="tool_choice")
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_schema" and not fmt.json_schema:
            raise bad_request(
                "'response_format.json_schema' is required for type 'json_schema'.",
                param="response_format.json_schema",
            )
        if not supports_response_format(model):
            raise bad_request(
                f"Model {name!r} does not support response_format {fmt.type!r} yet.",
                param="response_format",
                code="response_format_not_supported",
            )
        kwargs["response_format"] = fmt.model_dump(exclude_none=True)
    return runnable, kwargs


# Plain text deltas are most stream events: their JSON is written directly (the same
# document `ChatCompletionStreamResponse` gives) instead of building and serialising
# three pydantic models per token on the hot path.
def stream_chunk_head(response_id: str, created: int, model: str) -> str:
    fields = {"id": response_id, "object": "chat.completion.chunk", "created": created}
    return json.dumps({**fields, "model": model}, ensure_ascii=False)[:-1] + ',"choices":'


def text_chunk_json(head: str, index: int, content: str) -> str:
    delta = json.dumps({"content": content}, ensure_ascii=False)
    return f'{head}[{{"index":{index},"delta":{delta},"logprobs":null,"finish_reason":null}}]}}'


class ChatWire:
    """OpenAI chat completions on the wire (the serving.WireFormat of this route)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.id = random_id("chatcmpl")
        self.created = int(time.time())
        self.head = stream_chunk_head(self.id, self.created, name)

    def _frame(
        self, index: int, delta: DeltaMessage, finish: str | None = None, logprobs: Any = None
    ) -> Any:
        choice = ChatCompletionStreamChoice(
            index=index, delta=delta, finish_reason=finish, logprobs=logprobs
        )
        return ChatCompletionStreamResponse(
            id=self.id, created=self.created, model=self.name, choices=[choice]
        )

    def opening(self, job: Job) -> list[Any]:
        return [self._frame(job.index, DeltaMessage(role="assistant", content=""))]

    def delta(self, job: Job, chunk: AIMessageChunk) -> list[Any]:
        out: list[Any] = []
        sources = chunk.response_metadata.get("sources")
        if sources is not None:  # RAG models ("rag:<kb>"): the passages used, first
            out.append(
                ChatCompletionStreamResponse(
                    id=self.id, created=self.created, model=self.name, choices=[], sources=sources
                )
            )
        delta = chunk_to_delta(chunk)
        logprobs = chunk.response_metadata.get("logprobs")
        if logprobs:  # tokens without text yet (part of a character) still get a frame
            out.append(self._frame(job.index, delta or DeltaMessage(content=""), None, logprobs))
            return out
        if delta is None:
            return out
        if delta.tool_calls is not None or delta.role is not None or delta.content is None:
            out.append(self._frame(job.index, delta))
        else:
            out.append(text_chunk_json(self.head, job.index, delta.content))
        return out

    def closing(self, choice: Choice) -> list[Any]:
        finish = finish_reason(choice.raw_finish, choice.has_tool_calls)
        return [self._frame(choice.index, DeltaMessage(), finish)]

    def usage(self, usage: UsageInfo) -> list[Any]:
        return [
            ChatCompletionStreamResponse(
                id=self.id, created=self.created, model=self.name, choices=[], usage=usage
            )
        ]

    def response(self, choices: list[Choice], usage: UsageInfo) -> Any:
        out = []
        for c in sorted(choices, key=lambda c: c.index):
            message = c.message if c.message is not None else AIMessageChunk(content=c.text)
            out.append(
                ChatCompletionChoice(
                    index=c.index,
                    message=message_to_openai(message),
                    logprobs={"content": c.logprobs} if c.logprobs is not None else None,
                    finish_reason=finish_reason(c.raw_finish, c.has_tool_calls),
                )
            )
        # RAG models ("rag:<kb>") say which passages they used: an extra `sources` field.
        first = choices[0].message if choices else None
        sources = first.response_metadata.get("sources") if first is not None else None
        extra = {"sources": sources} if sources is not None else {}
        return ChatCompletionResponse(model=self.name, choices=out, usage=usage, **extra)


async def chat_serving(
    body: ChatCompletionRequest,
    state: Any,
    endpoint: str = "chat",
    max_tokens_param: str | None = None,
) -> Serving:
    """A chat request turned into a `Serving` (4xx raised here, before anything runs):
    model lookup, limits, tools, structured output, sampling fields, stop, n. Other wire
    formats (Responses, Messages) translate their request to this one and serve it with
    their own WireFormat. `max_tokens_param`: the caller's name for the token limit."""
    messages = to_langchain_messages([m.model_dump(exclude_none=True) for m in body.messages])
    name = state.catalog.default_name(body.model)
    overrides = body.generation_overrides()
    model = await resolve_chat_model(
        state.catalog, body.model, settings=state.settings, **overrides
    )
    param = max_tokens_param or body.max_tokens_param
    check_max_tokens(state.catalog, name, overrides.get("max_tokens"), param)
    runnable, kwargs = bind_tools(model, body, name)
    kwargs.update(sampling_kwargs(body.sampling(), model, name))
    stop = body.stop_sequences()
    if stop is not None:
        kwargs["stop"] = stop
    jobs = [
        Job(
            index=i,
            prompt=0,
            open=partial(runnable.astream, messages, **kwargs),
            invoke=partial(runnable.ainvoke, messages, **kwargs),
        )
        for i in range(body.n or 1)
    ]
    return Serving(
        name=name,
        jobs=jobs,
        deadline=Deadline(state.settings.request_timeout),
        tracker=state.metrics.track(name, endpoint),
        include_usage=body.include_usage(),
    )


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    serving = await chat_serving(body, app_state(request))
    return await serve(serving, ChatWire(serving.name), bool(body.stream))
